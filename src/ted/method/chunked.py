"""Any registered divergence over tokens, computed chunk by chunk so [B, T, V] float32 temporaries never all live.

`chunked(divergence, student_logits, teacher_logits, temperature, mask, chunk_tokens=...)` returns what
`divergence(student_logits, teacher_logits, temperature, mask)` returns (value and gradient w.r.t. the
student logits), with the same convention: the pointwise terms summed over the scored positions, divided by
the batch size `student_logits.size(0)` (for tokens [B, T, V] that is B, the number of sequences, not the
number of tokens) and multiplied by T^2. The teacher is a constant.

How: only the scored positions (mask 1) are visited, `chunk_tokens` of them at a time, each chunk gathered
as [c, V] rows (so a non-contiguous view such as `logits[:, :-1]` is never copied whole). The forward keeps
no graph; the backward recomputes each chunk and writes its gradient into one tensor shaped like the
student logits (in their dtype). So besides the
inputs and that gradient, only one chunk's softened float32 temporaries are alive at any moment, instead of
several full [B, T, V] float32 tensors saved by autograd in the dense function.

Any divergence that keeps the registry's convention (linear in positions, divided by `size(0)`) works
through this unchanged, a user's registered one included: a chunk of c rows contributes
`divergence(chunk) * c / B`.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from ted.errors import TedInputError
from ted.method.divergences import Divergence

# Default chunk: about 2^22 vocabulary entries (16 MB per float32 temporary; a chunk's forward+backward holds
# about ten of them): 85 tokens for a 49,152-token vocabulary, 27 for Qwen's 151,936. Measured in
# docs/speed-and-scale.md (benchmarks/chunked_divergence.py): larger chunks are no faster on CPU.
CHUNK_ELEMENTS = 1 << 22


def default_chunk_tokens(vocab_size: int) -> int:
    """Tokens per chunk when none is given: about `CHUNK_ELEMENTS` vocabulary entries, at least 1."""
    return max(1, CHUNK_ELEMENTS // max(1, vocab_size))


def _positions(logits: torch.Tensor, mask: Optional[torch.Tensor]) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(the scored positions as a [K, dims - 1] index, the per-entry mask or None for a position mask)."""
    positions = logits.shape[:-1]
    if mask is None:
        return torch.ones(positions, dtype=torch.bool, device=logits.device).nonzero(), None
    if mask.shape == positions:
        return mask.ne(0).nonzero(), None
    if mask.shape == logits.shape:
        # A position with no kept entry contributes 0 (and no gradient) in the dense function: skip it.
        return mask.ne(0).any(-1).nonzero(), mask
    raise ValueError(
        f"mask shape {tuple(mask.shape)} fits neither the logits {tuple(logits.shape)} "
        f"nor their positions {tuple(positions)}"
    )


class _ChunkedDivergence(torch.autograd.Function):
    """Forward: the sum of the chunks' values, no graph. Backward: each chunk recomputed with its graph."""

    @staticmethod
    def forward(  # noqa: PLR0913 - autograd.Function passes everything positionally
        ctx: Any,
        student: torch.Tensor,
        teacher: torch.Tensor,
        divergence: Divergence,
        temperature: float,
        chunks: tuple[tuple[torch.Tensor, ...], ...],
        entry_mask: Optional[torch.Tensor],
    ) -> torch.Tensor:
        ctx.divergence, ctx.temperature, ctx.chunks = divergence, temperature, chunks
        ctx.save_for_backward(student, teacher, entry_mask)
        total = torch.zeros((), dtype=torch.float32, device=student.device)
        for index in chunks:
            total = total + _chunk_value(divergence, student[index], teacher, temperature, index, entry_mask)
        return total / student.size(0)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[Optional[torch.Tensor], ...]:
        student, teacher, entry_mask = ctx.saved_tensors
        grad = torch.zeros_like(student)
        scale = grad_output / student.size(0)
        for index in ctx.chunks:
            with torch.enable_grad():
                rows = student[index].detach().requires_grad_(True)
                value = _chunk_value(ctx.divergence, rows, teacher, ctx.temperature, index, entry_mask)
                (rows_grad,) = torch.autograd.grad(value, rows, scale)
            grad.index_put_(index, rows_grad)
        return grad, None, None, None, None, None


def _chunk_value(
    divergence: Divergence,
    student_rows: torch.Tensor,
    teacher: torch.Tensor,
    temperature: float,
    index: tuple[torch.Tensor, ...],
    entry_mask: Optional[torch.Tensor],
) -> torch.Tensor:
    """One chunk's sum (before the division by B): the divergence over its c rows (which divides by c) * c."""
    mask = None if entry_mask is None else entry_mask[index]
    return divergence(student_rows, teacher[index], temperature, mask) * student_rows.size(0)


def chunked(
    divergence: Divergence,
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float,
    mask: Optional[torch.Tensor] = None,
    chunk_tokens: Optional[int] = None,
) -> torch.Tensor:
    """`divergence(student_logits, teacher_logits, temperature, mask)`, computed `chunk_tokens` positions at a
    time (default: `default_chunk_tokens(V)`); the float32 scalar and its gradient equal the dense ones.

    `divergence` is a registered divergence or a resolved spec (`DIVERGENCES.resolve("jsd:0.3")`); `mask` is
    [B, T] (1 = scored position) or the logits' shape (per entry), as for the dense function.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} "
            "differ in shape"
        )
    if student_logits.dim() < 2:
        raise ValueError(f"logits need a batch and a vocabulary dim, got shape {tuple(student_logits.shape)}")
    vocab = student_logits.size(-1)
    if chunk_tokens is None:
        chunk_tokens = default_chunk_tokens(vocab)
    if isinstance(chunk_tokens, bool) or not isinstance(chunk_tokens, int) or chunk_tokens < 1:
        raise TedInputError(f"chunk_tokens must be a positive whole number of tokens, got {chunk_tokens!r}")
    positions, entry_mask = _positions(student_logits, mask)
    # `split` of an empty index still gives one empty part: no chunk at all when nothing is scored.
    chunks = tuple(tuple(part.unbind(1)) for part in positions.split(chunk_tokens) if len(part))
    return _ChunkedDivergence.apply(
        student_logits, teacher_logits.detach(), divergence, temperature, chunks, entry_mask
    )
