"""The stages (roles) of one task and seed in `ted pipeline`: which run, with which command, reading which models.

Encoders: teacher and student are fine-tuned (Stage 0), then Stage I for both, then TED / KD / LWD.
Causal LMs differ in three ways, all decided here from the task's head kind (never its name):

- a pre-trained LM head is already the task head, so the teacher gets Stage 0 only when the config has a
  `teacher_finetune` section; otherwise the pipeline scores the pre-trained teacher on dev (`ted evaluate`,
  role "teacher") and every later stage reads the teacher itself;
- the student may be made from the teacher by `ted init-student` (a `student_init` section, once per task);
- the student before any training can be scored too (role "initial_student", `ted evaluate`), which is the
  starting point that distillation must improve on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from ted.errors import TedInputError

if TYPE_CHECKING:
    from ted.method.kinds import HeadKind

ROLES = (
    "student_init",
    "teacher",
    "initial_student",
    "student",
    "teacher_stage1",
    "student_stage1",
    "ted",
    "kd",
    "lwd",
)
# The config section of each role's own settings (None: `common` only).
ROLE_SECTION: dict[str, Optional[str]] = {
    "student_init": "student_init",
    "teacher": "teacher_finetune",
    "initial_student": None,
    "student": "student_finetune",
    "teacher_stage1": "teacher_stage1",
    "student_stage1": "student_stage1",
    "ted": "ted",
    "kd": "kd",
    "lwd": "lwd",
}
ROLE_COMMAND = {
    "student_init": "init-student",
    "teacher": "finetune",
    "initial_student": "evaluate",
    "student": "finetune",
    "teacher_stage1": "learn-filters",
    "student_stage1": "learn-filters",
    "ted": "distill",
    "kd": "distill",
    "lwd": "distill",
}
# Data options an evaluation leaves out: it reads the dev set only, so the training data is no part of it.
EVALUATE_SKIPS = ("train_file", "max_train_samples", "seed")


@dataclass
class Source:
    """A model a stage reads: another stage of this run (`role`) or an outside path / hub id."""

    role: Optional[str] = None
    path: Optional[str] = None


def task_kind(task: str) -> HeadKind:
    """The head kind of a task name (custom data, whose kind its files decide, counts as classification: every
    sequence-level kind needs its head fine-tuned alike)."""
    from ted.method.kinds import get_kind
    from ted.tasks import task_from_name

    try:
        return get_kind(task_from_name(task).head)
    except TedInputError:
        return get_kind("classification")


def comes_with_head(task: str) -> bool:
    """Whether a pre-trained model of this task's kind already has its task head (a causal LM's LM head)."""
    return task_kind(task).has_trained_head(None)


def teacher_finetuned(cfg: dict, task: str) -> bool:
    """Stage 0 for the teacher: always where its head must be trained; for causal LMs when the config asks."""
    return "teacher_finetune" in cfg.get("given", ()) or not comes_with_head(task)


def student_made(cfg: dict) -> bool:
    return "student_init" in cfg.get("given", ())


def role_command(role: str, cfg: dict, task: str) -> str:
    if role == "teacher" and not teacher_finetuned(cfg, task):
        return "evaluate"
    return ROLE_COMMAND[role]


def role_section(role: str, cfg: dict, task: str) -> Optional[str]:
    return None if role_command(role, cfg, task) == "evaluate" else ROLE_SECTION[role]


def once_per_task(role: str, cfg: dict, task: str) -> bool:
    """Roles whose result does not depend on the seed (student initialisation, scoring a fixed model) run once
    per task, in OUTPUT/<task>/<role>; the others in OUTPUT/<task>/seed<k>/<role>."""
    return role == "student_init" or role_command(role, cfg, task) == "evaluate"


def role_folder(role: str, cfg: dict, task: str, seed_dir: Path) -> Path:
    return seed_dir.parent / role if once_per_task(role, cfg, task) else seed_dir / role


def roles_for(methods: list[str], cfg: dict, task: str) -> list[str]:
    needed = {"teacher", "student", *methods}
    if "ted" in methods:
        needed |= {"teacher_stage1", "student_stage1"}
    if student_made(cfg):
        needed.add("student_init")
    if comes_with_head(task):
        needed.add("initial_student")
    return [r for r in ROLES if r in needed]


def pretrained_student(cfg: dict) -> Source:
    return Source(role="student_init") if student_made(cfg) else Source(path=cfg["student"])


def teacher_source(cfg: dict, task: str) -> Source:
    return Source(role="teacher") if teacher_finetuned(cfg, task) else Source(path=cfg["teacher"])


def model_inputs(role: str, cfg: dict, task: str) -> dict[str, Source]:
    """Where each model argument of the role's stage comes from."""
    if role == "student_init":
        return {"teacher_model_name_or_path": Source(path=cfg["teacher"])}
    if role == "teacher":
        return {"model_name_or_path": Source(path=cfg["teacher"])}
    if role in ("initial_student", "student"):
        return {"model_name_or_path": pretrained_student(cfg)}
    if role == "teacher_stage1":
        return {"model_name_or_path": teacher_source(cfg, task)}
    if role == "student_stage1":
        return {"model_name_or_path": Source(role="student")}
    if role == "ted":
        return {
            "model_name_or_path": Source(role="student_stage1"),
            "teacher_model_name_or_path": Source(role="teacher_stage1"),
        }
    pretrained = cfg.get("baseline_init", "pretrained") == "pretrained"
    return {  # kd, lwd
        "model_name_or_path": pretrained_student(cfg) if pretrained else Source(role="student"),
        "teacher_model_name_or_path": teacher_source(cfg, task),
    }
