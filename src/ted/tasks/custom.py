"""User data: --train_file / --validation_file in CSV, TSV, JSON or JSONL.

Columns, labels and the task type are checked on the raw files before anything is tokenized, so
a wrong column name or an unseen dev label fails in seconds with a message that says how to fix it.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
from typing import TYPE_CHECKING, NamedTuple, Optional

import datasets
from datasets import Dataset, DatasetDict

from ted.errors import TedInputError
from ted.tasks.base import DEFAULT_MAX_SEQ_LENGTH, Task, TaskData
from ted.tasks.files import RowLines, root_cause, scan_file
from ted.tasks.metrics import classification_metric_fn, regression_metric_fn
from ted.tasks.text_classification import keep_first, tokenize_pairs

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedTokenizerBase

    from ted.settings.options import DataArguments

logger = logging.getLogger(__name__)

_BUILDERS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json"}
# Auto-detected text columns, first match wins.
_TEXT_CANDIDATES = (("sentence1", "sentence2"), ("sentence",), ("text",), ("text_a", "text_b"), ("text_a",))


class _File(NamedTuple):
    """A read custom file: its rows, its path and the line each row starts on."""

    data: Dataset
    path: str
    rows: RowLines

    def where(self, i: int) -> str:
        return f"{self.path}, {self.rows.where(i)}"


def _read_file(path: Optional[str], flag: str) -> _File:
    if not path:
        raise TedInputError(f"Custom data needs both --train_file and --validation_file; {flag} is missing.")
    if not os.path.isfile(path):
        raise TedInputError(f"{flag} {path} does not exist.")
    ext = os.path.splitext(path)[1].lower()
    if ext not in _BUILDERS:
        raise TedInputError(f"{flag} {path}: unsupported extension {ext!r}; use one of {', '.join(_BUILDERS)}.")
    rows = scan_file(path, f"{flag} {path}", ext)
    kwargs = {}
    if _BUILDERS[ext] == "csv":
        # Only empty cells are missing values: words like "NA", "null" or "None" stay text.
        kwargs = {"keep_default_na": False, "na_values": [""]}
        if ext == ".tsv":
            kwargs["delimiter"] = "\t"
    try:
        data = datasets.load_dataset(_BUILDERS[ext], data_files=path, split="train", **kwargs)
    except Exception as err:  # what the first pass missed (pandas / pyarrow): one line, the file named
        raise TedInputError(f"{flag} {path} could not be read as {ext[1:].upper()}: {root_cause(err)}") from err
    if len(data) == 0:
        raise TedInputError(f"{flag} {path} holds no data rows.")
    return _File(data, path, rows.matches(len(data)))


def _text_columns(requested: Optional[list[str]], columns: list[str], path: str) -> list[str]:
    if requested:
        if len(requested) not in (1, 2):
            raise TedInputError(f"--text_columns takes 1 or 2 column names, got {requested}.")
        missing = [c for c in requested if c not in columns]
        if missing:
            raise TedInputError(f"{path}: text column(s) {missing} not found; available columns: {columns}.")
        return list(requested)
    for candidate in _TEXT_CANDIDATES:
        if all(c in columns for c in candidate):
            return list(candidate)
    raise TedInputError(
        f"{path}: no text column found (looked for sentence1+sentence2, sentence, text, text_a[+text_b]); "
        f"available columns: {columns}. Name them with --text_columns."
    )


def _check_columns(file: _File, text_columns: list[str], label_column: str) -> None:
    ds = file.data
    missing = [c for c in text_columns + [label_column] if c not in ds.column_names]
    if missing:
        hint = " Set --label_column." if label_column in missing else ""
        raise TedInputError(f"{file.path}: column(s) {missing} not found; available columns: {ds.column_names}.{hint}")
    for col in text_columns + [label_column]:
        for i, value in enumerate(ds[col]):
            if value is None or (isinstance(value, float) and math.isnan(value)):
                raise TedInputError(f"{file.where(i)}: column {col!r} is empty.")


def _label_name(value: object) -> str:
    # 1, 1.0 and "1" all name the same label.
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


# A label written as a number: 3, -0.5, 1e-3 (what pandas would have parsed, had the column not mixed text in).
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _is_number(value: object) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        return math.isfinite(value)
    return isinstance(value, str) and _NUMBER.fullmatch(value.strip()) is not None


def _check_one_kind(file: _File, labels: list, label_column: str) -> None:
    """Labels that mix numbers and text are a typo, not a task: `pos, neg, 1, 0.5` would become 4 classes, and
    one "n/a" among scores would turn a regression file into hundreds of classes. Name the odd row out."""
    numeric = [_is_number(v) for v in labels]
    n_numbers = sum(numeric)
    if n_numbers in (0, len(labels)):
        return
    # The rarer kind is the odd one out; on a tie, the kind the file does not start with.
    odd = n_numbers < len(labels) - n_numbers or (2 * n_numbers == len(labels) and not numeric[0])
    i = numeric.index(odd)
    j = numeric.index(not odd)
    kind, others = ("a number", "text") if odd else ("text", "numbers")
    raise TedInputError(
        f"{file.where(i)}: label {labels[i]!r} is {kind}, but other labels in column {label_column!r} are {others} "
        f"(e.g. {labels[j]!r} on {file.rows.where(j)}). Fix the row, or pass --task_type classification if "
        f"every value is a class name."
    )


def _infer_task_type(requested: Optional[str], labels: list) -> str:
    if requested:
        kind = requested.strip().lower()
        if kind not in ("classification", "regression"):
            raise TedInputError(f"--task_type must be classification or regression, got {requested!r}.")
        return kind
    # Floats that are not all whole numbers are scores; ints, strings and 0.0/1.0 are classes.
    is_float = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in labels) and any(
        isinstance(v, float) for v in labels
    )
    return "regression" if is_float and not all(float(v).is_integer() for v in labels) else "classification"


def _sorted_label_names(labels: list) -> list[str]:
    names = {_label_name(v) for v in labels}
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in labels)
    return sorted(names, key=float) if numeric else sorted(names)


def _map_labels(labels: list, label_ids: dict[str, int], file: _File) -> list[int]:
    ids = []
    for i, value in enumerate(labels):
        name = _label_name(value)
        if name not in label_ids:
            raise TedInputError(
                f"{file.where(i)}: label {value!r} is not in the label list "
                f"{list(label_ids)}. Add it to --label_list (or to the training file)."
            )
        ids.append(label_ids[name])
    return ids


def _to_scores(labels: list, file: _File) -> list[float]:
    for i, value in enumerate(labels):
        if not _is_number(value):
            raise TedInputError(
                f"{file.where(i)}: regression label {value!r} is not a number. Fix the row, or drop "
                f"--task_type regression if the labels are classes."
            )
    return [float(v) for v in labels]


def _labels_known(data_args: DataArguments) -> bool:
    """Without a training file the label set must be given: --label_list, or --task_type regression."""
    kind = (data_args.task_type or "").strip().lower()
    return bool(data_args.label_list) or kind == "regression"


def _prepare(data_args: DataArguments) -> tuple[Task, DatasetDict, list[str]]:
    """Read and validate the files; return the Task, raw splits (text + `label`) and text columns.

    The training file may be left out when the labels are known without it (`ted evaluate` takes them from
    the model); the train split is then empty and the training stages refuse it.
    """
    if not data_args.train_file and data_args.validation_file and not _labels_known(data_args):
        raise TedInputError(
            "Custom data needs --train_file (its labels define the label list); without it pass --label_list "
            "(classification) or --task_type regression."
        )
    dev = _read_file(data_args.validation_file, "--validation_file")
    train = _read_file(data_args.train_file, "--train_file") if data_args.train_file else None
    first = train or dev
    text_columns = _text_columns(data_args.text_columns, first.data.column_names, first.path)
    label_column = data_args.label_column or "label"
    for file in (train, dev):
        if file is not None:
            _check_columns(file, text_columns, label_column)
    train_labels = train.data[label_column] if train else []
    dev_labels = dev.data[label_column]

    # Classes named by the user (--task_type classification, --label_list) may look like anything.
    if not data_args.task_type and not data_args.label_list:
        _check_one_kind(first, first.data[label_column], label_column)
    task_type = _infer_task_type(data_args.task_type, train_labels or dev_labels)
    if task_type == "regression":
        label_list = None
        train_ids = _to_scores(train_labels, train)
        dev_ids = _to_scores(dev_labels, dev)
        task = Task("custom", "regression", None, "spearmanr", regression_metric_fn())
    else:
        label_list = list(data_args.label_list) if data_args.label_list else _sorted_label_names(train_labels)
        if len(set(label_list)) != len(label_list) or len(label_list) < 2:
            raise TedInputError(
                f"Classification needs at least 2 distinct labels; label list is {label_list}. "
                f"For scores use --task_type regression."
            )
        label_ids = {name: i for i, name in enumerate(label_list)}
        train_ids = _map_labels(train_labels, label_ids, train)
        dev_ids = _map_labels(dev_labels, label_ids, dev)
        metric_fn = classification_metric_fn(len(label_list))
        task = Task("custom", "classification", label_list, "accuracy", metric_fn)

    train_data = train.data if train else dev.data.select([])
    raw = DatasetDict(
        {
            "train": train_data.select_columns(text_columns).add_column("label", train_ids),
            "validation": dev.data.select_columns(text_columns).add_column("label", dev_ids),
        }
    )
    return task, raw, text_columns


def with_model_labels(data_args: DataArguments, config: PretrainedConfig) -> DataArguments:
    """For scoring a model on a custom dev file alone: take the label set from the model's config unless the
    flags give it (id2label names in id order; one output or problem_type "regression" means scores)."""
    if data_args.train_file or _labels_known(data_args):
        return data_args
    if config.problem_type == "regression" or config.num_labels == 1:
        return dataclasses.replace(data_args, task_type="regression")
    names = [str(config.id2label[i]) for i in range(config.num_labels)]
    logger.info("Labels of the dev file read as the model's %s (id order); override with --label_list.", names)
    return dataclasses.replace(data_args, label_list=names)


def custom_task(data_args: DataArguments) -> Task:
    """The static `Task` of custom data (reads and checks the files, tokenizes nothing)."""
    return _prepare(data_args)[0]


def load_custom(data_args: DataArguments, tokenizer: PreTrainedTokenizerBase) -> tuple[Task, TaskData]:
    task, raw, text_columns = _prepare(data_args)
    raw = keep_first(raw, data_args.max_train_samples, data_args.max_eval_samples)
    tokenized = tokenize_pairs(
        raw,
        tokenizer,
        text_columns,
        data_args.max_seq_length or DEFAULT_MAX_SEQ_LENGTH,
        data_args.pad_to_max_length,
        is_regression=task.is_regression,
    )
    return task, TaskData(train=tokenized["train"], eval_sets={"validation": tokenized["validation"]})
