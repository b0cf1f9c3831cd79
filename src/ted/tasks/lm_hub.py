"""Hub datasets as causal-LM text: `--task_name causal_lm --dataset_name NAME [--dataset_config_name CONFIG]`.

`datasets.load_dataset(NAME, CONFIG)` gives the splits: `validation` is the dev set (required) and `train` the
training set (when the dataset has one). Every non-blank row of `--text_column` (default `text`) is one document,
exactly as a row of a CSV/JSON(L) file is: tasks/causal_lm.py tokenises, appends EOS and packs both alike.
NAME can also be a local folder or a packaged builder that `load_dataset` reads (a folder holding
`train.jsonl` and `validation.jsonl`, say), which is how this works offline. --line_by_line does not apply:
rows are documents already (WikiText's rows are its lines, so each line is a document).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Optional

from ted.errors import TedInputError
from ted.tasks.base import TaskData
from ted.tasks.causal_lm import DEFAULT_BLOCK_SIZE, packed_blocks
from ted.tasks.files import root_cause

if TYPE_CHECKING:
    import datasets
    from transformers import PreTrainedTokenizerBase

    from ted.settings.options import DataArguments

TRAIN, VALIDATION = "train", "validation"
STRING_TYPES = ("string", "large_string")
# Options that read local files only; with --dataset_name they would be ignored, so they are refused.
FILE_ONLY = ("train_file", "validation_file", "prompt_column", "completion_column", "messages_column")


def check_hub_request(data_args: DataArguments) -> None:
    """The options that cannot go with a hub dataset (or that need one), refused before anything loads."""
    if data_args.dataset_config_name and not data_args.dataset_name:
        raise TedInputError("--dataset_config_name names a configuration of --dataset_name: pass --dataset_name too.")
    if not data_args.dataset_name:
        return
    given = [f"--{name}" for name in FILE_ONLY if getattr(data_args, name)]
    if given:
        raise TedInputError(
            f"--dataset_name {data_args.dataset_name} reads the text from the hub, so {', '.join(given)} (for local "
            "files) cannot go with it: pass either --dataset_name (with --text_column) or local files."
        )


def _label(data_args: DataArguments) -> str:
    config = data_args.dataset_config_name
    return f"{data_args.dataset_name!r}" + (f" (configuration {config!r})" if config else "")


def load_hub_splits(data_args: DataArguments) -> tuple[Optional[datasets.Dataset], datasets.Dataset]:
    """(train split or None, validation split) of the hub dataset, their text column checked."""
    import datasets

    label = _label(data_args)
    try:
        loaded = datasets.load_dataset(data_args.dataset_name, data_args.dataset_config_name)
    except Exception as err:  # unknown id or configuration, offline, ...: one line, the dataset named
        raise TedInputError(
            f"Could not load the hub dataset {label}: {root_cause(err)}. Offline? Pass the text as local files "
            "(--train_file/--validation_file) instead."
        ) from err
    if not isinstance(loaded, datasets.DatasetDict) or VALIDATION not in loaded:
        splits = ", ".join(loaded) if isinstance(loaded, datasets.DatasetDict) else "none named"
        raise TedInputError(
            f"The hub dataset {label} has no {VALIDATION!r} split (its splits: {splits}), which causal_lm scores "
            "as the dev set. Save the split you want as a file (dataset['test'].to_json('dev.jsonl')) and pass "
            "--validation_file, or choose a dataset with a validation split."
        )
    column = data_args.text_column or "text"
    for split in (TRAIN, VALIDATION):
        if split in loaded:
            _check_column(loaded[split], column, f"{label}, split {split!r}")
    return loaded.get(TRAIN), loaded[VALIDATION]


def _check_column(data: datasets.Dataset, column: str, where: str) -> None:
    if column not in data.column_names:
        raise TedInputError(
            f"The hub dataset {where} has no column {column!r} (--text_column); its columns: {data.column_names}."
        )
    feature = data.features[column]
    if getattr(feature, "dtype", None) not in STRING_TYPES:
        raise TedInputError(f"The hub dataset {where}: column {column!r} holds {feature}, not text (--text_column).")


def text_batches(data: datasets.Dataset, column: str, size: int = 1000) -> Iterator[list[str]]:
    """The column's rows in order, `size` at a time, without reading the whole column into memory."""
    for batch in data.select_columns([column]).iter(batch_size=size):
        yield [text or "" for text in batch[column]]


def hub_data(data_args: DataArguments, tokenizer: PreTrainedTokenizerBase) -> TaskData:
    """The validation (and train) split packed into blocks as a file's rows are; --max_*_samples count blocks."""
    train, dev = load_hub_splits(data_args)
    block = data_args.block_size or min(DEFAULT_BLOCK_SIZE, tokenizer.model_max_length)
    column = data_args.text_column or "text"
    dev_blocks = packed_blocks(text_batches(dev, column), tokenizer, block, data_args.max_eval_samples)
    if len(dev_blocks) == 0:
        raise TedInputError(f"The hub dataset {_label(data_args)}: the {VALIDATION!r} split holds no text.")
    if train is None:  # `ted evaluate` needs none; the training stages refuse an empty train split
        return TaskData(train=dev_blocks.select([]), eval_sets={"validation": dev_blocks})
    train_blocks = packed_blocks(text_batches(train, column), tokenizer, block, data_args.max_train_samples)
    return TaskData(train=train_blocks, eval_sets={"validation": dev_blocks})
