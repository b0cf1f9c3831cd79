"""The commands that run a stage, and the one way every caller (CLI, Python API, pipeline, demo, doctor) runs them."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from ted.settings import parse as arguments

# command -> (module, function). Imported on first use, so `import ted` and `ted --help` stay light.
RUNNERS = {
    "finetune": ("ted.stages.finetune", "run_finetune"),
    "learn-filters": ("ted.stages.learn_filters", "run_learn_filters"),
    "distill": ("ted.stages.distill", "run_distill"),
    "evaluate": ("ted.stages.evaluate", "run_evaluate"),
    "doctor": ("ted.stages.doctor", "run_doctor"),
}


def runner(command: str):
    module, function = RUNNERS[command]
    return getattr(importlib.import_module(module), function)


def run_command(command: str, groups):
    """Run a command on its parsed argument groups (checked again: groups built by hand skip the parser)."""
    arguments.validate(command, groups)
    return runner(command)(*groups)


def run_options(command: str, options: Mapping[str, Any]):
    """Run a command from keyword options, parsed and checked exactly like its command line."""
    return run_command(command, arguments.parse_mapping(command, options))
