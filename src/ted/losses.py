"""Small pure loss functions. Teacher tensors are always treated as constants (detached)."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


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


def kl_divergence(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float, mask: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """T^2 * KL(softmax(t / T) || softmax(s / T)) over the last dim, summed, divided by the batch size.

    `mask` (same shape as the logits, 1 = keep) removes positions from both softmaxes.
    """
    s = student_logits.float() / temperature
    t = teacher_logits.detach().float() / temperature
    if mask is not None:
        neg = torch.finfo(s.dtype).min
        s = s.masked_fill(mask == 0, neg)
        t = t.masked_fill(mask == 0, neg)
    log_p_s = F.log_softmax(s, dim=-1)
    log_p_t = F.log_softmax(t, dim=-1)
    pointwise = log_p_t.exp() * (log_p_t - log_p_s)
    if mask is not None:
        pointwise = pointwise.masked_fill(mask == 0, 0.0)
    return pointwise.sum() / student_logits.size(0) * temperature**2


def regression_distillation(student_predictions: torch.Tensor, teacher_predictions: torch.Tensor) -> torch.Tensor:
    """Principled regression KD: MSE between the student's and the teacher's predictions."""
    return F.mse_loss(student_predictions.view(-1).float(), teacher_predictions.detach().view(-1).float())


def regression_kl_paper(
    student_predictions: torch.Tensor, teacher_predictions: torch.Tensor, temperature: float
) -> torch.Tensor:
    """The original code's regression KL: a softmax across the batch of flattened predictions."""
    return kl_divergence(student_predictions.view(-1), teacher_predictions.view(-1), temperature)


def layer_mse(
    student_state: torch.Tensor, teacher_state: torch.Tensor, attention_mask: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Mean squared difference per element; with a mask, over real tokens only.

    The teacher state may be an inference tensor (the teacher runs under `torch.inference_mode()`): it is
    only ever subtracted or masked here, never saved for backward as is.
    """
    student, teacher = student_state.float(), teacher_state.detach().float()
    if attention_mask is None:
        return (student - teacher).pow(2).mean()
    mask = attention_mask.to(student.dtype).unsqueeze(-1)
    # sum(mask * (s - t)^2) as one fused mse_loss over masked states (mask is 0/1): fewer passes than
    # sub -> pow -> mul -> sum, forward and backward.
    total = F.mse_loss(student * mask, teacher * mask, reduction="sum")
    return total / (mask.sum() * student.size(-1)).clamp_min(1.0)
