"""Shared steps of sentence(-pair) tasks: keep the first N examples and tokenize.

GLUE and custom data both arrive here as a `DatasetDict` whose splits hold the raw text columns
plus a `label` column of ids (int) or scores (float), already validated.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Optional

import numpy as np
from datasets import DatasetDict

from ted.method.pooling import ensure_pad_token

if TYPE_CHECKING:
    from transformers import BatchEncoding, PreTrainedTokenizerBase


def keep_first(dataset_dict: DatasetDict, max_train: Optional[int], max_eval: Optional[int]) -> DatasetDict:
    """`max_train_samples` / `max_eval_samples`: keep the first N rows (every non-train split is eval)."""
    out = {}
    for split, ds in dataset_dict.items():
        limit = max_train if split == "train" else max_eval
        out[split] = ds.select(range(min(limit, len(ds)))) if limit is not None else ds
    return DatasetDict(out)


def tokenize_pairs(
    dataset_dict: DatasetDict,
    tokenizer: PreTrainedTokenizerBase,
    text_columns: Sequence[str],
    max_seq_length: int,
    pad_to_max_length: bool,
    is_regression: bool = False,
) -> DatasetDict:
    """Tokenize one or two text columns into model inputs plus `labels`.

    Every original column is dropped, so the splits hold only what the model consumes (string
    columns left behind would break collators when `remove_unused_columns` is off).
    `labels` is int64 for classification and float32 for regression (what the HF heads expect).
    A tokenizer without a pad token (GPT-2, Llama) gets its EOS token as one: batches are padded.
    """
    if len(text_columns) not in (1, 2):
        raise ValueError(f"expected 1 or 2 text columns, got {list(text_columns)}")
    ensure_pad_token(tokenizer)
    padding = "max_length" if pad_to_max_length else False

    def encode(batch: dict[str, list]) -> BatchEncoding:
        texts = [batch[col] for col in text_columns]
        enc = tokenizer(*texts, truncation=True, max_length=max_seq_length, padding=padding)
        # A typed numpy array fixes the Arrow type of `labels` without a separate cast pass.
        enc["labels"] = np.asarray(batch["label"], dtype=label_dtype)
        return enc

    label_dtype = np.float32 if is_regression else np.int64
    return DatasetDict(
        {
            split: ds.map(encode, batched=True, remove_columns=ds.column_names, desc=f"Tokenizing {split}")
            for split, ds in dataset_dict.items()
        }
    )
