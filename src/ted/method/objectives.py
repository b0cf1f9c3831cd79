"""How each stage's loss is computed: the objectives that map (module, batch) to loss, terms and predictions.

Every stage is (a module to train, an objective). An objective maps (module, batch) to
(total loss, named loss terms, predictions). The one Trainer subclass in training.py runs all of them.
The modules live in `ted.method.modules`; their names are importable from here too, as before.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Union

import torch
from torch import nn

from ted.method.divergences import DIVERGENCES, LAYER_LOSSES
from ted.method.kinds import OutputKD, get_kind

# The stages' modules, importable from here as before.
from ted.method.modules import (  # noqa: F401
    CachedFilterLearner,
    DistillStudent,
    FilterLearner,
    Teacher,
    real_tokens,
    unwrap,
)

if TYPE_CHECKING:
    from ted.method.kinds import HeadKind, Predictions

# (total loss or None without labels, named loss terms, predictions stacked for the Trainer)
ObjectiveOutput = tuple[Optional[torch.Tensor], dict[str, torch.Tensor], torch.Tensor]


def split_labels(head: str, inputs: dict) -> tuple[dict, object]:
    """Model inputs without the labels, and the labels (a tensor, or (start, end) for spans)."""
    return get_kind(head).split_labels(inputs)


def stack_predictions(head: str, outputs: Predictions) -> torch.Tensor:
    """Predictions in one tensor for the Trainer to gather: logits, or [B, T, 2] start/end for spans."""
    return get_kind(head).stack(outputs)


def evaluated(kind: HeadKind, model: nn.Module, preds: Predictions, labels: object) -> torch.Tensor:
    """The predictions an objective returns: stacked while training (the Trainer drops them), what the kind's
    metrics read when evaluating a labelled batch (a causal LM: per-row NLL sums, not [B, T, V] logits)."""
    if model.training or labels is None:
        return kind.stack(preds)
    return kind.metric_inputs(preds, labels)


class TaskObjective:
    """Stage 0 (fine-tuning) and evaluation: the model's own head against the gold labels."""

    # --label_smoothing_factor, set by TedTrainer (the Trainer's own label smoother never sees our loss).
    label_smoothing: float = 0.0

    def __init__(self, head: str) -> None:
        self.head = head
        self.kind = get_kind(head)

    def __call__(self, model: nn.Module, inputs: dict[str, torch.Tensor]) -> ObjectiveOutput:
        model_inputs, labels = self.kind.split_labels(inputs)
        preds = self.kind.predictions(model(**model_inputs))
        loss = self.kind.task_loss(preds, labels, self.label_smoothing) if labels is not None else None
        return loss, {}, evaluated(self.kind, model, preds, labels)


class FilterObjective:
    """Stage I loss: the mean over filters of each head's task loss."""

    label_smoothing: float = 0.0

    def __init__(self, head: str) -> None:
        self.head = head
        self.kind = get_kind(head)

    def __call__(self, model: FilterLearner, inputs: dict[str, torch.Tensor]) -> ObjectiveOutput:
        model_inputs, labels = self.kind.split_labels(inputs)
        per_head = [self.kind.unstack(logits) for logits in model(**model_inputs)]  # heads return stacked logits
        terms, loss = {}, None
        if labels is not None:
            head_losses = [self.kind.task_loss(out, labels, self.label_smoothing) for out in per_head]
            loss = torch.stack(head_losses).mean()
            layers = unwrap(model).filters.layers
            terms = {f"filter_layer{layer}": value for layer, value in zip(layers, head_losses)}
        preds = torch.stack([self.kind.stack(out) for out in per_head], dim=1)
        return loss, terms, preds


@dataclass
class DistillWeights:
    kl_alpha: float
    mse_alpha: float
    temperature: float = 2.0
    paper_compat: bool = False
    # --balance_losses: each term that is on gets weight ratio * task loss / term, from their means over the
    # first `balance_batches` training batches (or on every batch with every_step); kl_alpha / mse_alpha then
    # only switch terms on.
    balance: bool = False
    kl_ratio: float = 1.0
    mse_ratio: float = 1.0
    every_step: bool = False
    balance_batches: int = 8
    kd_loss: str = "forward_kl"  # --kd_loss: a spec of ted.method.divergences.DIVERGENCES
    layer_loss: str = "mse"  # --layer_loss: a spec of ted.method.divergences.LAYER_LOSSES
    vocab_size: Optional[int] = None  # causal LMs with differently padded heads: OutputKD.vocab_size

    def alpha(self, name: str) -> float:
        return self.kl_alpha if name == "kl" else self.mse_alpha

    def ratio(self, name: str) -> float:
        return self.kl_ratio if name == "kl" else self.mse_ratio


def balanced_alpha(ratio: float, task_loss: float, term: float) -> Optional[float]:
    """The weight that makes `weight * term == ratio * task_loss`; None when the term is 0 (nothing to scale)."""
    return ratio * task_loss / term if term > 0 else None


class DistillObjective:
    """Stage II loss: task + kl_alpha * T^2 KL + mse_alpha * mean over matched layers of the MSE."""

    label_smoothing: float = 0.0

    def __init__(self, head: str, teacher: Teacher, weights: DistillWeights) -> None:
        self.head = head
        self.kind = get_kind(head)
        self.teacher = teacher
        self.w = weights
        self.output_kd = OutputKD(
            weights.temperature, weights.paper_compat, DIVERGENCES.resolve(weights.kd_loss), weights.vocab_size
        )
        self.layer_loss = LAYER_LOSSES.resolve(weights.layer_loss)
        self.balanced: dict[str, float] = {}  # --balance_losses: each term's weight (fixed after the window)
        self._window: dict[str, list[float]] = {}  # ... and per term: sums of task loss and term, batches seen

    def weight(
        self, name: str, term: torch.Tensor, task_loss: torch.Tensor, terms: dict[str, torch.Tensor]
    ) -> Union[float, torch.Tensor]:
        """The weight of distillation term `name` (kl or mse) for this batch."""
        if not self.w.balance:
            return self.w.alpha(name)
        if self.w.every_step:  # stays on the device: no host sync per step
            ratio = self.w.ratio(name) * task_loss.detach() / term.detach().clamp_min(1e-12)
            terms[f"weight_{name}"] = ratio
            return ratio
        window = self._window.setdefault(name, [0.0, 0.0, 0])
        if window[2] < self.w.balance_batches:  # one host read of two scalars a batch, in the window only
            # One batch can be far from typical (a fine-tuned student's task loss on an easy batch, say), so the
            # weight is the ratio of the means so far and is fixed once the window is full.
            window[0] += float(task_loss.detach())
            window[1] += float(term.detach())
            window[2] += 1
            found = balanced_alpha(self.w.ratio(name), window[0], window[1])
            self.balanced[name] = self.w.alpha(name) if found is None else found
        return self.balanced[name]

    def weighted_terms(self, averages: dict[str, float]) -> dict[str, float]:
        """Logged term means -> each distillation term times its weight (for the training guard)."""
        out = {}
        for name in ("kl", "mse"):
            if name in averages:
                weight = averages.get(f"weight_{name}", self.balanced.get(name, self.w.alpha(name)))
                out[name] = weight * averages[name]
        return out

    def balance_record(self) -> Optional[dict]:
        """What --balance_losses chose, for ted_stage.json."""
        if not self.w.balance:
            return None
        ratios = {n: self.w.ratio(n) for n in ("kl", "mse") if self.w.alpha(n)}
        if self.w.every_step:
            return {"mode": "every_step", "ratios": ratios}
        seen = {name: w for name, w in self._window.items() if w[2]}
        first = next(iter(seen.values()), None)  # every term's window saw the same task losses
        means = {"pred": first[0] / first[2]} if first else {}
        means.update({name: w[1] / w[2] for name, w in seen.items()})
        return {"mode": "first_batches", "batches": int(first[2]) if first else 0, "ratios": ratios,
                "alphas": dict(self.balanced), "mean_terms": means}  # fmt: skip

    def kd_term(
        self,
        s_preds: Predictions,
        t_preds: Predictions,
        attention_mask: Optional[torch.Tensor],
        labels: object = None,
    ) -> torch.Tensor:
        return self.kind.output_distillation(s_preds, t_preds, attention_mask, self.output_kd, labels=labels)

    def __call__(self, model: DistillStudent, inputs: dict[str, torch.Tensor]) -> ObjectiveOutput:
        model_inputs, labels = self.kind.split_labels(inputs)
        if not model.training:  # evaluation scores the student's own head only
            s_preds = self.kind.predictions(model(**model_inputs)[0])
            loss = self.kind.task_loss(s_preds, labels, self.label_smoothing) if labels is not None else None
            return loss, {}, evaluated(self.kind, model, s_preds, labels)
        need_states = self.w.mse_alpha > 0
        # The layer term's positions: the real tokens (a causal LM: those whose next token is scored).
        mask = None
        if not self.w.paper_compat:
            mask = self.kind.distilled_positions(model_inputs.get("attention_mask"), labels)
        token_index = None
        if need_states and mask is not None and mask.device.type == "cpu":
            # The layer MSE reads real tokens only, and filters are position-wise: on CPU, filter just those
            # (padding is often 30-50% of a batch). On accelerators the data-dependent gather would need a
            # host-device sync every step (nonzero), so there the filters run on every position and the MSE
            # is masked instead; both give the same loss.
            token_index = mask.flatten().nonzero().squeeze(1)
        # Teacher first: its activations are freed before the student's forward keeps its own for the
        # backward (lower peak memory, measurably faster on CPU); the teacher draws no random numbers.
        t_preds, t_states = self.teacher(model_inputs, with_states=need_states, token_index=token_index)
        s_out, s_states = model(with_states=need_states, token_index=token_index, **model_inputs)
        s_preds = self.kind.predictions(s_out)
        terms = {"pred": self.kind.task_loss(s_preds, labels, self.label_smoothing)}
        total = terms["pred"]
        if self.w.kl_alpha:
            terms["kl"] = self.kd_term(s_preds, t_preds, model_inputs.get("attention_mask"), labels)
            total = total + self.weight("kl", terms["kl"], terms["pred"], terms) * terms["kl"]
        if need_states:
            if token_index is not None:
                mask = None  # the states hold real tokens only
            per_layer = [self.layer_loss(s, t, mask) for s, t in zip(s_states, t_states, strict=True)]
            terms["mse"] = torch.stack(per_layer).mean()
            for layer, value in zip(unwrap(model).filters.layers, per_layer):
                terms[f"mse_layer{layer}"] = value
            total = total + self.weight("mse", terms["mse"], terms["pred"], terms) * terms["mse"]
        return total, terms, self.kind.stack(s_preds)
