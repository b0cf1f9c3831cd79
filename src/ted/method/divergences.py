"""The registered output divergences (`--kd_loss`) and layer-matching losses (`--layer_loss`).

Every divergence is `f(student_logits, teacher_logits, temperature, mask=None, **params) -> scalar` over the
last dim. Both distributions are softened by the temperature; the pointwise terms are summed over the kept
positions, divided by the batch size (`student_logits.size(0)`) and multiplied by T^2, exactly as
`ted.method.losses.kl_divergence` (that name is this function). The math is float32; the teacher is a constant
(detached). `mask` (1 = keep) is either the logits' shape (entries leave both softmaxes, as for SQuAD spans)
or their shape without the last dim (whole positions leave, as for tokens [B, T, V] with a [B, T] mask).

Every layer loss is `f(student_state, teacher_state, mask=None) -> scalar` on [..., D] states with an
optional [...] mask over positions: [B, C], [B, T, D] with [B, T], or flattened [N, D].

Mixtures such as m = beta * p_t + (1 - beta) * p_s are formed in log space (`logaddexp`), never by adding
probabilities and taking a log, so tiny probabilities keep their precision.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Optional

import torch
import torch.nn.functional as F

from ted.errors import TedInputError
from ted.registry import Registry

Divergence = Callable[..., torch.Tensor]
LayerLoss = Callable[..., torch.Tensor]

DIVERGENCES: Registry[Divergence] = Registry("divergence")
LAYER_LOSSES: Registry[LayerLoss] = Registry("layer loss")


# ------------------------------------------------------------------------------------------ parameter checks


def _check_unit(what: str, value: float, upper_open: bool, example: str) -> None:
    inside = 0.0 <= value < 1.0 if upper_open else 0.0 <= value <= 1.0
    if not inside:
        high = "1)" if upper_open else "1]"
        raise TedInputError(f"{what} must be in [0, {high}, got {value:g} (e.g. {example})")


def check_beta(beta: float = 0.5) -> None:
    _check_unit("jsd beta", beta, upper_open=False, example="jsd:0.5")


def check_alpha(alpha: float = 0.1) -> None:
    # alpha = 1 would compare a distribution with itself: the term would be 0 whatever the student does.
    _check_unit("skew_kl / skew_rkl alpha", alpha, upper_open=True, example="skew_kl:0.1")


# ------------------------------------------------------------------------------------------ shared steps


def _dropped(mask: Optional[torch.Tensor], logits: torch.Tensor) -> Optional[torch.Tensor]:
    """Where (True) entries leave the loss, broadcastable to the logits; None without a mask."""
    if mask is None:
        return None
    if mask.shape == logits.shape:
        return mask == 0
    if mask.shape == logits.shape[:-1]:
        return (mask == 0).unsqueeze(-1)
    raise ValueError(
        f"mask shape {tuple(mask.shape)} fits neither the logits {tuple(logits.shape)} "
        f"nor their positions {tuple(logits.shape[:-1])}"
    )


def _log_probs(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float, mask: Optional[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """(log p_s, log p_t, dropped): softened float32 log-probabilities, dropped entries pushed to ~ -inf."""
    s = student_logits.float() / temperature
    t = teacher_logits.detach().float() / temperature
    dropped = _dropped(mask, s)
    if dropped is not None:
        # A finite floor (not -inf) keeps every later difference finite; a fully dropped row becomes uniform
        # in both, whatever it held (even NaN padding), and is zeroed below.
        neg = torch.finfo(s.dtype).min
        s = s.masked_fill(dropped, neg)
        t = t.masked_fill(dropped, neg)
    return F.log_softmax(s, dim=-1), F.log_softmax(t, dim=-1), dropped


def _reduce(
    pointwise: torch.Tensor, dropped: Optional[torch.Tensor], batch_size: int, temperature: float
) -> torch.Tensor:
    """Sum over kept entries / batch size * T^2 (the convention of `losses.kl_divergence`)."""
    if dropped is not None:
        pointwise = pointwise.masked_fill(dropped, 0.0)
    return pointwise.sum() / batch_size * temperature**2


def _kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """Pointwise p * (log p - log q): KL(p || q) before the sum."""
    return log_p.exp() * (log_p - log_q)


def _mix(log_p: torch.Tensor, log_q: torch.Tensor, weight: float) -> torch.Tensor:
    """log(weight * p + (1 - weight) * q), in log space; the end points return an input unchanged."""
    if weight == 0.0:
        return log_q
    if weight == 1.0:
        return log_p
    return torch.logaddexp(log_p + math.log(weight), log_q + math.log1p(-weight))


# ------------------------------------------------------------------------------------------ divergences


def _softened(pointwise: Callable[..., torch.Tensor]) -> Divergence:
    """The divergence whose pointwise term is `pointwise(log_p_s, log_p_t, **params)`: soften both by the
    temperature, drop masked entries, sum, divide by the batch size, multiply by T^2."""

    def divergence(
        student_logits: torch.Tensor,
        teacher_logits: torch.Tensor,
        temperature: float,
        mask: Optional[torch.Tensor] = None,
        **params: float,
    ) -> torch.Tensor:
        log_p_s, log_p_t, dropped = _log_probs(student_logits, teacher_logits, temperature, mask)
        return _reduce(pointwise(log_p_s, log_p_t, **params), dropped, student_logits.size(0), temperature)

    divergence.__name__ = divergence.__qualname__ = pointwise.__name__
    divergence.__doc__ = pointwise.__doc__
    # The public signature: the divergence's arguments, then the pointwise term's parameters (a spec's numbers).
    params = [p for p in inspect.signature(pointwise).parameters.values() if p.kind is p.KEYWORD_ONLY]
    outer = [p for p in inspect.signature(divergence).parameters.values() if p.kind is not p.VAR_KEYWORD]
    divergence.__signature__ = inspect.Signature([*outer, *params], return_annotation=torch.Tensor)
    return divergence


@DIVERGENCES.register("forward_kl")
@_softened
def forward_kl(log_p_s: torch.Tensor, log_p_t: torch.Tensor) -> torch.Tensor:
    """T^2 KL(p_t || p_s): the paper's and Hinton's KD term (mean-seeking). The default."""
    return _kl(log_p_t, log_p_s)


@DIVERGENCES.register("reverse_kl")
@_softened
def reverse_kl(log_p_s: torch.Tensor, log_p_t: torch.Tensor) -> torch.Tensor:
    """T^2 KL(p_s || p_t) (mode-seeking, as in MiniLLM)."""
    return _kl(log_p_s, log_p_t)


@DIVERGENCES.register("jsd", check=check_beta)
@_softened
def jsd(log_p_s: torch.Tensor, log_p_t: torch.Tensor, *, beta: float = 0.5) -> torch.Tensor:
    """Generalized Jensen-Shannon divergence, in TRL's GKD convention.

    With m = beta * p_t + (1 - beta) * p_s: T^2 [beta KL(p_t || m) + (1 - beta) KL(p_s || m)] for
    0 < beta < 1 (beta = 0.5 is the ordinary JSD). The end points are defined as TRL defines them:
    beta = 0 is forward KL(p_t || p_s) and beta = 1 is reverse KL(p_s || p_t). (The mixture formula itself
    tends to 0 at both ends, so the loss jumps there: beta = 0.01 is close to 0, not to forward KL.)
    """
    check_beta(beta)
    if beta == 0.0:
        return _kl(log_p_t, log_p_s)
    if beta == 1.0:
        return _kl(log_p_s, log_p_t)
    log_m = _mix(log_p_t, log_p_s, beta)
    return beta * _kl(log_p_t, log_m) + (1.0 - beta) * _kl(log_p_s, log_m)


@DIVERGENCES.register("tvd")
@_softened
def tvd(log_p_s: torch.Tensor, log_p_t: torch.Tensor) -> torch.Tensor:
    """T^2 total variation distance, 1/2 sum |p_t - p_s| (symmetric, each position's value in [0, 1])."""
    return 0.5 * (log_p_t.exp() - log_p_s.exp()).abs()


@DIVERGENCES.register("skew_kl", check=check_alpha)
@_softened
def skew_kl(log_p_s: torch.Tensor, log_p_t: torch.Tensor, *, alpha: float = 0.1) -> torch.Tensor:
    """DistiLLM's skew KL: T^2 KL(p_t || alpha p_t + (1 - alpha) p_s); alpha = 0 is forward KL. 0 <= alpha < 1."""
    check_alpha(alpha)
    return _kl(log_p_t, _mix(log_p_t, log_p_s, alpha))


@DIVERGENCES.register("skew_rkl", check=check_alpha)
@_softened
def skew_rkl(log_p_s: torch.Tensor, log_p_t: torch.Tensor, *, alpha: float = 0.1) -> torch.Tensor:
    """DistiLLM's skew reverse KL: T^2 KL(p_s || alpha p_s + (1 - alpha) p_t); alpha = 0 is reverse KL."""
    check_alpha(alpha)
    return _kl(log_p_s, _mix(log_p_s, log_p_t, alpha))


# ------------------------------------------------------------------------------------------ layer losses


def _position_weights(mask: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
    if mask.shape != state.shape[:-1]:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match the positions {tuple(state.shape[:-1])}")
    return mask.to(state.dtype)


@LAYER_LOSSES.register("mse")
def mse(student_state: torch.Tensor, teacher_state: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mean squared difference per element; with a mask, over real positions only (also `losses.layer_mse`).

    The teacher state may be an inference tensor: here it is only subtracted or masked, never saved for
    backward as is.
    """
    student, teacher = student_state.float(), teacher_state.detach().float()
    if mask is None:
        return (student - teacher).pow(2).mean()
    weights = _position_weights(mask, student).unsqueeze(-1)
    # One fused mse_loss over masked states (mask is 0/1): fewer passes than sub -> pow -> mul -> sum.
    total = F.mse_loss(student * weights, teacher * weights, reduction="sum")
    return total / (weights.sum() * student.size(-1)).clamp_min(1.0)


@LAYER_LOSSES.register("cosine")
def cosine(
    student_state: torch.Tensor, teacher_state: torch.Tensor, mask: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Mean over (real) positions of 1 - cos(student, teacher): direction only, blind to scale."""
    # Normalising the teacher makes a new tensor, so an inference-mode teacher is never saved for backward.
    teacher_unit = F.normalize(teacher_state.detach().float(), dim=-1)
    distance = 1.0 - (F.normalize(student_state.float(), dim=-1) * teacher_unit).sum(-1)
    if mask is None:
        return distance.mean()
    weights = _position_weights(mask, distance.unsqueeze(-1))
    return (distance * weights).sum() / weights.sum().clamp_min(1.0)


@LAYER_LOSSES.register("nmse")
def nmse(student_state: torch.Tensor, teacher_state: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Normalised MSE: sum over (real) positions of ||s - t||^2 / sum over them of ||t||^2.

    Independent of the teacher's scale and width, so layers whose states differ in magnitude weigh alike.
    """
    student, teacher = student_state.float(), teacher_state.detach().float()
    error, energy = (student - teacher).pow(2).sum(-1), teacher.pow(2).sum(-1)
    if mask is not None:
        weights = _position_weights(mask, error.unsqueeze(-1))
        error, energy = error * weights, energy * weights
    # The floor only matters for an all-zero teacher (then the loss is the student's squared norm / 1e-12).
    return error.sum() / energy.sum().clamp_min(1e-12)
