"""Hub datasets as causal-LM text: `--task_name causal_lm --dataset_name NAME [--dataset_config_name CONFIG]`.

`datasets.load_dataset(NAME, CONFIG)` gives the splits: `validation` is the dev set and `train` the training set
(when the dataset has one). A dataset with a `train` split only (openwebtext) needs
`--validation_split_percentage P`, as in Hugging Face's run_clm: the first P% of `train` rows are the dev set and the
rest train (`train[:P%]` / `train[P%:]` with `datasets`' own rounding). Every non-blank row of `--text_column`
(default `text`) is one document, exactly as a row of a CSV/JSON(L) file is: tasks/causal_lm.py tokenises, appends
EOS and packs both alike. NAME can also be a local folder or a packaged builder that `load_dataset` reads (a folder
holding `train.jsonl` and `validation.jsonl`, say), which is how this works offline. --line_by_line does not
apply: rows are documents already (WikiText's rows are its lines, so each line is a document).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, NamedTuple, Optional

from ted.errors import TedInputError
from ted.tasks.base import TaskData
from ted.tasks.causal_lm import DEFAULT_BLOCK_SIZE
from ted.tasks.files import root_cause
from ted.tasks.packing import cached_packed_blocks

if TYPE_CHECKING:
    import datasets
    from transformers import PreTrainedTokenizerBase

    from ted.settings.options import DataArguments

logger = logging.getLogger(__name__)

TRAIN, VALIDATION = "train", "validation"
STRING_TYPES = ("string", "large_string")
# Options that read local files only; with --dataset_name they would be ignored, so they are refused.
FILE_ONLY = ("train_file", "validation_file", "prompt_column", "completion_column", "messages_column")


def check_hub_request(data_args: DataArguments) -> None:
    """The options that cannot go with a hub dataset (or that need one), refused before anything loads."""
    percent = data_args.validation_split_percentage
    if data_args.dataset_config_name and not data_args.dataset_name:
        raise TedInputError("--dataset_config_name names a configuration of --dataset_name: pass --dataset_name too.")
    if percent is not None and not 0 < percent < 100:
        raise TedInputError(
            f"--validation_split_percentage {percent} would leave no rows for the dev set or for training: pass a "
            "whole number from 1 to 99 (run_clm's default is 5)."
        )
    if not data_args.dataset_name:
        if percent is not None:  # a preset's hub setting under local files, say: nothing to cut, so unused
            logger.warning(
                "--validation_split_percentage %d is not used: it cuts the dev set from a hub dataset (--dataset_name) "
                "that has no validation split; local files bring their own --validation_file.",
                percent,
            )
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


def split_off_dev(rows: datasets.Dataset, percent: int) -> tuple[datasets.Dataset, datasets.Dataset]:
    """(train[P%:], train[:P%]): the rows `load_dataset(..., split="train[:P%]")` would give, cut from the
    already loaded split (contiguous selections: nothing is copied)."""
    import datasets

    cut = datasets.ReadInstruction(TRAIN, to=percent, unit="%").to_absolute({TRAIN: len(rows)})[0].to
    return rows.select(range(cut, len(rows))), rows.select(range(cut))


class HubSplits(NamedTuple):
    train: Optional[datasets.Dataset]  # None: the dataset has no train split, or it was not asked for
    dev: datasets.Dataset
    dev_name: str  # how messages name the dev rows


def load_hub_splits(data_args: DataArguments, with_train: bool = True) -> HubSplits:
    """The hub dataset's train and dev rows, their text column checked; with_train=False (scoring only) leaves
    the train split unread (train None)."""
    import datasets

    label, percent = _label(data_args), data_args.validation_split_percentage
    try:
        loaded = datasets.load_dataset(data_args.dataset_name, data_args.dataset_config_name)
    except Exception as err:  # unknown id or configuration, offline, ...: one line, the dataset named
        raise TedInputError(
            f"Could not load the hub dataset {label}: {root_cause(err)}. Offline? Pass the text as local files "
            "(--train_file/--validation_file) instead."
        ) from err
    splits = list(loaded) if isinstance(loaded, datasets.DatasetDict) else []
    if VALIDATION in splits:
        if percent is not None:
            logger.warning(
                "The hub dataset %s has a %r split, which is the dev set: --validation_split_percentage %d is not "
                "used (it applies to datasets without one, as in run_clm).",
                label,
                VALIDATION,
                percent,
            )
        train, dev, dev_name = loaded.get(TRAIN), loaded[VALIDATION], f"split {VALIDATION!r}"
    elif TRAIN in splits and percent is not None:
        (train, dev), dev_name = split_off_dev(loaded[TRAIN], percent), f"first {percent}% of split {TRAIN!r}"
    else:
        raise TedInputError(_no_dev_message(label, splits))
    column = data_args.text_column or "text"
    _check_column(dev, column, f"{label}, {dev_name}")
    if train is None or not with_train:
        return HubSplits(None, dev, dev_name)
    _check_column(train, column, f"{label}, split {TRAIN!r}")
    return HubSplits(train, dev, dev_name)


def _no_dev_message(label: str, splits: list[str]) -> str:
    cut = (
        f"pass --validation_split_percentage P to score the first P% of its {TRAIN!r} rows (the rest train, as in "
        "run_clm), or "
        if TRAIN in splits
        else ""
    )
    return (
        f"The hub dataset {label} has no {VALIDATION!r} split (its splits: {', '.join(splits) or 'none named'}), "
        f"which causal_lm scores as the dev set: {cut}save the split you want as a file "
        "(dataset['test'].to_json('dev.jsonl')) and pass --validation_file."
    )


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
    """The dev (and train) split packed into blocks as a file's rows are (kept in the datasets cache: see
    tasks/packing.py); --max_*_samples count blocks.
    `--max_train_samples 0` (what `ted evaluate` asks for) leaves the train split unread."""
    train, dev, dev_name = load_hub_splits(data_args, with_train=data_args.max_train_samples != 0)
    block = data_args.block_size or min(DEFAULT_BLOCK_SIZE, tokenizer.model_max_length)
    column = data_args.text_column or "text"

    def pack(rows: datasets.Dataset, limit: Optional[int]) -> datasets.Dataset:
        return cached_packed_blocks(rows, text_batches(rows, column), tokenizer, block, limit, key=column)

    dev_blocks = pack(dev, data_args.max_eval_samples)
    if len(dev_blocks) == 0:
        raise TedInputError(f"The hub dataset {_label(data_args)}: the {dev_name} holds no text.")
    if train is None:  # `ted evaluate` needs none; the training stages refuse an empty train split
        return TaskData(train=dev_blocks.select([]), eval_sets={"validation": dev_blocks})
    return TaskData(train=pack(train, data_args.max_train_samples), eval_sets={"validation": dev_blocks})
