"""Task dispatch: turn `DataArguments` into a `Task` and its tokenized `TaskData`.

GLUE names (and aliases like "SST-2") go to `glue.py`, "custom" (or no name with files) to
`custom.py`, "causal_lm" to `causal_lm.py`. Other families register in `TASK_FAMILIES` with `register_task`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple, Optional

from ted.errors import TedInputError
from ted.tasks.base import Task, TaskData
from ted.tasks.causal_lm import causal_lm_task, fit_to_model, load_causal_lm_data
from ted.tasks.custom import custom_task, load_custom, with_model_labels
from ted.tasks.glue import GLUE_TASKS, canonical_glue_name, glue_task, load_glue
from ted.tasks.squad import load_squad, squad_task

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from ted.settings.options import DataArguments

Loader = Callable[[Any, Any], tuple]  # (data_args, tokenizer) -> (Task, TaskData)


class TaskFamily(NamedTuple):
    load: Loader  # reads, validates and tokenizes the data
    describe: Callable[[str, Optional[Any]], Task]  # (name, data_args) -> static Task, for early checks
    # (data_args, the model's positions or None) -> data_args completed for that model (causal_lm: --block_size);
    # None: the family reads --max_seq_length, which stages/models.check_sequence_length checks.
    fit: Optional[Callable[[Any, Optional[int]], Any]] = None


# Non-GLUE task names -> their family. SQuAD ("squad", "squad_v2") is registered here by its own
# module via register_task; GLUE names are resolved separately because of their aliases.
TASK_FAMILIES: dict[str, TaskFamily] = {}


def register_task(
    name: str,
    load: Loader,
    describe: Callable[[str, Optional[Any]], Task],
    fit: Optional[Callable[[Any, Optional[int]], Any]] = None,
) -> None:
    TASK_FAMILIES[name.lower()] = TaskFamily(load, describe, fit)


def _describe_custom(name: str, data_args: Optional[DataArguments]) -> Task:
    if data_args is None:
        raise TedInputError("The custom task's labels come from its files; pass the data arguments.")
    return custom_task(data_args)


register_task("custom", load_custom, _describe_custom)
register_task("squad_v2", load_squad, squad_task)
register_task("squad", load_squad, squad_task)
register_task("causal_lm", load_causal_lm_data, causal_lm_task, fit_to_model)


def supported_tasks() -> list[str]:
    return list(GLUE_TASKS) + list(TASK_FAMILIES)


def resolve_task_name(name: Optional[str], data_args: Optional[DataArguments]) -> str:
    """Canonical task name ("rte", "custom", ...) or TedInputError."""
    if not name:
        if data_args is not None and (data_args.train_file or data_args.validation_file):
            return "custom"
        raise TedInputError(
            "No task given: pass --task_name (one of " + ", ".join(supported_tasks()) + ") or "
            "--train_file/--validation_file for custom data."
        )
    key = name.strip().lower()
    if key in TASK_FAMILIES:
        return key
    glue = canonical_glue_name(key)
    if glue is None:
        raise TedInputError(f"Unknown task {name!r}. Supported: {', '.join(supported_tasks())}.")
    return glue


def _check_sources(key: str, data_args: DataArguments) -> None:
    # A source flag that the chosen task would silently ignore is almost always a mistake.
    if key in GLUE_TASKS and (data_args.train_file or data_args.validation_file):
        raise TedInputError(
            f"--train_file/--validation_file are for custom data, but --task_name is {key}. Use --data_dir "
            f"for GLUE TSV folders, or --task_name custom for your own files."
        )
    if key == "custom" and data_args.data_dir:
        raise TedInputError(
            "--data_dir holds GLUE TSV folders; custom data is given with --train_file/--validation_file."
        )


def is_custom(data_args: DataArguments) -> bool:
    """Whether `data_args` name the user's own files (the custom task)."""
    return resolve_task_name(data_args.task_name, data_args) == "custom"


def task_from_name(name: Optional[str], data_args: Optional[DataArguments] = None) -> Task:
    """The static Task for a name (GLUE names need no data; custom reads its files)."""
    key = resolve_task_name(name, data_args)
    if key in GLUE_TASKS:
        return glue_task(key)
    return TASK_FAMILIES[key].describe(key, data_args)


def model_fit(data_args: DataArguments) -> Optional[Callable[[Any, Optional[int]], Any]]:
    """The task family's hook that completes `data_args` for a model's positions (None: --max_seq_length rules)."""
    family = TASK_FAMILIES.get(resolve_task_name(data_args.task_name, data_args))
    return family.fit if family else None


def load_task(data_args: DataArguments, tokenizer: PreTrainedTokenizerBase) -> tuple[Task, TaskData]:
    """Load, validate and tokenize the task named by `data_args`."""
    key = resolve_task_name(data_args.task_name, data_args)
    _check_sources(key, data_args)
    if key in GLUE_TASKS:
        return load_glue(data_args, tokenizer)
    return TASK_FAMILIES[key].load(data_args, tokenizer)


__all__ = [
    "GLUE_TASKS",
    "TASK_FAMILIES",
    "Task",
    "TaskData",
    "TaskFamily",
    "glue_task",
    "is_custom",
    "load_task",
    "model_fit",
    "register_task",
    "resolve_task_name",
    "supported_tasks",
    "task_from_name",
    "with_model_labels",
]
