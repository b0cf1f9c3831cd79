"""The `ted` command: parses arguments (and an optional YAML/JSON `--config`), calls a stage."""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import TYPE_CHECKING, Any, Optional, Union

from ted.errors import TedInputError
from ted.settings.parse import TedArgumentParser, suggestion
from ted.stages.output import is_main_launch_process
from ted.stages.registry import RUNNERS

if TYPE_CHECKING:
    from pathlib import Path

    from ted.artifacts import StageResult
    from ted.pipelines.runner import StageRun
    from ted.stages.doctor.findings import Findings

# Stage modules (and torch / transformers) are imported only when a command runs, so that `ted`,
# `ted --help`, `ted --version` and `ted score-squad` start instantly.
COMMANDS = {
    "finetune": "Stage 0: fine-tune a teacher or a student on a task",
    "learn-filters": "Stage I: learn task-aware filters on a frozen fine-tuned model",
    "distill": "Stage II: TED, or the KD / LWD baselines",
    "doctor": "minutes of checks before a Stage II run: teacher, filters, loss weights",
    "evaluate": "score a model folder on a task's dev set(s)",
    "lm-eval": "perplexity (WikiText) or LAMBADA accuracy of a causal language model",
    "init-student": "a student made from the teacher by keeping some of its layers (uniform, block influence, ...)",
    "export": "write a stage's student as a stock Hugging Face model",
    "demo": "the whole method offline on a built-in synthetic task",
    "score-squad": "official SQuAD 2.0 scores of a prediction file",
    "pipeline": "every stage for tasks x seeds from a YAML preset (configs/), resumable",
    "report": "results table (mean +- std over seeds), plots and speed of pipeline runs",
    "import-original": "convert a checkpoint of the paper's original code into a ted stage folder",
}

USAGE = (
    "usage: ted <command> [--config FILE] [options]\n       ted --version\n\ncommands:\n"
    + "".join(f"  {name:<15} {text}\n" for name, text in COMMANDS.items())
    + "\n`ted <command> --help` lists every option of a command.\n"
)


def run_stage(command: str, argv: list[str]) -> Union[StageResult, Findings, dict[str, Any]]:
    from ted.settings.parse import parse_cli

    groups = parse_cli(command, argv, description=COMMANDS[command])
    from ted.stages.registry import run_command

    return run_command(command, groups)


def run_export_cli(argv: list[str]) -> StageResult:
    parser = TedArgumentParser(prog="ted export", description=COMMANDS["export"])
    parser.add_argument("stage_dir", help="a ted stage folder (e.g. the output of `ted distill`)")
    parser.add_argument("--output_dir", required=True, help="folder to write the stock model to")
    parser.add_argument("--overwrite_output_dir", action="store_true")
    parser.add_argument("--no_speed", action="store_true", help="do not time student vs teacher for the model card")
    args = parser.parse_args(argv)
    from ted.stages.export import run_export

    return run_export(args.stage_dir, args.output_dir, args.overwrite_output_dir, not args.no_speed)


def run_demo_cli(argv: list[str]) -> None:
    parser = TedArgumentParser(prog="ted demo", description=COMMANDS["demo"])
    parser.add_argument("--output_dir", default="ted-demo", help="where the runs and report.md go")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--overwrite_output_dir", action="store_true")
    args = parser.parse_args(argv)
    from ted.cli.demo import run_demo

    out = run_demo(args.output_dir, seed=args.seed, overwrite=args.overwrite_output_dir)
    print(
        f"ted demo: done. Results: {out / 'report.md'} (loss terms: {out / 'loss_terms.png'}; stage folders: "
        f"{out / 'runs'})"
    )
    return None


def run_score_squad(argv: list[str]) -> int:
    from ted.squad.metric import main

    return main(argv)


def run_pipeline_cli(argv: list[str]) -> list[StageRun]:
    from ted.pipelines.runner import run_pipeline_cli as run

    return run(argv)


def run_report_cli(argv: list[str]) -> tuple[Path, Path]:
    from ted.reporting.report import run_report_cli as run

    return run(argv)


def run_import_original_cli(argv: list[str]) -> Path:
    from ted.stages.import_original import run_import_original_cli as run

    return run(argv)


# Commands that print their own result.
EXTRA_COMMANDS = {"pipeline": run_pipeline_cli, "report": run_report_cli, "import-original": run_import_original_cli}


def version() -> str:
    from ted import __version__

    return f"ted {__version__}"


def main(argv: Optional[list[str]] = None) -> int:
    try:
        return run_main(argv)
    except BrokenPipeError:
        # The reader of our output went away (`ted ... | head`): stop quietly with the status Unix tools use.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def run_main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        print(USAGE, file=sys.stderr)
        return 2
    if argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    if argv[0] in ("-V", "--version"):
        print(version())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"ted: error: unknown command {command!r}{suggestion(command, COMMANDS)}\n\n{USAGE}", file=sys.stderr)
        return 2
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    logging.getLogger("transformers").setLevel(logging.WARNING)
    try:
        if command == "doctor" and any(t.split("=", 1)[0] == "--pipeline_config" for t in rest):
            from ted.stages.doctor import run_pipeline_doctor

            run_pipeline_doctor(rest)
            return 0
        if command == "lm-eval":  # its result is one JSON line, the last line of stdout
            print(json.dumps(run_stage(command, rest)))
            return 0
        if command in RUNNERS:  # the registered commands (stages, the doctor, init-student)
            result = run_stage(command, rest)
        elif command == "export":
            result = run_export_cli(rest)
        elif command == "demo":
            result = run_demo_cli(rest)
        elif command == "score-squad":
            return int(run_score_squad(rest) or 0)
        else:
            EXTRA_COMMANDS[command](rest)
            return 0
    except TedInputError as err:
        print(f"ted {command}: error: {err}", file=sys.stderr)
        return 2
    except SystemExit as done:  # --help (0), or an argparse error of a command that prints its own usage (2)
        return done.code if isinstance(done.code, int) else (0 if done.code is None else 2)
    # Under torchrun / accelerate launch every process returns the result; one of them prints it.
    if result is not None and getattr(result, "metrics", None) is not None and is_main_launch_process():
        shown = {k: v for k, v in result.metrics.items() if not k.endswith(("runtime", "per_second"))}
        print(json.dumps({"output_dir": result.output_dir, "metrics": shown}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
