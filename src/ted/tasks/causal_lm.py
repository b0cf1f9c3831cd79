"""The causal-LM task (`--task_name causal_lm`): documents packed into blocks, or prompt/completion rows.

Plain text (any file that is not .csv/.tsv/.json/.jsonl, e.g. .txt or WikiText's .raw): documents are separated
by blank lines, or one per non-empty line with `--line_by_line`. CSV/JSON(L): one document per row of
`--text_column` (default `text`), as are the rows of a hub dataset's `train` and `validation` splits
(`--dataset_name`, tasks/lm_hub.py; `--validation_split_percentage` cuts dev from `train`); blank documents are
skipped. Each document is tokenised as the tokenizer does by default minus the special tokens it appends (a BOS in
front only where the tokenizer adds one, as `ted lm-eval` does), EOS is appended, and the whole split is cut into
blocks of `--block_size` tokens (the last, shorter block is kept; attention crosses document boundaries inside a
block, as in Hugging Face's run_clm). Every token of a block is a label.

With `--prompt_column/--completion_column` every row is one example, padded rather than packed: prompt and
completion are tokenised separately and joined (put any separator in the text), EOS ends the completion, and
prompt tokens get the label -100, so the task loss and every distillation term count completion tokens only.
`--messages_column` (JSON(L)) does the same for chats rendered with the tokenizer's chat template (tasks/chat.py).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from ted.errors import TedInputError
from ted.lm.scoring import bos_prefix
from ted.method.kinds import CausalLMKind
from ted.tasks.base import Task, TaskData
from ted.tasks.files import check_utf8, root_cause, scan_file
from ted.tasks.packing import encode, eos_id, packed_blocks

if TYPE_CHECKING:
    import datasets
    import torch
    from transformers import PreTrainedTokenizerBase

    from ted.settings.options import DataArguments

logger = logging.getLogger(__name__)

NAME = "causal_lm"
TABLES = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json"}
DEFAULT_BLOCK_SIZE = 1024
IGNORE = -100


def perplexity_metric_fn() -> Any:
    """compute_metrics of the kind's metric inputs: rows of (summed NLL, scored tokens) -> exact perplexity."""

    def compute(predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        sums = np.asarray(predictions, dtype=np.float64).reshape(-1, 2).sum(axis=0)
        tokens = float(sums[1])
        return {"perplexity": math.exp(sums[0] / tokens) if tokens else math.nan, "tokens": tokens}

    return compute


def causal_lm_task(name: str = NAME, data_args: Optional[DataArguments] = None) -> Task:
    return Task(NAME, CausalLMKind.name, None, CausalLMKind.default_selection_metric, perplexity_metric_fn())


def fit_to_model(data_args: DataArguments, positions: Optional[int]) -> DataArguments:
    """`data_args` with --block_size resolved against the model's positions (default min(1024, positions));
    a block longer than the model can read is refused before any model loads."""
    block = data_args.block_size
    if block is not None and block < 2:
        raise TedInputError(f"--block_size {block} is too small: a block needs at least 2 tokens to predict one.")
    if block is None:
        block = min(DEFAULT_BLOCK_SIZE, positions or DEFAULT_BLOCK_SIZE)
    elif positions is not None and block > positions:
        raise TedInputError(
            f"--block_size {block} is longer than the model can read (its positions cover {positions} tokens). "
            f"Pass --block_size {positions} or less."
        )
    return dataclasses.replace(data_args, block_size=block)


# ------------------------------------------------------------------------------------------------ reading


def _check_path(path: Optional[str], flag: str) -> str:
    if not path:
        raise TedInputError(f"--task_name causal_lm needs {flag} (a .txt file, or CSV/JSON(L) with --text_column).")
    if not os.path.isfile(path):
        raise TedInputError(f"{flag} {path} does not exist.")
    return path


def _text_documents(path: str, name: str, line_by_line: bool) -> list[str]:
    check_utf8(path, name)
    with open(path, encoding="utf-8-sig") as fh:
        lines = fh.read().splitlines()
    if line_by_line:
        docs = [line for line in lines if line.strip()]
    else:
        docs, current = [], []
        for line in lines + [""]:
            if line.strip():
                current.append(line)
            elif current:
                docs.append("\n".join(current))
                current = []
    if not docs:
        raise TedInputError(f"{name} is empty: it holds no text.")
    return docs


def _table(path: str, name: str, ext: str) -> datasets.Dataset:
    import datasets

    scan_file(path, name, ext)
    kwargs: dict[str, Any] = {}
    if TABLES[ext] == "csv":
        kwargs = {"keep_default_na": False, "na_values": [""], **({"delimiter": "\t"} if ext == ".tsv" else {})}
    try:
        data = datasets.load_dataset(TABLES[ext], data_files=path, split="train", **kwargs)
    except Exception as err:  # pandas / pyarrow: one line, the file named
        raise TedInputError(f"{name} could not be read as {ext[1:].upper()}: {root_cause(err)}") from err
    if len(data) == 0:
        raise TedInputError(f"{name} holds no data rows.")
    return data


def _column(data: datasets.Dataset, column: str, name: str, flag: str) -> list[str]:
    if column not in data.column_names:
        raise TedInputError(f"{name}: column {column!r} not found ({flag}); available columns: {data.column_names}.")
    values = data[column]
    for i, value in enumerate(values):
        if not isinstance(value, str):
            raise TedInputError(f"{name}, record {i + 1}: column {column!r} holds {value!r}, not text.")
    return values


def _read(path: str, flag: str, data_args: DataArguments) -> tuple[list[str], Optional[list[str]]]:
    """(documents or prompts, completions or None) of one file."""
    name = f"{flag} {path}"
    ext = os.path.splitext(path)[1].lower()
    pairs = data_args.prompt_column or data_args.completion_column
    if ext not in TABLES:
        if pairs or data_args.text_column:
            raise TedInputError(f"{name}: --text_column/--prompt_column/--completion_column need a CSV/JSON(L) file.")
        return _text_documents(path, name, data_args.line_by_line), None
    data = _table(path, name, ext)
    if not pairs:
        return _column(data, data_args.text_column or "text", name, "--text_column"), None
    if not (data_args.prompt_column and data_args.completion_column):
        raise TedInputError("Prompt/completion data needs both --prompt_column and --completion_column.")
    prompts = _column(data, data_args.prompt_column, name, "--prompt_column")
    return prompts, _column(data, data_args.completion_column, name, "--completion_column")


# ------------------------------------------------------------------------------------------------ tokenising


def completion_rows(
    prompts: list[str], completions: list[str], tokenizer: PreTrainedTokenizerBase, block_size: int, name: str
) -> dict:
    """One row per example: prompt tokens labelled -100, the completion (and its EOS) scored; cut to block_size."""
    bos, eos = bos_prefix(tokenizer), eos_id(tokenizer)
    rows, labels, cut = [], [], 0
    for prompt, completion in zip(encode(tokenizer, prompts), encode(tokenizer, completions)):
        ids = bos + prompt + completion + [eos]
        scored = [IGNORE] * (len(bos) + len(prompt)) + completion + [eos]
        cut += len(ids) > block_size
        rows.append(ids[:block_size])
        labels.append(scored[:block_size])
    if cut:
        logger.warning(
            "%s: %d of %d rows are longer than --block_size %d and were cut.", name, cut, len(rows), block_size
        )
    return {"input_ids": rows, "labels": labels}


def _split(
    path: str, flag: str, data_args: DataArguments, tokenizer: PreTrainedTokenizerBase, limit: Optional[int]
) -> datasets.Dataset:
    import datasets

    block = data_args.block_size or min(DEFAULT_BLOCK_SIZE, tokenizer.model_max_length)
    if data_args.messages_column:
        return datasets.Dataset.from_dict(_chats(path, flag, data_args, tokenizer, block, limit))
    texts, completions = _read(path, flag, data_args)
    if completions is None:
        return packed_blocks((texts[i : i + 1000] for i in range(0, len(texts), 1000)), tokenizer, block, limit)
    if limit is not None:
        texts, completions = texts[:limit], completions[:limit]
    return datasets.Dataset.from_dict(completion_rows(texts, completions, tokenizer, block, f"{flag} {path}"))


def _chats(
    path: str, flag: str, data_args: DataArguments, tokenizer: PreTrainedTokenizerBase, block: int, limit: Optional[int]
) -> dict:
    from ted.tasks.chat import chat_rows, check_conversation

    name, ext = f"{flag} {path}", os.path.splitext(path)[1].lower()
    if ext not in (".json", ".jsonl") or data_args.prompt_column or data_args.completion_column:
        raise TedInputError(f"{name}: --messages_column needs a JSON(L) file, without --prompt/--completion_column.")
    data, column = _table(path, name, ext), data_args.messages_column
    if column not in data.column_names:
        raise TedInputError(f"{name}: column {column!r} not found (--messages_column); available: {data.column_names}.")
    rows = data[column][:limit] if limit is not None else data[column]
    return chat_rows(tokenizer, [check_conversation(v, f"{name}, record {i + 1}") for i, v in enumerate(rows)], block)


def load_causal_lm_data(data_args: DataArguments, tokenizer: PreTrainedTokenizerBase) -> tuple[Task, TaskData]:
    from ted.tasks.lm_hub import check_hub_request, hub_data

    if data_args.data_dir:
        raise TedInputError("causal_lm reads --train_file/--validation_file or --dataset_name, not --data_dir.")
    check_hub_request(data_args)
    if data_args.dataset_name:
        return causal_lm_task(), hub_data(data_args, tokenizer)
    dev_path = _check_path(data_args.validation_file, "--validation_file")
    train_path = _check_path(data_args.train_file, "--train_file") if data_args.train_file else None
    dev = _split(dev_path, "--validation_file", data_args, tokenizer, data_args.max_eval_samples)
    if train_path and data_args.max_train_samples != 0:
        train = _split(train_path, "--train_file", data_args, tokenizer, data_args.max_train_samples)
    else:  # `ted evaluate` (--max_train_samples 0) scores dev alone; the training stages refuse an empty train
        train = dev.select([])
    return causal_lm_task(), TaskData(train=train, eval_sets={"validation": dev})


# ------------------------------------------------------------------------------------------------ batching


class TokenRowsCollator:
    """Pads token rows on the right: input ids with `pad_id`, attention mask 0, labels -100 (labels default to
    the input ids). Other keys (one number per row) pass through."""

    def __init__(self, pad_id: int, pad_to_multiple_of: Optional[int] = None) -> None:
        self.pad_id = pad_id
        self.multiple = pad_to_multiple_of

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        import torch

        width = max(len(f["input_ids"]) for f in features)
        if self.multiple:
            width = -(-width // self.multiple) * self.multiple
        ids = torch.full((len(features), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(features), width), dtype=torch.long)
        labels = torch.full((len(features), width), IGNORE, dtype=torch.long)
        for i, f in enumerate(features):
            n = len(f["input_ids"])
            ids[i, :n] = torch.as_tensor(f["input_ids"], dtype=torch.long)
            mask[i, :n] = 1
            labels[i, :n] = torch.as_tensor(f.get("labels", f["input_ids"]), dtype=torch.long)
        batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
        for key in features[0]:
            if key not in batch:
                batch[key] = torch.as_tensor([f[key] for f in features])
        return batch


def token_rows_collator(tokenizer: PreTrainedTokenizerBase, pad_to_multiple_of: Optional[int]) -> TokenRowsCollator:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return TokenRowsCollator(pad if pad is not None else 0, pad_to_multiple_of)
