"""GLUE tasks, loaded from the hub (`nyu-mll/glue`) or from the original GLUE TSV folders.

Both sources end in the same `DatasetDict` (text columns named as on the hub, plus `label` ids in
the hub's id order), so what follows (sample limits, tokenization) is one code path.
"""

from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Union

import datasets
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

from ted.errors import TedInputError
from ted.tasks.base import DEFAULT_MAX_SEQ_LENGTH, Task, TaskData
from ted.tasks.files import check_utf8
from ted.tasks.metrics import glue_metric_fn
from ted.tasks.text_classification import keep_first, tokenize_pairs

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from ted.settings.options import DataArguments

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GlueTask:
    """One GLUE task: its hub layout and where its fields sit in the original TSV files."""

    label_list: Optional[list[str]]  # hub id order; None for the regression task (STS-B)
    text_columns: tuple[str, ...]  # hub column names
    selection_metric: str
    folder: str  # DIR/<folder>/train.tsv in the GLUE download
    # TSV field of each hub column (header name, or index for the header-less CoLA), label last.
    tsv_fields: tuple[Union[str, int], ...]
    tsv_header: bool = True
    tsv_int_labels: bool = False  # labels written as 0/1 ids instead of label names
    eval_files: tuple[tuple[str, str], ...] = (("validation", "dev.tsv"),)

    @property
    def head(self) -> str:
        return "regression" if self.label_list is None else "classification"

    @property
    def eval_splits(self) -> list[str]:
        return [split for split, _ in self.eval_files]


_PAIR = ("sentence1", "sentence2")
_NLI = ["entailment", "not_entailment"]
_MNLI_DEV = (("validation_matched", "dev_matched.tsv"), ("validation_mismatched", "dev_mismatched.tsv"))

# One row per task: hub labels, hub text columns, selection metric, GLUE folder, TSV fields (label last), options.
GLUE_TASKS: dict[str, GlueTask] = {
    "cola": GlueTask(["unacceptable", "acceptable"], ("sentence",), "matthews_correlation", "CoLA", (3, 1),
                     tsv_header=False, tsv_int_labels=True),
    "sst2": GlueTask(["negative", "positive"], ("sentence",), "accuracy", "SST-2", ("sentence", "label"),
                     tsv_int_labels=True),
    "mrpc": GlueTask(["not_equivalent", "equivalent"], _PAIR, "f1", "MRPC", ("#1 String", "#2 String", "Quality"),
                     tsv_int_labels=True),
    "stsb": GlueTask(None, _PAIR, "spearmanr", "STS-B", (*_PAIR, "score")),
    "qqp": GlueTask(["not_duplicate", "duplicate"], ("question1", "question2"), "f1", "QQP",
                    ("question1", "question2", "is_duplicate"), tsv_int_labels=True),
    "mnli": GlueTask(["entailment", "neutral", "contradiction"], ("premise", "hypothesis"), "accuracy", "MNLI",
                     (*_PAIR, "gold_label"), eval_files=_MNLI_DEV),
    "qnli": GlueTask(_NLI, ("question", "sentence"), "accuracy", "QNLI", ("question", "sentence", "label")),
    "rte": GlueTask(_NLI, _PAIR, "accuracy", "RTE", (*_PAIR, "label")),
    "wnli": GlueTask(["not_entailment", "entailment"], _PAIR, "accuracy", "WNLI", (*_PAIR, "label"),
                     tsv_int_labels=True),
}  # fmt: skip

# The original QQP train.tsv has a few broken rows (missing fields); like the TFDS and old
# transformers GLUE readers we skip them there, with a warning, instead of refusing the file.
_SKIP_MALFORMED_ROWS = {"qqp"}


def canonical_glue_name(name: Optional[str]) -> Optional[str]:
    """Map aliases (SST-2, sts_b, CoLA) to table keys (sst2, stsb, cola); None when not a GLUE task."""
    if not name:
        return None
    key = name.strip().lower().replace("-", "").replace("_", "")
    return key if key in GLUE_TASKS else None


def glue_task(name: str) -> Task:
    """The static `Task` of a GLUE task (no data is read)."""
    key = canonical_glue_name(name)
    if key is None:
        raise TedInputError(f"Unknown GLUE task {name!r}. Supported: {', '.join(GLUE_TASKS)}.")
    spec = GLUE_TASKS[key]
    return Task(
        name=key,
        head=spec.head,
        label_list=list(spec.label_list) if spec.label_list else None,
        selection_metric=spec.selection_metric,
        metric_fn=glue_metric_fn(key),
    )


# ---- original GLUE TSV files ------------------------------------------------------------------


def _label_ids(spec: GlueTask) -> dict[str, int]:
    if spec.tsv_int_labels:
        return {str(i): i for i in range(len(spec.label_list))}
    return {name: i for i, name in enumerate(spec.label_list)}


def read_glue_tsv(task: str, split_file: str) -> dict[str, list]:
    """Read one GLUE TSV file into columns: the hub's text columns plus `label` (int id / float).

    Raises TedInputError for a missing file, a missing header column, a row with the wrong number
    of fields or a label outside the task's label set, naming the file and line.
    """
    key = canonical_glue_name(task)
    if key is None:
        raise TedInputError(f"Unknown GLUE task {task!r}. Supported: {', '.join(GLUE_TASKS)}.")
    spec = GLUE_TASKS[key]
    if not os.path.isfile(split_file):
        raise TedInputError(
            f"GLUE {key} file not found: expected {split_file}. --data_dir must hold the GLUE task "
            f"folders as written by the GLUE download script (e.g. RTE/train.tsv, {spec.folder}/train.tsv)."
        )
    check_utf8(split_file, split_file)
    label_ids = None if spec.label_list is None else _label_ids(spec)
    columns: dict[str, list] = {col: [] for col in spec.text_columns + ("label",)}
    skipped: list[int] = []
    # QUOTE_NONE: GLUE sentences contain unbalanced '"' that must stay literal characters.
    # utf-8-sig: MRPC files start with a byte-order mark.
    with open(split_file, encoding="utf-8-sig", newline="") as fh:
        reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        if spec.tsv_header:
            header = next(reader, None) or []
            missing = [f for f in spec.tsv_fields if f not in header]
            if missing:
                raise TedInputError(
                    f"{split_file}: header lacks column(s) {missing} expected for GLUE {key}; "
                    f"found {header}. Is this the original GLUE TSV of {spec.folder}?"
                )
            positions = [header.index(f) for f in spec.tsv_fields]
            n_fields = len(header)
        else:
            positions, n_fields = list(spec.tsv_fields), 4
        for row in reader:
            line = reader.line_num
            if not row:  # a blank line (e.g. a trailing one) carries no example
                continue
            if len(row) != n_fields:
                if key in _SKIP_MALFORMED_ROWS:
                    skipped.append(line)
                    continue
                raise TedInputError(
                    f"{split_file}, line {line}: expected {n_fields} tab-separated fields for GLUE {key}, "
                    f"found {len(row)}."
                )
            values = [row[p] for p in positions]
            for col, value in zip(spec.text_columns, values[:-1]):
                columns[col].append(value)
            columns["label"].append(_parse_label(values[-1], label_ids, split_file, line, key))
    if skipped:
        logger.warning("%s: skipped %d malformed row(s) (lines %s)", split_file, len(skipped), skipped[:10])
    return columns


def _parse_label(raw: str, label_ids: Optional[dict[str, int]], path: str, line: int, task: str) -> Union[int, float]:
    if label_ids is None:  # STS-B similarity score
        try:
            return float(raw)
        except ValueError:
            raise TedInputError(
                f"{path}, line {line}: GLUE {task} score {raw!r} is not a number (expected a float in 0-5)."
            ) from None
    if raw not in label_ids:
        raise TedInputError(
            f"{path}, line {line}: label {raw!r} is not a GLUE {task} label; allowed values: {', '.join(label_ids)}."
        )
    return label_ids[raw]


def _features(spec: GlueTask) -> Features:
    label = Value("float32") if spec.label_list is None else ClassLabel(names=list(spec.label_list))
    return Features({**{col: Value("string") for col in spec.text_columns}, "label": label})


def _load_tsv_dir(key: str, data_dir: str) -> DatasetDict:
    spec = GLUE_TASKS[key]
    folder = os.path.join(data_dir, spec.folder)
    if not os.path.isdir(folder):
        raise TedInputError(
            f"GLUE {key} folder not found: expected {folder}. --data_dir must hold the GLUE task folders "
            f"as written by the GLUE download script (e.g. RTE/train.tsv, {spec.folder}/train.tsv)."
        )
    files = (("train", "train.tsv"),) + spec.eval_files
    # Read (and so validate) every file before building any dataset.
    raw = {split: read_glue_tsv(key, os.path.join(folder, name)) for split, name in files}
    features = _features(spec)
    return DatasetDict({split: Dataset.from_dict(cols, features=features) for split, cols in raw.items()})


# ---- hub --------------------------------------------------------------------------------------


def _load_hub(key: str, dataset_name: Optional[str]) -> DatasetDict:
    spec = GLUE_TASKS[key]
    name = dataset_name or "nyu-mll/glue"
    try:
        loaded = datasets.load_dataset(name, key)
    except Exception as err:  # offline, unknown id, ...: point to the offline alternative
        raise TedInputError(
            f"Could not load GLUE {key} from the hub dataset {name!r} ({type(err).__name__}: {err}). "
            f"Offline? Pass --data_dir with the GLUE TSV folders instead."
        ) from err
    splits = ["train"] + spec.eval_splits
    missing = [s for s in splits if s not in loaded]
    if missing:
        raise TedInputError(f"Hub dataset {name!r} ({key}) lacks split(s) {missing}; found {list(loaded)}.")
    wanted = list(spec.text_columns) + ["label"]
    out = {}
    for split in splits:
        ds = loaded[split]
        absent = [c for c in wanted if c not in ds.column_names]
        if absent:
            raise TedInputError(
                f"Hub dataset {name!r} ({key}, {split}) lacks column(s) {absent}; found {ds.column_names}."
            )
        label = ds.features["label"]
        if spec.label_list is not None and isinstance(label, ClassLabel) and label.names != spec.label_list:
            # Ids would silently mean other labels (and metrics like f1 pick class 1).
            raise TedInputError(
                f"Hub dataset {name!r} ({key}) labels are {label.names}, expected {spec.label_list} in this order."
            )
        out[split] = ds.select_columns(wanted)
    return DatasetDict(out)


def load_glue(data_args: DataArguments, tokenizer: PreTrainedTokenizerBase) -> tuple[Task, TaskData]:
    """Load, limit and tokenize a GLUE task from `data_args.data_dir` (TSV) or the hub."""
    task = glue_task(data_args.task_name)
    spec = GLUE_TASKS[task.name]
    if data_args.data_dir:
        raw = _load_tsv_dir(task.name, data_args.data_dir)
    else:
        raw = _load_hub(task.name, data_args.dataset_name)
    raw = keep_first(raw, data_args.max_train_samples, data_args.max_eval_samples)
    tokenized = tokenize_pairs(
        raw,
        tokenizer,
        spec.text_columns,
        data_args.max_seq_length or DEFAULT_MAX_SEQ_LENGTH,
        data_args.pad_to_max_length,
        is_regression=task.is_regression,
    )
    return task, TaskData(train=tokenized["train"], eval_sets={s: tokenized[s] for s in spec.eval_splits})
