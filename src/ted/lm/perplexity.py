"""Perplexity of a text with the strided sliding window of Hugging Face's "perplexity of fixed-length models"."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ted.lm.scoring import bos_prefix, score_rows

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

# A WikiText article heading ` = Title = ` (not a section heading ` = = Section = = `).
ARTICLE_HEADING = re.compile(r"^ = [^=].* = $")


def split_documents(text: str) -> list[str]:
    """WikiText raw text as articles: a document starts at each ` = Title = ` line (text before the first
    heading belongs to the first document). Joined again, the documents give back `text` exactly."""
    documents: list[str] = []
    current: list[str] = []
    for line in text.splitlines(keepends=True):
        if ARTICLE_HEADING.match(line.rstrip("\r\n")) and any(part.strip() for part in current):
            documents.append("".join(current))
            current = []
        current.append(line)
    if current:
        documents.append("".join(current))
    return documents


@dataclass(frozen=True)
class Window:
    """Tokens [begin, end) go through the model; the tokens [first, end) are scored in this window."""

    begin: int
    end: int
    first: int


def windows(n_tokens: int, context_length: int, stride: int) -> list[Window]:
    """Hugging Face's windows: start every `stride` tokens, `context_length` long, each scoring only the tokens
    the previous window did not reach. With stride < context_length every token but the first is scored once,
    with at least context_length - stride tokens of context (except in the first window); with stride equal
    to context_length the first token of each window has no context inside it and is not scored."""
    result: list[Window] = []
    previous_end = 0
    for begin in range(0, n_tokens, stride):
        end = min(begin + context_length, n_tokens)
        first = max(previous_end, begin + 1)
        if first < end:
            result.append(Window(begin, end, first))
        previous_end = end
        if end == n_tokens:
            break
    return result


def perplexity(
    model: PreTrainedModel, token_ids: list[int], context_length: int, stride: int, batch_size: int = 1
) -> dict[str, float]:
    """exp(mean negative log-likelihood) over every scored token: perplexity, tokens, context_length, stride."""
    spans = windows(len(token_ids), context_length, stride)
    rows = [token_ids[w.begin : w.end] for w in spans]
    total, count = 0.0, 0
    for logprobs, _ in score_rows(model, rows, [w.first - w.begin for w in spans], batch_size):
        total -= float(logprobs.sum())
        count += len(logprobs)
    if not count:
        raise ValueError("no token to score: the text needs at least 2 tokens")
    return {"perplexity": math.exp(total / count), "tokens": count, "context_length": context_length, "stride": stride}


def encode_text(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """The text's token ids, after a BOS only where the tokenizer adds one by default (scoring.bos_prefix)."""
    # verbose=False: a whole corpus is longer than model_max_length on purpose; the windows cut it.
    return bos_prefix(tokenizer) + list(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])
