"""Log-probabilities of target tokens under a causal LM, for batches of token rows of any length."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def bos_prefix(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """[BOS] when the tokenizer starts every text with it by default (Llama-2/3), else []: Hugging Face's
    perplexity guide and lm-evaluation-harness both encode with the tokenizer's defaults. Special tokens a
    tokenizer appends (EOS, [SEP]) are left out: they are not text."""
    bos = tokenizer.bos_token_id
    ids = tokenizer("a")["input_ids"]
    return [bos] if bos is not None and ids and ids[0] == bos else []


def score_rows(
    model: PreTrainedModel, rows: Sequence[Sequence[int]], first: Sequence[int], batch_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """For each row of token ids, the log-probability (float64) of every target token `row[first:]` given the
    tokens before it in the row, and whether greedy decoding (argmax) picks it.

    Rows of one batch are padded on the right and masked: under causal attention padding after a token never
    changes its logits. `first` is at least 1 (the first token of a row has no prediction)."""
    import torch

    device = next(model.parameters()).device
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            width = max(len(row) for row in chunk) - 1
            ids = torch.zeros(len(chunk), width, dtype=torch.long)
            mask = torch.zeros(len(chunk), width, dtype=torch.long)
            for i, row in enumerate(chunk):
                ids[i, : len(row) - 1] = torch.tensor(row[:-1], dtype=torch.long)
                mask[i, : len(row) - 1] = 1
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            for i, row in enumerate(chunk):
                begin = first[start + i]
                if not 1 <= begin < len(row):
                    raise ValueError(f"row {start + i}: first target {begin} outside 1..{len(row) - 1}")
                # logits[p] predicts row[p + 1]: the targets row[begin:] are read at positions begin - 1 ...
                logp = torch.log_softmax(logits[i, begin - 1 : len(row) - 1].float(), dim=-1)
                target = torch.tensor(row[begin:], dtype=torch.long, device=logp.device)
                chosen = logp.gather(-1, target[:, None])[:, 0]
                yield chosen.double().cpu(), (logp.argmax(dim=-1) == target).cpu()
            del logits
