"""`ted doctor --pipeline_config FILE`: the doctor on one task, seed and method of a `ted pipeline` config, with
the stage options and the stage folders the pipeline uses."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ted import artifacts
from ted.errors import TedInputError
from ted.stages.doctor.findings import Findings

if TYPE_CHECKING:
    from ted.settings.parsers import TedArgumentParser

PIPELINE_HELP = """usage: ted doctor --pipeline_config FILE.yaml [--task T] [--seed S] [--method ted|kd|lwd]
                  [--json FILE] [--doctor_eval_samples N] [--doctor_batches N] [pipeline options]

Checks the Stage II run (default: ted) of one task and seed of a `ted pipeline` config, with the stage options
the pipeline would use; pipeline options (--output_dir, --max_train_samples, --ted.mse_alpha 20, ...) mean what
they mean to `ted pipeline`. It reads the teacher / student / Stage I folders that `ted pipeline` wrote under the
run folder: run the pipeline once up to Stage I (`--methods kd` trains teacher and student; TED also needs the
two Stage I folders), then the doctor, then the rest."""


def _parser() -> TedArgumentParser:
    from ted.method.recipes import PIPELINE_METHODS
    from ted.settings.parse import TedArgumentParser

    parser = TedArgumentParser(prog="ted doctor", usage=PIPELINE_HELP)
    parser.add_argument("--pipeline_config", required=True)
    parser.add_argument("--task")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--method", default="ted", choices=list(PIPELINE_METHODS))
    parser.add_argument("--json")
    parser.add_argument("--doctor_eval_samples", type=int, default=256)
    parser.add_argument("--doctor_batches", type=int, default=4)
    return parser


def run_pipeline_doctor(argv: list[str]) -> Findings:
    """Find the pipeline's stage call for the chosen task, seed and method, and run the doctor with it."""
    from ted.pipelines.config import parse_overrides
    from ted.pipelines.plan import plan_seed, stage_call_kwargs, task_configs
    from ted.pipelines.text_split import apply_text_split
    from ted.settings.parse import parse_mapping
    from ted.stages.registry import run_command

    args, rest = _parser().parse_known_args(argv)
    _, overrides = parse_overrides(rest)  # everything else is a pipeline option
    configs = task_configs([args.pipeline_config], overrides)
    chosen = [(t, c) for t, c in configs if args.task in (None, t)]
    if not chosen:
        raise TedInputError(f"{args.pipeline_config} has no task {args.task!r}; it has {[t for t, _ in configs]}.")
    task, cfg = chosen[0]
    if not cfg.get("output_dir"):
        raise TedInputError("Give the pipeline's run folder with --output_dir (the doctor reads its stage folders).")
    seed = args.seed if args.seed is not None else int((cfg.get("seeds") or [42])[0])
    seed_dir = Path(cfg["output_dir"]) / task / f"seed{seed}"
    apply_text_split(cfg, seed_dir.parent)  # the train / dev files the pipeline's stages read
    cfg["methods"] = [args.method]
    spec = next(s for s in plan_seed(task, cfg, seed, seed_dir) if s.role == args.method)
    kwargs = stage_call_kwargs(spec, seed_dir)
    for key, src in spec.inputs.items():
        if src.role and not (Path(kwargs[key]) / artifacts.STAGE_FILE).is_file():
            raise TedInputError(
                f"{kwargs[key]} is not there yet: the doctor checks the {args.method} stage with the models "
                f"the pipeline made. Run `ted pipeline --config {args.pipeline_config} --seeds {seed} --methods kd` "
                "(teachers and students) or the Stage I sections first."
            )
    kwargs.pop("output_dir", None)
    kwargs.update(json=args.json, doctor_eval_samples=args.doctor_eval_samples, doctor_batches=args.doctor_batches)
    return run_command("doctor", parse_mapping("doctor", kwargs, where=args.pipeline_config))
