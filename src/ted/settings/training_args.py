"""Typed arguments of every stage.

Parsed with `transformers.HfArgumentParser` (see `ted.settings.parse`), so each field is a CLI flag, and a
YAML or JSON file given with `--config` supplies defaults that explicit flags override. ted's own
options live in `options.py`, which does not import transformers; this module adds the Trainer's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from transformers import TrainingArguments

from ted.settings.options import (  # noqa: F401  (re-exported: the stages import their argument groups from here)
    COMMAND_OPTIONS,
    DataArguments,
    DistillArguments,
    FilterArguments,
    ModelArguments,
    TedTrainingOptions,
)


@dataclass
class TedTrainingArguments(TedTrainingOptions, TrainingArguments):
    """`TrainingArguments` with ted's defaults (the fields of TedTrainingOptions override the Trainer's)."""

    _argument_group_name = "Hugging Face Trainer options"

    def __post_init__(self) -> None:
        # TrainingArguments fills in a default folder; a stage must know whether the user chose one.
        self.output_dir_given = self.output_dir is not None
        if not self.use_cpu and _launched_on_cpu_only():
            # accelerate only builds a multi-CPU (gloo) process group when told to use the CPU; without it
            # every torchrun process would silently train alone on the whole data set.
            self.use_cpu = True
        super().__post_init__()


# Which argument groups each stage command takes, in the order its runner expects them.
COMMAND_ARGS = {
    command: tuple(TedTrainingArguments if group is TedTrainingOptions else group for group in groups)
    for command, groups in COMMAND_OPTIONS.items()
}


def _launched_on_cpu_only() -> bool:
    """Several processes (torchrun / accelerate launch) on a machine without an accelerator."""
    import os

    import torch

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    accelerator = getattr(torch, "accelerator", None)
    if accelerator is not None:
        return not accelerator.is_available()
    return not torch.cuda.is_available()


# ------------------------------------------------------------------------------------------ --paper_compat
# The original code's optimisation settings that hold for every run (ted-reference.md section 4.1; the
# per-task ones, batch size, learning rate, epochs, warm-up, live in configs/paper/). ted's defaults differ
# in two of them (max_grad_norm: the Trainer clips at 1.0, the original never clips; optim: the Trainer
# picks the fused AdamW kernel, the original calls torch.optim.AdamW); the others are pinned so that a
# change of Trainer default cannot silently alter the recipe. See docs/paper-settings.md.
PAPER_TRAINING = {
    "max_grad_norm": 0.0,  # 0 is how the Trainer spells "no clipping"
    "optim": "adamw_torch",
    "adam_beta1": 0.9,
    "adam_beta2": 0.999,
    "adam_epsilon": 1e-8,
    "weight_decay": 0.0,
    "lr_scheduler_type": "linear",
    "per_device_eval_batch_size": 8,
    "eval_strategy": "epoch",
    "save_strategy": "epoch",
}


def given_flags(argv: list[str]) -> set[str]:
    """Option names present on a command line (`--max_grad_norm 0`, `--max-grad-norm=0`, `--no_fp16`)."""
    names = set()
    for token in argv:
        if token.startswith("--") and len(token) > 2:
            name = token[2:].split("=", 1)[0].replace("-", "_")
            names.add(name)
            if name.startswith("no_"):  # HfArgumentParser's negation of a bool that defaults to True
                names.add(name[3:])
    return names


def _plain(value: Any) -> Any:
    return getattr(value, "value", value)  # enums (optim, schedulers, strategies) compare as their strings


def with_paper_defaults(groups: tuple, explicit: set[str]) -> tuple:
    """With `--paper_compat`, PAPER_TRAINING fills every TrainingArguments field the user did not give.

    `explicit` holds the option names the user gave (command line, --config file, keyword arguments): an
    explicit value wins, and the disagreement is kept on the DistillArguments as `paper_compat_overrides`
    ({name: {"paper": ..., "used": ...}}) for the stage's ted_stage.json.
    """
    distill = next((g for g in groups if isinstance(g, DistillArguments)), None)
    training = groups[-1]
    if distill is None or not distill.paper_compat or not isinstance(training, TrainingArguments):
        return groups
    import dataclasses

    missing = {k: v for k, v in PAPER_TRAINING.items() if k not in explicit and _plain(getattr(training, k)) != v}
    distill.paper_compat_overrides = {
        k: {"paper": v, "used": _plain(getattr(training, k))}
        for k, v in PAPER_TRAINING.items()
        if k in explicit and _plain(getattr(training, k)) != v
    }
    if not missing:
        return groups
    updated = dataclasses.replace(training, **missing)
    updated.output_dir_given = getattr(training, "output_dir_given", updated.output_dir_given)
    return (*groups[:-1], updated)
