"""SQuAD 1.1 / 2.0: extractive question answering with span heads.

Data from the hub (`rajpurkar/squad_v2`, `rajpurkar/squad`) or local files in the official JSON
schema. Contexts are cut into overlapping windows (max_seq_length 384, doc_stride 128 by default,
as in the paper); teacher and student see the very same windows because they share a tokenizer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from ted.errors import TedInputError
from ted.method.kinds import SpanKind
from ted.squad.windows import prepare_eval_features, prepare_train_features, squad_examples_from_json
from ted.tasks.base import Task, TaskData

if TYPE_CHECKING:
    import datasets
    from transformers import PreTrainedTokenizerBase

    from ted.settings.options import DataArguments

HUB_IDS = {"squad_v2": "rajpurkar/squad_v2", "squad": "rajpurkar/squad"}
DEFAULT_MAX_SEQ_LENGTH = 384


def squad_task(name: str, data_args: Optional[DataArguments] = None) -> Task:
    return Task(name=name, head=SpanKind.name, label_list=None, selection_metric=SpanKind.default_selection_metric)


def version_2(task: Task) -> bool:
    return task.name == "squad_v2"


def _raw_splits(name: str, data_args: DataArguments) -> tuple[datasets.Dataset, datasets.Dataset]:
    if data_args.data_dir:
        raise TedInputError(
            "--data_dir holds GLUE TSV folders; give SQuAD JSON files with "
            "--train_file/--validation_file, or nothing to use the hub."
        )
    if data_args.train_file or data_args.validation_file:
        if not data_args.validation_file:
            raise TedInputError(
                "--train_file needs a --validation_file too (SQuAD JSON schema): the dev set scores every epoch."
            )
        dev = squad_examples_from_json(data_args.validation_file)
        # Scoring needs the dev file alone; the training stages refuse the empty train split.
        train = squad_examples_from_json(data_args.train_file) if data_args.train_file else dev.select([])
        return train, dev
    import datasets

    raw = datasets.load_dataset(data_args.dataset_name or HUB_IDS[name])
    return raw["train"], raw["validation"]


def _first(dataset: datasets.Dataset, n: Optional[int]) -> datasets.Dataset:
    return dataset.select(range(min(n, len(dataset)))) if n is not None else dataset


def load_squad(data_args: DataArguments, tokenizer: PreTrainedTokenizerBase) -> tuple[Task, TaskData]:
    name = data_args.task_name.strip().lower()
    task = squad_task(name)
    train_raw, eval_raw = _raw_splits(name, data_args)
    train_raw = _first(train_raw, data_args.max_train_samples)
    eval_raw = _first(eval_raw, data_args.max_eval_samples)
    if not version_2(task) and any(len(a["text"]) == 0 for a in eval_raw["answers"]):
        raise TedInputError("The data has unanswerable questions: use --task_name squad_v2 for SQuAD 2.0 data.")
    window = dict(
        tokenizer=tokenizer,
        max_seq_length=data_args.max_seq_length or DEFAULT_MAX_SEQ_LENGTH,
        doc_stride=data_args.doc_stride,
        pad_to_max_length=data_args.pad_to_max_length,
    )
    if data_args.doc_stride >= window["max_seq_length"]:
        raise TedInputError(
            f"--doc_stride {data_args.doc_stride} must be smaller than --max_seq_length {window['max_seq_length']}."
        )
    train, features = (
        raw.map(prepare, batched=True, remove_columns=raw.column_names, fn_kwargs=window, desc=f"windows ({name})")
        for raw, prepare, name in (
            (train_raw, prepare_train_features, "train"),
            (eval_raw, prepare_eval_features, "dev"),
        )
    )
    # The Trainer hands each batch's feature indices to the streaming post-processor.
    features = features.add_column("feature_index", list(range(len(features))))
    return task, TaskData(train=train, eval_sets={"validation": features}, eval_examples={"validation": eval_raw})
