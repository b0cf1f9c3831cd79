"""`ted pipeline`: the whole comparison in one command, for several tasks and seeds, resumable.

For every task and seed: fine-tune the teacher and the student, Stage I for both, then Stage II
with TED and the KD and LWD baselines, each through `ted.stages.registry` like the stage commands (one training
engine). Layout: `OUTPUT/<task>/seed<k>/{teacher,student,teacher_stage1,student_stage1,ted,kd,lwd}`
plus `OUTPUT/<task>/pipeline.json` (the resolved settings and the paper's numbers, for reports).

Reuse: each stage gets a fingerprint of its resolved arguments, the content of its data files
and the fingerprints of the stages it reads (or the content of an outside model folder), so a
run folder that is moved or copied is still reused (`ted.pipelines.plan`, from the stages' own
`ted.stages.fingerprint`). It is stored in the stage's `ted_stage.json`;
a folder whose fingerprint matches is reused without loading anything. A stage that was cut off
resumes from the last checkpoint in `<stage>.incomplete/` (see `ted.stages.resume.prepare_work_dir`);
finished stages are never redone.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from ted import artifacts
from ted.method import teacher_cache
from ted.method.recipes import PIPELINE_METHODS as METHODS
from ted.pipelines.config import STAGE_SECTIONS, parse_overrides
from ted.pipelines.plan import (
    StageSpec,
    plan_jobs,
    stage_call_kwargs,
    validate,
)
from ted.stages.output import drop_leftovers, is_main_launch_process
from ted.stages.registry import run_options

if TYPE_CHECKING:
    from ted.artifacts import StageResult

logger = logging.getLogger(__name__)


def _run_stage(command: str, **options: Any) -> StageResult:
    return run_options(command, options)


def _run_evaluate(**options: Any) -> StageResult:
    """`ted evaluate` of a fixed model (a pre-trained teacher, the initial student) as a stage folder: its
    eval_results.json and a ted_stage.json (with the pipeline's fingerprint), written all-or-nothing."""
    from ted.tasks import task_from_name

    folder = Path(options.pop("output_dir"))
    options.pop("overwrite_output_dir", None)
    task = task_from_name(options["task_name"])
    description = artifacts.describe_stage("evaluate", task, dict(options), {"model": options["model_name_or_path"]})
    with artifacts.stage_folder(folder, description) as tmp:
        result = run_options("evaluate", {**options, "output_dir": str(tmp)})
    return result


# Each takes the stage's options as keyword arguments (tests replace them to check what would run).
RUNNERS = {
    **{
        command: functools.partial(_run_stage, command)
        for command in ("init-student", "finetune", "learn-filters", "distill")
    },
    "evaluate": _run_evaluate,
}
PIPELINE_FILE = "pipeline.json"
TEACHER_CACHE_FOLDER = "teacher_cache"  # OUTPUT/<task>/teacher_cache: Stage II teacher signals of every seed


@dataclass
class StageRun:
    task: str
    seed: int
    role: str
    folder: str
    status: str  # "trained" or "reused"
    fingerprint: str
    seconds: float
    metrics: dict[str, Any] = field(default_factory=dict)
    seed_shown: str = ""  # the seed, or "-" for a stage made once per task


def on_main_process_then_wait(fn: Callable[..., object], *args: Any) -> None:
    """Under torchrun every process runs the pipeline: one changes shared folders, the others wait for it."""
    if is_main_launch_process():
        fn(*args)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.barrier()
        else:
            from accelerate import PartialState

            PartialState().wait_for_everyone()


def run_stage(spec: StageSpec, fp: str, task: str, seed: int) -> StageRun:
    start = time.time()
    label = f"[{task} seed {seed}] {spec.role}" if spec.per_seed else f"[{task}] {spec.role}"
    shown = str(seed) if spec.per_seed else "-"
    on_main_process_then_wait(drop_leftovers, spec.folder)  # of a killed run; finished ones too
    if reusable(spec.folder, fp):
        logger.info("%s: reused %s (fingerprint %s)", label, spec.folder, fp)
        return StageRun(
            task, seed, spec.role, str(spec.folder), "reused", fp, time.time() - start, _metrics(spec), shown
        )
    kwargs = stage_call_kwargs(spec, spec.folder.parent)
    if spec.folder.exists():
        logger.warning("%s: %s was made with other settings or inputs; training it again.", label, spec.folder)
    # Replace an outdated stage folder, and start over when its checkpoints are of other settings (the stage
    # resumes those of the same settings, and refuses to replace a folder ted did not write).
    kwargs["overwrite_output_dir"] = True
    logger.info("%s: ted %s -> %s", label, spec.command, spec.folder)
    # `--teacher_cache auto` of every Stage II run of a task shares one folder: KD and TED seeds read the same
    # entries wherever the teacher signal is the same (entries are keyed by content, see ted.method.teacher_cache).
    shared = teacher_cache.shared_root(spec.folder.parent.parent / TEACHER_CACHE_FOLDER)
    meta = {"task": task, "seed": seed if spec.per_seed else None, "role": spec.role}
    with artifacts.stage_extras(fingerprint=fp, pipeline=meta), shared:
        RUNNERS[spec.command](**kwargs)
    return StageRun(task, seed, spec.role, str(spec.folder), "trained", fp, time.time() - start, _metrics(spec), shown)


def _metrics(spec: StageSpec) -> dict:
    path = spec.folder / artifacts.EVAL_RESULTS
    return artifacts.read_json(path) if path.is_file() else {}


def write_pipeline_file(task_dir: Path, task: str, cfg: dict, specs: list[StageSpec], seeds: list[int]) -> None:
    path = task_dir / PIPELINE_FILE
    old = artifacts.read_json(path) if path.is_file() else {}
    data = {
        "task": task,
        "preset": cfg.get("preset"),
        "config_file": cfg.get("config_file"),
        "teacher": cfg["teacher"],
        "student": cfg.get("student"),
        "student_init": cfg["student_init"] or None,
        "baseline_init": cfg.get("baseline_init", "pretrained"),
        "methods": list(cfg.get("methods") or METHODS),
        "seeds": sorted(set(old.get("seeds", [])) | set(seeds)),
        "stages": {spec.role: {k: v for k, v in spec.kwargs.items() if k != "seed"} for spec in specs},
        "commands": {spec.role: spec.command for spec in specs},
        "paper_results": cfg.get("paper_results"),
    }
    if data == old:
        return  # a re-run that changes nothing writes nothing
    task_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{PIPELINE_FILE}.{os.getpid()}.tmp")
    artifacts.write_json(tmp, data)
    os.replace(tmp, path)


def reusable(folder: Path, fp: str) -> bool:
    info = artifacts.stage_info(folder) if folder.is_dir() else None
    return info is not None and info.get("fingerprint") == fp


def run_pipeline(config_files: list[str], overrides: Optional[dict] = None) -> list[StageRun]:
    """Every stage for every task and seed; returns what was trained and what was reused."""
    jobs = plan_jobs(config_files, overrides or {})
    # Fingerprints cover every argument, so only stages that will train need checking.
    validate([job.spec for job in jobs if not reusable(job.spec.folder, job.fingerprint)])
    runs: list[StageRun] = []
    for job in jobs:
        if not any(r.task == job.task for r in runs) and is_main_launch_process():  # once per task
            seeds = sorted({j.seed for j in jobs if j.task == job.task})
            specs = [j.spec for j in jobs if (j.task, j.seed) == (job.task, job.seed)]
            write_pipeline_file(Path(job.cfg["output_dir"]) / job.task, job.task, job.cfg, specs, seeds)
        runs.append(run_stage(job.spec, job.fingerprint, job.task, job.seed))
    return runs


def run_pipeline_cli(argv: list[str]) -> list[StageRun]:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.split("\n\n")[0] + "\n\n" + CLI_HELP)
        return []
    configs, overrides = parse_overrides(argv)
    runs = run_pipeline(configs, overrides)
    if is_main_launch_process():  # under torchrun every process runs the pipeline; one reports
        print(summary(runs))
    return runs


def summary(runs: list[StageRun]) -> str:
    width = max([6, *(len(r.task) for r in runs)])
    lines = [f"{'task':<{width}} seed  stage           status   seconds  dev score  folder"]
    for r in runs:
        metric = (artifacts.stage_info(r.folder) or {}).get("task", {}).get("selection_metric")
        score = r.metrics.get(f"eval_{metric}")
        shown = f"{score:.4f}" if isinstance(score, float) else "-"
        seed = r.seed_shown or str(r.seed)
        lines.append(f"{r.task:<{width}} {seed:<5} {r.role:<15} {r.status:<8} {r.seconds:7.1f}  {shown:>9}  {r.folder}")
    trained = sum(r.status == "trained" for r in runs)
    lines.append(
        f"{trained} stage(s) trained, {len(runs) - trained} reused. Next: ted report "
        f"{Path(runs[0].folder).parents[2 if runs[0].seed_shown != '-' else 1] if runs else 'RUN_DIR'}"
    )
    return "\n".join(lines)


CLI_HELP = (
    """usage: ted pipeline --config FILE.yaml [FILE2.yaml ...] [options]

  --output_dir DIR              run folder: DIR/<task>/seed<k>/<stage>
  --seeds S1 S2 ...             one full run per seed (default: the file's `seeds`, else 42)
  --baseline_init pretrained|finetuned
                                KD/LWD start from the pre-trained student (the paper, default) or the
                                fine-tuned one (a fair comparison with TED, which starts fine-tuned)
  --methods ted kd lwd          which Stage II runs to make (default: all three)
  --teacher PATH --student PATH --shared_dir PATH --tasks T1 T2
  --KEY VALUE                   any stage option, for every stage that takes it
                                (--max_train_samples 100, --num_train_epochs 1, --report_to tensorboard)
  --SECTION.KEY VALUE           one stage only; SECTION is one of """
    + ", ".join(STAGE_SECTIONS)
    + """

Re-running the same command reuses every finished stage and resumes a cut-off one."""
)
