"""LAMBADA as lm-evaluation-harness's `lambada_openai` defines it: accuracy and perplexity of the last word."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from ted.errors import TedInputError
from ted.lm.scoring import bos_prefix, score_rows
from ted.tasks.files import json_objects

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def read_examples(path: Path, limit: Optional[int] = None) -> list[str]:
    """The `text` of each JSONL row (the first `limit`), each with at least two words."""
    texts: list[str] = []
    for number, row in json_objects(path, str(path), '{"text": ...}'):
        text = row.get("text")
        if not isinstance(text, str) or " " not in text.strip():
            raise TedInputError(f"{path} line {number} has no 'text' of two or more words.")
        texts.append(text)
        if limit is not None and len(texts) >= limit:
            break  # the rest of the file is not read
    if not texts:
        raise TedInputError(f"{path} holds no LAMBADA rows.")
    return texts


def split_example(text: str) -> tuple[str, str]:
    """context = every word but the last; target = ' ' + the last word (words split at single spaces)."""
    context, last = text.rsplit(" ", 1)
    return context, " " + last


def encode_pair(tokenizer: PreTrainedTokenizerBase, context: str, target: str) -> tuple[list[int], list[int]]:
    """lm-evaluation-harness's split: trailing spaces move from the context to the target, the whole text is
    encoded once, and the target's tokens are what follows the context's own encoding (after a BOS where the
    tokenizer adds one by default, as the harness encodes)."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, target = context[:-spaces], context[-spaces:] + target
    whole = tokenizer(context + target, add_special_tokens=False)["input_ids"]
    context_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
    return bos_prefix(tokenizer) + list(context_ids), list(whole[len(context_ids) :])


def score_lambada(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    max_length: int,
    batch_size: int = 1,
) -> dict[str, Optional[float]]:
    """accuracy: fraction of examples whose every target token is the argmax, with accuracy_stderr (the
    harness's `acc_stderr`: sample standard deviation over examples / sqrt(n), None for one example);
    perplexity: exp(-mean over examples of the target's summed log-likelihood), the harness's `perplexity`
    aggregation; examples."""
    rows, first = [], []
    for text in texts:
        context_ids, target_ids = encode_pair(tokenizer, *split_example(text))
        row = (context_ids + target_ids)[-(max_length + 1) :]  # the harness keeps the last max_length inputs
        rows.append(row)
        first.append(len(row) - len(target_ids))
    loglikelihoods, correct = [], 0
    for logprobs, greedy in score_rows(model, rows, first, batch_size):
        loglikelihoods.append(float(logprobs.sum()))
        correct += bool(greedy.all())
    n, accuracy = len(texts), correct / len(texts)
    return {
        "accuracy": accuracy,
        "accuracy_stderr": math.sqrt(accuracy * (1 - accuracy) / (n - 1)) if n > 1 else None,
        "perplexity": math.exp(-sum(loglikelihoods) / len(loglikelihoods)),
        "examples": n,
    }
