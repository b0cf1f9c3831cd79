"""`ted pipeline`: the whole comparison in one command, for several tasks and seeds, resumable.

For every task and seed: fine-tune the teacher and the student, Stage I for both, then Stage II
with TED and the KD and LWD baselines, each through `ted.stages.registry` like the stage commands (one training
engine). Layout: `OUTPUT/<task>/seed<k>/{teacher,student,teacher_stage1,student_stage1,ted,kd,lwd}`
plus `OUTPUT/<task>/pipeline.json` (the resolved settings and the paper's numbers, for reports).

Reuse: each stage gets a fingerprint of its resolved arguments, the content of its data files
and the fingerprints of the stages it reads (or the content of an outside model folder), so a
run folder that is moved or copied is still reused. It is stored in the stage's `ted_stage.json`;
a folder whose fingerprint matches is reused without loading anything. A stage that was cut off
resumes from the last checkpoint in `<stage>.incomplete/` (see `stages.common.prepare_work_dir`);
finished stages are never redone.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ted import artifacts
from ted.errors import TedInputError
from ted.method import teacher_cache
from ted.method.recipes import PIPELINE_METHODS as METHODS
from ted.pipelines.config import (
    BASELINE_INITS,
    PIPELINE_KEYS,
    SECTIONS,
    STAGE_SECTIONS,
    coerce,
    field_types,
    load_file,
    parse_overrides,
)
from ted.settings.parse import parse_mapping
from ted.settings.training_args import COMMAND_ARGS
from ted.stages.registry import run_options

logger = logging.getLogger(__name__)

ROLES = ("teacher", "student", "teacher_stage1", "student_stage1", "ted", "kd", "lwd")
ROLE_SECTION = dict(
    zip(ROLES, ("teacher_finetune", "student_finetune", "teacher_stage1", "student_stage1", "ted", "kd", "lwd"))
)
ROLE_COMMAND = {
    "teacher": "finetune",
    "student": "finetune",
    "teacher_stage1": "learn-filters",
    "student_stage1": "learn-filters",
    "ted": "distill",
    "kd": "distill",
    "lwd": "distill",
}


def _run_stage(command: str, **options):
    return run_options(command, options)


# Each takes the stage's options as keyword arguments (tests replace them to check what would run).
RUNNERS = {command: functools.partial(_run_stage, command) for command in ("finetune", "learn-filters", "distill")}
PIPELINE_FILE = "pipeline.json"
TEACHER_CACHE_FOLDER = "teacher_cache"  # OUTPUT/<task>/teacher_cache: Stage II teacher signals of every seed


@dataclass
class Source:
    """A model a stage reads: another stage of this seed (`role`) or an outside path / hub id."""

    role: Optional[str] = None
    path: Optional[str] = None


@dataclass
class StageSpec:
    role: str
    command: str
    kwargs: dict[str, Any]
    inputs: dict[str, Source]  # model argument -> where it comes from
    folder: Path


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


# ------------------------------------------------------------------------------------------ planning


def task_configs(config_files: list[str], overrides: dict) -> list[tuple[str, dict]]:
    """(task, resolved config) pairs from one or more pipeline files plus the command-line overrides."""
    if not config_files:
        raise TedInputError("ted pipeline needs --config FILE.yaml (see configs/ for presets).")
    top = {k: v for k, v in overrides.items() if k not in SECTIONS}
    out: list[tuple[str, dict]] = []
    for file in config_files:
        cfg = load_file(file, top)
        for section in SECTIONS:
            cfg[section] = dict(cfg.get(section) or {})
        cfg["cli"] = {section: dict(overrides.get(section, {})) for section in SECTIONS}
        tasks = cfg.get("tasks") or ([cfg["task"]] if cfg.get("task") else None)
        if not tasks:
            raise TedInputError(f"{file}: say which task(s) to run with `task: rte` or `tasks: [rte, mrpc]`.")
        for task in [tasks] if isinstance(tasks, str) else tasks:
            if any(task == seen for seen, _ in out):
                raise TedInputError(f"Task {task!r} is configured twice; give each task once.")
            out.append((str(task), cfg))
    return out


def _check_top(cfg: dict) -> None:
    for key in ("teacher", "student"):
        if not cfg.get(key):
            raise TedInputError(f"{cfg['config_file']}: set `{key}:` (a model folder or hub id).")
        if str(cfg[key]).startswith(("/", ".")) and not Path(cfg[key]).exists():
            raise TedInputError(
                f"The {key} {cfg[key]!r} does not exist. Fix `{key}:` or pass --{key} PATH "
                "(presets find the shared models through TED_SHARED_DIR or shared_dir)."
            )
    if cfg.get("baseline_init", "pretrained") not in BASELINE_INITS:
        raise TedInputError(
            f"--baseline_init must be one of {', '.join(BASELINE_INITS)}, got {cfg['baseline_init']!r}."
        )
    unknown = set(cfg.get("methods") or METHODS) - set(METHODS)
    if unknown:
        raise TedInputError(f"Unknown method(s) {sorted(unknown)}; choose from {', '.join(METHODS)}.")


def _stage_kwargs(cfg: dict, role: str, task: str) -> dict[str, Any]:
    """common + section from the file, then common + section from the command line (the later wins)."""
    command, section = ROLE_COMMAND[role], ROLE_SECTION[role]
    types = field_types(COMMAND_ARGS[command])
    merged: dict[str, Any] = {"task_name": task}
    layers = ((cfg["common"], False), (cfg[section], True), (cfg["cli"]["common"], False), (cfg["cli"][section], True))
    for layer, strict in layers:
        for key, value in layer.items():
            if key in PIPELINE_KEYS:
                raise TedInputError(
                    f"`{key}` is set by the pipeline for every stage; use teacher/student/seeds/output_dir instead."
                )
            if key not in types:
                if strict:
                    raise TedInputError(f"Section `{section}` sets `{key}`, which `ted {command}` does not take.")
                continue
            merged[key] = coerce(key, value, types[key])
    return merged


def _check_common_keys(cfg: dict) -> None:
    known = set().union(*(field_types(COMMAND_ARGS[c]) for c in set(ROLE_COMMAND.values())))
    unknown = (set(cfg["common"]) | set(cfg["cli"]["common"])) - known - PIPELINE_KEYS
    if unknown:
        raise TedInputError(f"Unknown option(s) {sorted(unknown)}: no stage takes them (see `ted <stage> --help`).")


def _method_defaults(role: str, kwargs: dict, cfg: dict, task: str) -> None:
    """The paper's flags per method; TED / LWD layer settings follow the Stage I sections unless set."""
    kwargs.setdefault("method", role)
    if role == "kd":
        kwargs.setdefault("filter_disabled", True)
        kwargs.setdefault("mse_alpha", 0.0)
        return
    if role == "lwd":
        kwargs.setdefault("filter_disabled", True)
    teacher_s1, student_s1 = _stage_kwargs(cfg, "teacher_stage1", task), _stage_kwargs(cfg, "student_stage1", task)
    kwargs.setdefault("teacher_filter_interval", teacher_s1.get("filter_interval", 1))
    kwargs.setdefault("filter_interval", student_s1.get("filter_interval", 1))
    if role == "ted":
        for key in ("filter_output_dim", "filter_nonlinear"):
            if key in student_s1:
                kwargs.setdefault(key, student_s1[key])


def roles_for(methods: list[str]) -> list[str]:
    needed = {"teacher", "student", *methods}
    if "ted" in methods:
        needed |= {"teacher_stage1", "student_stage1"}
    return [r for r in ROLES if r in needed]


def model_inputs(role: str, cfg: dict) -> dict[str, Source]:
    pretrained = cfg.get("baseline_init", "pretrained") == "pretrained"
    return {
        "teacher": {"model_name_or_path": Source(path=cfg["teacher"])},
        "student": {"model_name_or_path": Source(path=cfg["student"])},
        "teacher_stage1": {"model_name_or_path": Source(role="teacher")},
        "student_stage1": {"model_name_or_path": Source(role="student")},
        "ted": {
            "model_name_or_path": Source(role="student_stage1"),
            "teacher_model_name_or_path": Source(role="teacher_stage1"),
        },
        "kd": {
            "model_name_or_path": Source(path=cfg["student"]) if pretrained else Source(role="student"),
            "teacher_model_name_or_path": Source(role="teacher"),
        },
    }[role if role != "lwd" else "kd"]


def plan_seed(task: str, cfg: dict, seed: int, seed_dir: Path) -> list[StageSpec]:
    specs = []
    for role in roles_for(list(cfg.get("methods") or METHODS)):
        kwargs = _stage_kwargs(cfg, role, task)
        if ROLE_COMMAND[role] == "distill":
            _method_defaults(role, kwargs, cfg, task)
        kwargs["seed"] = seed
        specs.append(StageSpec(role, ROLE_COMMAND[role], kwargs, model_inputs(role, cfg), seed_dir / role))
    return specs


# --------------------------------------------------------------------------------------- fingerprints


def stage_fingerprint(spec: StageSpec, parents: dict[str, str]) -> str:
    """Settings, data (by content) and inputs: another stage of this seed by its fingerprint, an outside model
    folder by its content (artifacts.path_identity), so a moved or copied run folder is still reused."""
    inputs = {
        key: {"stage": parents[src.role]} if src.role else artifacts.path_identity(src.path)
        for key, src in spec.inputs.items()
    }
    args = {k: v for k, v in sorted(spec.kwargs.items()) if k not in artifacts.UNFINGERPRINTED}
    payload = {"command": spec.command, "args": args, "inputs": inputs, "data": artifacts.data_identity(spec.kwargs)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:20]


def on_main_process_then_wait(fn, *args) -> None:
    """Under torchrun every process runs the pipeline: one changes shared folders, the others wait for it."""
    if artifacts.is_main_launch_process():
        fn(*args)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.barrier()
        else:
            from accelerate import PartialState

            PartialState().wait_for_everyone()


# ------------------------------------------------------------------------------------------ running


def _stage_call_kwargs(spec: StageSpec, seed_dir: Path) -> dict:
    kwargs = dict(spec.kwargs)
    for key, src in spec.inputs.items():
        kwargs[key] = str(seed_dir / src.role) if src.role else src.path
    kwargs["output_dir"] = str(spec.folder)
    return kwargs


def run_stage(spec: StageSpec, fp: str, task: str, seed: int) -> StageRun:
    start = time.time()
    label = f"[{task} seed {seed}] {spec.role}"
    on_main_process_then_wait(artifacts.drop_leftovers, spec.folder)  # of a killed run; finished ones too
    if reusable(spec.folder, fp):
        logger.info("%s: reused %s (fingerprint %s)", label, spec.folder, fp)
        return StageRun(task, seed, spec.role, str(spec.folder), "reused", fp, time.time() - start, _metrics(spec))
    kwargs = _stage_call_kwargs(spec, spec.folder.parent)
    if spec.folder.exists():
        logger.warning("%s: %s was made with other settings or inputs; training it again.", label, spec.folder)
    # Replace an outdated stage folder, and start over when its checkpoints are of other settings (the stage
    # resumes those of the same settings, and refuses to replace a folder ted did not write).
    kwargs["overwrite_output_dir"] = True
    logger.info("%s: ted %s -> %s", label, spec.command, spec.folder)
    # `--teacher_cache auto` of every Stage II run of a task shares one folder: KD and TED seeds read the same
    # entries wherever the teacher signal is the same (entries are keyed by content, see ted.method.teacher_cache).
    shared = teacher_cache.shared_root(spec.folder.parent.parent / TEACHER_CACHE_FOLDER)
    with artifacts.stage_extras(fingerprint=fp, pipeline={"task": task, "seed": seed, "role": spec.role}), shared:
        RUNNERS[spec.command](**kwargs)
    return StageRun(task, seed, spec.role, str(spec.folder), "trained", fp, time.time() - start, _metrics(spec))


def _metrics(spec: StageSpec) -> dict:
    path = spec.folder / artifacts.EVAL_RESULTS
    return artifacts.read_json(path) if path.is_file() else {}


def validate(specs: list[StageSpec]) -> None:
    """Parse the arguments of every stage that will train before any training, so a typo fails in seconds."""
    for spec in specs:
        data_dir = spec.kwargs.get("data_dir")
        if data_dir and not Path(data_dir).is_dir():
            raise TedInputError(
                f"data_dir {data_dir!r} does not exist (set common.data_dir, --data_dir, or "
                "TED_SHARED_DIR for the presets)."
            )
        parse_mapping(spec.command, _stage_call_kwargs(spec, spec.folder.parent))


def write_pipeline_file(task_dir: Path, task: str, cfg: dict, specs: list[StageSpec], seeds: list[int]) -> None:
    path = task_dir / PIPELINE_FILE
    old = artifacts.read_json(path) if path.is_file() else {}
    data = {
        "task": task,
        "preset": cfg.get("preset"),
        "config_file": cfg.get("config_file"),
        "teacher": cfg["teacher"],
        "student": cfg["student"],
        "baseline_init": cfg.get("baseline_init", "pretrained"),
        "methods": list(cfg.get("methods") or METHODS),
        "seeds": sorted(set(old.get("seeds", [])) | set(seeds)),
        "stages": {spec.role: {k: v for k, v in spec.kwargs.items() if k != "seed"} for spec in specs},
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


def check_run_folder(task_dir: Path) -> None:
    """Before any stage trains: the run folder can be created and written (stages check their own folders)."""
    for folder in (task_dir.parent, task_dir):
        if folder.exists() and not folder.is_dir():
            raise TedInputError(f"--output_dir: {folder} is a file, not a folder. Pass a folder path.")
    artifacts.check_writable(task_dir)


def run_pipeline(config_files: list[str], overrides: Optional[dict] = None) -> list[StageRun]:
    """Every stage for every task and seed; returns what was trained and what was reused."""
    overrides = overrides or {}
    jobs = []  # (task, seed, cfg, spec, fingerprint), in running order
    for task, cfg in task_configs(config_files, overrides):
        _check_top(cfg)
        _check_common_keys(cfg)
        if not cfg.get("output_dir"):
            raise TedInputError("Give the run folder with --output_dir DIR (or `output_dir:` in the config).")
        check_run_folder(Path(cfg["output_dir"]) / task)
        for seed in [int(s) for s in (cfg.get("seeds") or [42])]:
            fingerprints: dict[str, str] = {}
            for spec in plan_seed(task, cfg, seed, Path(cfg["output_dir"]) / task / f"seed{seed}"):
                fingerprints[spec.role] = stage_fingerprint(spec, fingerprints)
                jobs.append((task, seed, cfg, spec, fingerprints[spec.role]))
    # Fingerprints cover every argument, so only stages that will train need checking.
    validate([spec for *_, spec, fp in jobs if not reusable(spec.folder, fp)])
    runs: list[StageRun] = []
    for task, seed, cfg, spec, fp in jobs:
        if not any(r.task == task for r in runs) and artifacts.is_main_launch_process():  # once per task
            seeds = sorted({s for t, s, *_ in jobs if t == task})
            specs = [j[3] for j in jobs if j[:2] == (task, seed)]
            write_pipeline_file(Path(cfg["output_dir"]) / task, task, cfg, specs, seeds)
        runs.append(run_stage(spec, fp, task, seed))
    return runs


def run_pipeline_cli(argv: list[str]) -> list[StageRun]:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.split("\n\n")[0] + "\n\n" + CLI_HELP)
        return []
    configs, overrides = parse_overrides(argv)
    runs = run_pipeline(configs, overrides)
    if artifacts.is_main_launch_process():  # under torchrun every process runs the pipeline; one reports
        print(summary(runs))
    return runs


def summary(runs: list[StageRun]) -> str:
    lines = ["task   seed  stage           status   seconds  dev score  folder"]
    for r in runs:
        metric = (artifacts.stage_info(r.folder) or {}).get("task", {}).get("selection_metric")
        score = r.metrics.get(f"eval_{metric}")
        shown = f"{score:.4f}" if isinstance(score, float) else "-"
        lines.append(f"{r.task:<6} {r.seed:<5} {r.role:<15} {r.status:<8} {r.seconds:7.1f}  {shown:>9}  {r.folder}")
    trained = sum(r.status == "trained" for r in runs)
    lines.append(
        f"{trained} stage(s) trained, {len(runs) - trained} reused. Next: ted report "
        f"{Path(runs[0].folder).parents[2] if runs else 'RUN_DIR'}"
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
