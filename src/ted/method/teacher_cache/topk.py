"""Causal-LM teachers in the cache: the top-k next-token log-probabilities per distilled position.

A full logit row per token is too large to store (V = 49,152 for SmolLM2), so for every position the KD term reads
the cache keeps the teacher's k most likely next tokens: their ids (int32) and their log-probabilities at
temperature 1, log_softmax(z)[ids] over the *full* vocabulary (in --teacher_cache_dtype). Log-probabilities rather
than logits: they are <= 0 and largest for the tokens that matter most, where 16-bit floats are most precise.

The KD term read from it ("sparse KD"): at temperature T the teacher's distribution is renormalised over its k
tokens, q_i = softmax_{j in top-k}(log p_j / T)_i (the same as softmax over the kept logits z_i / T), and is 0
elsewhere; the student's log-softmax over the full vocabulary at T is compared with it. For forward KL that is
T^2 sum_{i in top-k} q_i (log q_i - log p_s(i)): the student is pulled towards the teacher's k tokens and pushed
off every other token. It is an approximation that equals the full term when k = V, and is close when the
teacher's top-k mass is near 1 (recorded as `topk_mass` in ted_stage.json).

The teacher's distribution is rebuilt on the device as a [B, T, V] tensor (FILL outside the top-k, which every
divergence turns into probability exactly 0 for temperatures below ~9,000), so the same chunked divergence as the
online teacher's runs on it. Divergences that stay finite where the teacher's probability is 0 are supported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

import numpy as np
import torch

from ted.errors import TedInputError
from ted.method.chunked import default_chunk_tokens

if TYPE_CHECKING:
    import datasets

    from ted.method.kinds import HeadKind
    from ted.method.teacher_cache.collate import Collator

DEFAULT_TOPK = 64
FILL = -1.0e6  # outside the top-k: exp(FILL / T - ...) is exactly 0 in float32 for T < ~9,600
TOPK_VALUES, TOPK_IDS = "topk_logprobs", "topk_ids"

# Divergences finite when the teacher gives probability 0 outside its top-k, and for which parameters.
_FINITE = {
    "forward_kl": lambda p: True,
    "skew_kl": lambda p: True,
    "tvd": lambda p: True,
    "jsd": lambda p: p.get("beta", 0.5) < 1.0,  # beta = 1 is reverse KL
    "skew_rkl": lambda p: p.get("alpha", 0.1) > 0.0,  # alpha = 0 is reverse KL
}
SUPPORTED = "forward_kl, skew_kl, tvd, jsd:BETA with BETA < 1, skew_rkl:ALPHA with ALPHA > 0"


def resolve_topk(option: Optional[int], vocab_size: int) -> int:
    """The k stored: --teacher_cache_topk (default DEFAULT_TOPK), at most the vocabulary."""
    return min(int(option or DEFAULT_TOPK), int(vocab_size))


def divergence_conflict(spec: Optional[str]) -> Optional[str]:
    """Why the top-k cache cannot serve --kd_loss `spec`, or None."""
    from ted.method.divergences import DIVERGENCES
    from ted.registry import parse_spec

    spec = spec or "forward_kl"
    name, _ = parse_spec(spec, "divergence")
    resolved = DIVERGENCES.resolve(spec)
    finite = _FINITE.get(name)
    if finite is not None and finite(dict(resolved.keywords)):
        return None
    return (
        f"--kd_loss {spec} cannot be computed from the top-k cache of a causal-LM teacher, which gives probability "
        f"0 to every token outside its top k (the divergence would be infinite, or ted cannot tell); the cache "
        f"serves {SUPPORTED}"
    )


def top_log_probs(logits: torch.Tensor, rows: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows `rows` of [n, V] logits -> ([len(rows), k] float32 log-probabilities at temperature 1, int32 ids), most
    likely first; a chunk of rows at a time, so no float32 copy of all the rows' logits exists at once."""
    values = [torch.zeros((0, k), dtype=torch.float32, device=logits.device)]
    ids = [torch.zeros((0, k), dtype=torch.int32, device=logits.device)]
    for chunk in rows.split(default_chunk_tokens(logits.size(-1))):
        top = torch.log_softmax(logits.index_select(0, chunk).float(), dim=-1).topk(k, dim=-1)
        values.append(top.values)
        ids.append(top.indices.to(torch.int32))
    return torch.cat(values), torch.cat(ids)


def dense_teacher(values: torch.Tensor, ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """[B, T, k] log-probabilities and ids -> [B, T, V] teacher 'logits': the log-probabilities at their ids and
    FILL elsewhere, so softmax(. / T) is the teacher renormalised over its top k (float32; bfloat16 values stay
    bfloat16, which holds FILL, halving the tensor)."""
    dtype = torch.bfloat16 if values.dtype == torch.bfloat16 else torch.float32
    dense = torch.full((*values.shape[:-1], vocab_size), FILL, dtype=dtype, device=values.device)
    return dense.scatter_(-1, ids.long(), values.to(dtype))


def distilled_mask(kind: HeadKind, batch: dict[str, Any]) -> torch.Tensor:
    """[B, T] bool: the positions whose teacher signal a batch's loss reads (the kind's distilled positions)."""
    ids = batch["input_ids"]
    mask = batch.get("attention_mask")
    _, labels = kind.split_labels(batch)
    positions = kind.distilled_positions(mask, labels)
    if positions is None:
        return torch.ones(ids.shape, dtype=torch.bool, device=ids.device)
    return positions.bool()


def position_counts(dataset: datasets.Dataset, kind: HeadKind, collator: Collator, batch_size: int = 256) -> np.ndarray:
    """Distilled positions per row, through the run's collator (they depend on the labels it pads)."""
    counts = []
    for start in range(0, len(dataset), batch_size):
        rows = dataset.select(range(start, min(start + batch_size, len(dataset))))
        batch = collator([rows[i] for i in range(len(rows))])
        counts.append(distilled_mask(kind, batch).sum(dim=1).numpy())
    return np.concatenate(counts).astype(np.int64) if counts else np.zeros(0, np.int64)


def collated_batches(
    dataset: datasets.Dataset, collator: Collator, device: torch.device, batch_size: int, rank: int, world: int
) -> Any:
    """(row indices, the collated batch on `device`) for every `world`-th length-sorted batch: padded exactly as
    training pads (a causal LM's collator pads on the right, whatever the tokenizer's side)."""
    from ted.method.frozen_pass import length_sorted_batches

    for b, index in enumerate(length_sorted_batches(dataset, batch_size)):
        if b % world == rank:
            batch = collator([dataset[i] for i in index])
            yield index, {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def mean_mass(values: np.ndarray, dtype: str, rows: int = 1 << 16) -> Optional[dict[str, float]]:
    """The teacher's probability (temperature 1) inside its stored top k: mean and minimum over the positions."""
    if len(values) == 0:
        return None
    total, low = 0.0, 1.0
    for start in range(0, len(values), rows):
        part = torch.from_numpy(np.array(values[start : start + rows]))  # a writable copy of the mapped rows
        part = part.view(torch.bfloat16) if dtype == "bfloat16" else part
        mass = part.float().exp().sum(-1)
        total += float(mass.double().sum())
        low = min(low, float(mass.min()))
    return {"mean": round(total / len(values), 6), "min": round(low, 6)}


def check_topk_option(topk: Optional[int], kind: HeadKind) -> None:
    """--teacher_cache_topk only means something for a teacher whose output is a vocabulary."""
    if topk is not None and kind.teacher_cache_logits != "topk":
        raise TedInputError(
            f"--teacher_cache_topk {topk} applies to causal language model teachers (their next-token "
            f"distributions); the cache stores every logit of a {kind.name} teacher. Remove it."
        )
