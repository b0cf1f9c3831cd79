"""The commands that run a stage, and the one way every caller (CLI, Python API, pipeline, demo, doctor) runs them."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Union

from ted.settings import parse as arguments

if TYPE_CHECKING:
    from ted.artifacts import StageResult
    from ted.stages.doctor import Findings

    # What a command returns: the stage commands a StageResult, `doctor` its Findings, `lm-eval` its scores.
    CommandResult = Union[StageResult, Findings, dict[str, Any]]

# command -> (module, function). Imported on first use, so `import ted` and `ted --help` stay light.
RUNNERS = {
    "finetune": ("ted.stages.finetune", "run_finetune"),
    "learn-filters": ("ted.stages.learn_filters", "run_learn_filters"),
    "distill": ("ted.stages.distill", "run_distill"),
    "evaluate": ("ted.stages.evaluate", "run_evaluate"),
    "doctor": ("ted.stages.doctor", "run_doctor"),
    "lm-eval": ("ted.lm.command", "run_lm_eval"),
    "init-student": ("ted.stages.init_student", "run_init_student"),
}


def runner(command: str) -> Callable[..., CommandResult]:
    """The function that runs `command` (imported now), called with its argument groups in order."""
    module, function = RUNNERS[command]
    return getattr(importlib.import_module(module), function)


def run_command(command: str, groups: tuple) -> CommandResult:
    """Run a command on its parsed argument groups (checked again: groups built by hand skip the parser)."""
    arguments.validate(command, groups)
    return runner(command)(*groups)


def run_options(command: str, options: Mapping[str, Any]) -> CommandResult:
    """Run a command from keyword options, parsed and checked exactly like its command line."""
    return run_command(command, arguments.parse_mapping(command, options))
