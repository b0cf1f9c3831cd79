"""The `ted` command: parses arguments (and an optional YAML/JSON `--config`), calls a stage."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Optional

from .artifacts import is_main_launch_process
from .errors import TedInputError

# The stage commands; their modules (and transformers) are imported only when one runs, so that
# `ted score-squad` or `ted --help` start instantly.
STAGE_COMMANDS = ("finetune", "learn-filters", "distill", "evaluate")

USAGE = """usage: ted <command> [--config FILE] [options]

commands:
  finetune        Stage 0: fine-tune a teacher or a student on a task
  learn-filters   Stage I: learn task-aware filters on a frozen fine-tuned model
  distill         Stage II: TED, or the KD / LWD baselines
  evaluate        score a model folder on a task's dev set(s)
  export          write a stage's student as a stock Hugging Face model
  demo            the whole method offline on a built-in synthetic task
  score-squad     official SQuAD 2.0 scores of a prediction file
  pipeline        every stage for tasks x seeds from a YAML preset (configs/), resumable
  report          results table (mean +- std over seeds), plots and speed of pipeline runs
  import-original convert a checkpoint of the paper's original code into a ted stage folder

`ted <command> --help` lists every option of a command.
"""


def config_to_argv(path: str) -> list[str]:
    """A YAML/JSON file of {flag: value} as command-line tokens; later explicit flags override them."""
    file = Path(path)
    if not file.is_file():
        raise TedInputError(f"Config file {file} does not exist.")
    text = file.read_text()
    if file.suffix in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text) or {}
    else:
        data = json.loads(text)
    if not isinstance(data, dict):
        raise TedInputError(f"{file} must hold a mapping of option names to values.")
    argv: list[str] = []
    for key, value in data.items():
        if value is None:
            continue
        argv.append(f"--{key}")
        argv.extend(str(v) for v in value) if isinstance(value, list) else argv.append(str(value))
    return argv


def split_config(argv: list[str]) -> list[str]:
    if "--config" not in argv:
        return argv
    i = argv.index("--config")
    if i + 1 >= len(argv):
        raise TedInputError("--config needs a file path.")
    return config_to_argv(argv[i + 1]) + argv[:i] + argv[i + 2:]


def run_stage(command: str, argv: list[str]):
    from transformers import HfArgumentParser

    from .api import COMMAND_ARGS, run_command

    parser = HfArgumentParser(COMMAND_ARGS[command], prog=f"ted {command}")
    groups = parser.parse_args_into_dataclasses(args=split_config(argv))
    return run_command(command, groups)


def run_export_cli(argv: list[str]):
    from .stages.export import run_export

    parser = argparse.ArgumentParser(prog="ted export", description="Write a stage's student as a stock HF model.")
    parser.add_argument("stage_dir", help="a ted stage folder (e.g. the output of `ted distill`)")
    parser.add_argument("--output_dir", required=True, help="folder to write the stock model to")
    parser.add_argument("--overwrite_output_dir", action="store_true")
    parser.add_argument("--no_speed", action="store_true", help="do not time student vs teacher for the model card")
    args = parser.parse_args(argv)
    return run_export(args.stage_dir, args.output_dir, args.overwrite_output_dir, not args.no_speed)


def run_demo_cli(argv: list[str]):
    from .demo import run_demo

    parser = argparse.ArgumentParser(prog="ted demo", description="The whole method on a built-in synthetic task.")
    parser.add_argument("--output_dir", default="ted-demo", help="where the runs and report.md go")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--overwrite_output_dir", action="store_true")
    args = parser.parse_args(argv)
    return run_demo(args.output_dir, seed=args.seed, overwrite=args.overwrite_output_dir)


def run_score_squad(argv: list[str]):
    from .squad.metric import main

    return main(argv)


def run_pipeline_cli(argv: list[str]):
    from .pipeline_runner import run_pipeline_cli as run

    return run(argv)


def run_report_cli(argv: list[str]):
    from .report import run_report_cli as run

    return run(argv)


def run_import_original_cli(argv: list[str]):
    from .import_original import run_import_original_cli as run

    return run(argv)


# Commands that print their own result.
EXTRA_COMMANDS = {"pipeline": run_pipeline_cli, "report": run_report_cli, "import-original": run_import_original_cli}


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    logging.getLogger("transformers").setLevel(logging.WARNING)
    try:
        if command in STAGE_COMMANDS:
            result = run_stage(command, rest)
        elif command == "export":
            result = run_export_cli(rest)
        elif command == "demo":
            result = run_demo_cli(rest)
        elif command == "score-squad":
            return int(run_score_squad(rest) or 0)
        elif command in EXTRA_COMMANDS:
            EXTRA_COMMANDS[command](rest)
            return 0
        else:
            print(f"ted: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
            return 2
    except TedInputError as err:
        print(f"ted {command}: error: {err}", file=sys.stderr)
        return 2
    # Under torchrun / accelerate launch every process returns the result; one of them prints it.
    if result is not None and getattr(result, "metrics", None) is not None and is_main_launch_process():
        shown = {k: v for k, v in result.metrics.items() if not k.endswith(("runtime", "per_second"))}
        print(json.dumps({"output_dir": result.output_dir, "metrics": shown}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
