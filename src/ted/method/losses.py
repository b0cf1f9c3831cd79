"""Small pure loss functions. Teacher tensors are always treated as constants (detached)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

# The paper's two distillation terms, under the names they had here; one implementation, in the registry.
from ted.method.divergences import forward_kl as kl_divergence
from ted.method.divergences import mse as layer_mse  # noqa: F401  (re-exported: ted.method.losses.layer_mse)


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy over examples with a label >= 0 (negative labels are dropped, as DeBERTa does).

    `label_smoothing` (--label_smoothing_factor) mixes the one-hot target with the uniform distribution,
    as the Trainer's own label smoother does."""
    labels = labels.view(-1).long()
    keep = labels >= 0
    # Sum over kept rows / their count, with no boolean indexing and no branch on a tensor value: no host-device
    # synchronisation per step. An all-ignored batch gives 0, still connected to the graph, so backward works
    # (a crash in the paper's code).
    total = F.cross_entropy(
        logits.view(labels.shape[0], -1).float(),
        labels.masked_fill(~keep, -100),
        ignore_index=-100,
        reduction="sum",
        label_smoothing=label_smoothing,
    )
    return total / keep.sum().clamp_min(1)


def regression_loss(predictions: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(predictions.view(-1).float(), labels.view(-1).float())


def span_loss(
    start_logits: torch.Tensor,
    end_logits: torch.Tensor,
    start_positions: torch.Tensor,
    end_positions: torch.Tensor,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """(CE(start) + CE(end)) / 2; positions beyond the sequence are clamped to its length and ignored."""
    length = start_logits.size(1)
    start = start_positions.view(-1).clamp(0, length)
    end = end_positions.view(-1).clamp(0, length)
    return (
        F.cross_entropy(start_logits.float(), start, ignore_index=length, label_smoothing=label_smoothing)
        + F.cross_entropy(end_logits.float(), end, ignore_index=length, label_smoothing=label_smoothing)
    ) / 2


def regression_distillation(student_predictions: torch.Tensor, teacher_predictions: torch.Tensor) -> torch.Tensor:
    """Principled regression KD: MSE between the student's and the teacher's predictions."""
    return F.mse_loss(student_predictions.view(-1).float(), teacher_predictions.detach().view(-1).float())


def regression_kl_paper(
    student_predictions: torch.Tensor, teacher_predictions: torch.Tensor, temperature: float
) -> torch.Tensor:
    """The original code's regression KL: a softmax across the batch of flattened predictions."""
    return kl_divergence(student_predictions.view(-1), teacher_predictions.view(-1), temperature)


def next_token_targets(labels: torch.Tensor) -> torch.Tensor:
    """Labels [B, T] shifted left by one, -100 at the end: position t of the logits predicts targets[:, t].

    Shifting the labels instead of slicing the logits leaves the [B, T, V] logits uncopied (as transformers'
    ForCausalLMLoss does)."""
    return F.pad(labels, (0, 1), value=-100)[:, 1:]


def next_token_loss(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Causal-LM cross-entropy: the mean over scored next tokens (labels -100 are not scored) of -log p.

    A batch with no scored token gives 0, still connected to the graph."""
    targets = next_token_targets(labels).reshape(-1)
    total = F.cross_entropy(
        logits.reshape(-1, logits.size(-1)).float(),
        targets,
        ignore_index=-100,
        reduction="sum",
        label_smoothing=label_smoothing,
    )
    return total / (targets != -100).sum().clamp_min(1)


def next_token_nll_per_row(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[B, 2]: each row's summed next-token negative log-likelihood and its number of scored tokens (float32).

    What perplexity is computed from: exp(sum of NLL / sum of tokens) over a whole dev set, exactly, whatever
    the batching or the rows' lengths."""
    targets = next_token_targets(labels)
    # Over the last dim of [B * T, V]: cross_entropy over dim 1 of a transposed [B, V, T] view is measurably less
    # accurate (2.8e-4 per token against float64 on SmolLM2's 49,152-entry vocabulary, vs 1.7e-5 this way).
    flat = logits.reshape(-1, logits.size(-1)).float()
    nll = F.cross_entropy(flat, targets.reshape(-1), ignore_index=-100, reduction="none").view(targets.shape)
    return torch.stack([nll.sum(dim=1), (targets != -100).sum(dim=1).float()], dim=1)
