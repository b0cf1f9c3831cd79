"""Planning `ted pipeline`: from config files to the stages of every task and seed, with their fingerprints.

For every task and seed the plan holds, in running order, each stage's command, resolved arguments, the models
it reads (another stage of the run, or an outside path) and its folder `OUTPUT/<task>/seed<k>/<role>` (or
`OUTPUT/<task>/<role>` for a stage made once per task; `ted.pipelines.roles` says which stages run). Nothing is
loaded or trained here (`ted.pipelines.runner` runs the plan); a config's `text_split` writes its two text files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ted.errors import TedInputError
from ted.method.recipes import PIPELINE_METHODS as METHODS
from ted.pipelines.config import BASELINE_INITS, PIPELINE_KEYS, SECTIONS, coerce, field_types, load_file
from ted.pipelines.roles import (
    EVALUATE_SKIPS,
    ROLE_COMMAND,
    Source,
    model_inputs,
    once_per_task,
    role_command,
    role_folder,
    role_section,
    roles_for,
    student_made,
)
from ted.pipelines.text_split import apply_text_split
from ted.settings.parse import parse_mapping
from ted.settings.training_args import COMMAND_ARGS
from ted.stages import fingerprint
from ted.stages.output import check_writable


@dataclass
class StageSpec:
    role: str
    command: str
    kwargs: dict[str, Any]
    inputs: dict[str, Source]  # model argument -> where it comes from
    folder: Path
    per_seed: bool = True  # False: made once per task (OUTPUT/<task>/<role>), shared by every seed


def task_configs(config_files: list[str], overrides: dict) -> list[tuple[str, dict]]:
    """(task, resolved config) pairs from one or more pipeline files plus the command-line overrides."""
    if not config_files:
        raise TedInputError("ted pipeline needs --config FILE.yaml (see configs/ for presets).")
    top = {k: v for k, v in overrides.items() if k not in SECTIONS}
    out: list[tuple[str, dict]] = []
    for file in config_files:
        cfg = load_file(file, top)
        # Which stage sections the file or the command line has (a causal-LM teacher is fine-tuned only if asked).
        cfg["given"] = {s for s in SECTIONS if s in cfg or s in overrides}
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


def check_models(cfg: dict) -> None:
    if student_made(cfg) and cfg.get("student"):
        raise TedInputError(
            f"{cfg['config_file']}: `student_init` makes the student from the teacher, and `student:` names one too. "
            "Keep one of them."
        )
    for key in ("teacher",) if student_made(cfg) else ("teacher", "student"):
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
    command, section = role_command(role, cfg, task), role_section(role, cfg, task)
    types = field_types(COMMAND_ARGS[command])
    if command == "evaluate":  # scores the dev set of a fixed model: no training data, no seed
        types = {k: v for k, v in types.items() if k not in EVALUATE_SKIPS}
    merged: dict[str, Any] = {"task_name": task} if "task_name" in types else {}
    own = (cfg[section], cfg["cli"][section]) if section else ({}, {})
    layers = ((cfg["common"], False), (own[0], True), (cfg["cli"]["common"], False), (own[1], True))
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
    known = set().union(*(field_types(COMMAND_ARGS[c]) for c in {*ROLE_COMMAND.values(), "evaluate"}))
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


def plan_seed(task: str, cfg: dict, seed: int, seed_dir: Path) -> list[StageSpec]:
    """The stages of one seed in running order (the once-per-task ones included, in OUTPUT/<task>/<role>)."""
    specs = []
    for role in roles_for(list(cfg.get("methods") or METHODS), cfg, task):
        command = role_command(role, cfg, task)
        kwargs = _stage_kwargs(cfg, role, task)
        if command == "distill":
            _method_defaults(role, kwargs, cfg, task)
        per_seed = not once_per_task(role, cfg, task)
        if per_seed:
            kwargs["seed"] = seed
        inputs = model_inputs(role, cfg, task)
        specs.append(StageSpec(role, command, kwargs, inputs, role_folder(role, cfg, task, seed_dir), per_seed))
    return specs


def stage_fingerprint(spec: StageSpec, parents: dict[str, str]) -> str:
    """The stage's reuse fingerprint (`ted.stages.fingerprint.stage_fingerprint`): another stage of this seed
    stands in by its fingerprint, an outside model by its content, so a moved or copied run folder is reused."""
    inputs = {key: {"stage": parents[src.role]} if src.role else src.path for key, src in spec.inputs.items()}
    return fingerprint.stage_fingerprint(spec.command, spec.kwargs, inputs)


def stage_call_kwargs(spec: StageSpec, seed_dir: Path) -> dict:
    kwargs = dict(spec.kwargs)
    for key, src in spec.inputs.items():
        # student_init is the one model source made once per task (OUTPUT/<task>/student_init); the others
        # belong to the seed.
        task_dir = spec.folder.parent.parent if spec.per_seed else spec.folder.parent
        folder = task_dir / src.role if src.role == "student_init" else seed_dir / (src.role or "")
        kwargs[key] = str(folder) if src.role else src.path
    kwargs["output_dir"] = str(spec.folder)
    return kwargs


def validate(specs: list[StageSpec]) -> None:
    """Parse the arguments of every stage that will train before any training, so a typo fails in seconds."""
    for spec in specs:
        data_dir = spec.kwargs.get("data_dir")
        if data_dir and not Path(data_dir).is_dir():
            raise TedInputError(
                f"data_dir {data_dir!r} does not exist (set common.data_dir, --data_dir, or "
                "TED_SHARED_DIR for the presets)."
            )
        parse_mapping(spec.command, stage_call_kwargs(spec, spec.folder.parent))


def check_run_folder(task_dir: Path) -> None:
    """Before any stage trains: the run folder can be created and written (stages check their own folders)."""
    for folder in (task_dir.parent, task_dir):
        if folder.exists() and not folder.is_dir():
            raise TedInputError(f"--output_dir: {folder} is a file, not a folder. Pass a folder path.")
    check_writable(task_dir)


@dataclass
class Job:
    """One stage to run (or reuse) for a task and seed, with the config it came from and its fingerprint."""

    task: str
    seed: int
    cfg: dict
    spec: StageSpec
    fingerprint: str


def plan_jobs(config_files: list[str], overrides: dict) -> list[Job]:
    """Every stage of every task and seed, in running order, each with its fingerprint (a stage's includes those
    of the stages it reads). The configs and run folders are checked; nothing is loaded."""
    jobs: list[Job] = []
    for task, cfg in task_configs(config_files, overrides):
        check_models(cfg)
        _check_common_keys(cfg)
        if not cfg.get("output_dir"):
            raise TedInputError("Give the run folder with --output_dir DIR (or `output_dir:` in the config).")
        check_run_folder(Path(cfg["output_dir"]) / task)
        apply_text_split(cfg, Path(cfg["output_dir"]) / task)
        planned: set[Path] = set()
        for seed in [int(s) for s in (cfg.get("seeds") or [42])]:
            fingerprints: dict[str, str] = {}
            for spec in plan_seed(task, cfg, seed, Path(cfg["output_dir"]) / task / f"seed{seed}"):
                fingerprints[spec.role] = stage_fingerprint(spec, fingerprints)
                if spec.folder not in planned:  # a once-per-task stage runs for the first seed only
                    jobs.append(Job(task, seed, cfg, spec, fingerprints[spec.role]))
                planned.add(spec.folder)
    return jobs
