"""What each stage trains and how its loss is computed.

Every stage is (a module to train, an objective). An objective maps (module, batch) to
(total loss, named loss terms, predictions). The one Trainer subclass in training.py runs all of them.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from ted.method.divergences import DIVERGENCES, LAYER_LOSSES
from ted.method.filters import TaskAwareFilters
from ted.method.heads import StageOneHeads
from ted.method.kinds import get_kind
from ted.method.teacher_cache.collate import strip_batch_keys


def split_labels(head: str, inputs: dict) -> tuple[dict, object]:
    """Model inputs without the labels, and the labels (a tensor, or (start, end) for spans)."""
    return get_kind(head).split_labels(inputs)


def unwrap(model: nn.Module) -> nn.Module:
    """The module itself under a DDP (or similar `.module`) wrapper, to read attributes such as `.filters`."""
    while isinstance(getattr(model, "module", None), nn.Module):
        model = model.module
    return model


def real_tokens(hidden_states, layers: list[int], token_index: torch.Tensor) -> dict[int, torch.Tensor]:
    """The selected layers' hidden states at the real tokens only, flattened to [tokens, hidden].

    Keyed like HF hidden states (layer i -> i + 1), so position-wise filters read them unchanged.
    """
    return {i + 1: hidden_states[i + 1].flatten(0, 1).index_select(0, token_index) for i in layers}


def stack_predictions(head: str, outputs) -> torch.Tensor:
    """Predictions in one tensor for the Trainer to gather: logits, or [B, T, 2] start/end for spans."""
    return get_kind(head).stack(outputs)


class TaskObjective:
    """Stage 0 (fine-tuning) and evaluation: the model's own head against the gold labels."""

    # --label_smoothing_factor, set by TedTrainer (the Trainer's own label smoother never sees our loss).
    label_smoothing: float = 0.0

    def __init__(self, head: str):
        self.head = head
        self.kind = get_kind(head)

    def __call__(self, model, inputs):
        model_inputs, labels = self.kind.split_labels(inputs)
        preds = self.kind.predictions(model(**model_inputs))
        loss = self.kind.task_loss(preds, labels, self.label_smoothing) if labels is not None else None
        return loss, {}, self.kind.stack(preds)


class FilterLearner(nn.Module):
    """Stage I module: a frozen backbone, trainable filters and one head per filter."""

    def __init__(
        self, backbone: nn.Module, filters: TaskAwareFilters, heads: StageOneHeads, backbone_mode: str = "train"
    ):
        super().__init__()
        if backbone_mode not in ("train", "eval"):
            raise ValueError(f"backbone_mode must be 'train' or 'eval', got {backbone_mode!r}")
        self.backbone = backbone
        self.filters = filters
        self.heads = heads
        self.backbone_mode = backbone_mode
        self.backbone.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        # The paper keeps dropout on inside the frozen backbone; "eval" turns it off.
        self.backbone.train(mode and self.backbone_mode == "train")
        return self

    def forward(self, **inputs) -> list[torch.Tensor]:
        with torch.no_grad():
            hidden = self.backbone(**inputs, output_hidden_states=True).hidden_states
        return self.heads(self.filters(hidden))


class CachedFilterLearner(nn.Module):
    """Stage I on cached features: the filters and heads alone, fed token 0 of each selected layer.

    With the frozen backbone in eval mode the classification / regression heads only read token 0 of each
    filter's output, and a filter is position-wise, so `features` [B, K, hidden] (token 0 of the K selected
    layers' hidden states, computed once, see `ted.method.feature_cache`) give exactly the logits of a `FilterLearner`
    in "eval" mode, without running the backbone every epoch.
    """

    def __init__(self, filters: TaskAwareFilters, heads: StageOneHeads):
        super().__init__()
        self.filters = filters
        self.heads = heads

    def forward(self, features: torch.Tensor) -> list[torch.Tensor]:
        features = features.to(self.heads.filter_head[0].weight.dtype)
        # Indexed like HF hidden states (layer i -> i + 1), one position each: what the heads read.
        hidden = {layer + 1: features[:, k : k + 1] for k, layer in enumerate(self.filters.layers)}
        return self.heads(self.filters(hidden))


class FilterObjective:
    """Stage I loss: the mean over filters of each head's task loss."""

    label_smoothing: float = 0.0

    def __init__(self, head: str):
        self.head = head
        self.kind = get_kind(head)

    def __call__(self, model: FilterLearner, inputs):
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


class DistillStudent(nn.Module):
    """Stage II module: the student model and, for TED / LWD, its filters or projector."""

    def __init__(self, model: nn.Module, filters: Optional[TaskAwareFilters]):
        super().__init__()
        self.model = model
        self.filters = filters

    # --gradient_checkpointing: the Trainer asks the trained module; the student's layers are what is
    # recomputed (the filters are tiny). Newer transformers call it activation checkpointing.
    def activation_checkpointing_enable(self, **kwargs):
        self.model.activation_checkpointing_enable(**kwargs)

    def gradient_checkpointing_enable(self, **kwargs):
        self.model.gradient_checkpointing_enable(**kwargs)

    def forward(self, with_states: bool = False, token_index: Optional[torch.Tensor] = None, **inputs):
        """`token_index` (flat indices of the real tokens): filter only those, see `DistillObjective`."""
        inputs = strip_batch_keys(inputs)  # the cached teacher signal rides in the batch (ted.method.teacher_cache)
        outputs = self.model(**inputs, output_hidden_states=with_states)
        states = None
        if with_states and self.filters is not None:
            hidden = outputs.hidden_states
            if token_index is not None:
                hidden = real_tokens(hidden, self.filters.layers, token_index)
            states = self.filters(hidden)
        return outputs, states


class Teacher:
    """The frozen teacher: eval mode, no gradients, never wrapped for DDP, never saved with the student."""

    def __init__(self, model: nn.Module, filters: Optional[TaskAwareFilters], layers: list[int], head: str):
        self.model = model.eval().requires_grad_(False)
        self.filters = filters.eval().requires_grad_(False) if filters is not None else None
        self.layers = layers
        self.head = head
        self.kind = get_kind(head)
        # Set by TedTrainer from --bf16 / --fp16: the teacher is not prepared by accelerate, so it would
        # otherwise run in full precision while the student runs under autocast.
        self.autocast_dtype: Optional[torch.dtype] = None
        self.device_type = "cpu"

    def to(self, device):
        self.model.to(device)
        if self.filters is not None:
            self.filters.to(device)
        self.device_type = torch.device(device).type
        return self

    def autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.autocast_dtype)

    def __call__(self, inputs: dict, with_states: bool, token_index: Optional[torch.Tensor] = None):
        # Only what the loss reads: logits, and the selected layers (filtered) when there is a layer term.
        with torch.inference_mode(), self.autocast():
            outputs = self.model(**inputs, output_hidden_states=with_states)
            preds = self.kind.predictions(outputs)
            states = None
            if with_states:
                hidden = outputs.hidden_states
                if token_index is not None:
                    hidden = real_tokens(hidden, self.layers, token_index)
                states = self.filters(hidden) if self.filters is not None else [hidden[i + 1] for i in self.layers]
        # Inference tensors cannot be saved for backward; a clone outside inference mode can. The logits are
        # small; the layer states are not cloned: the layer losses never save them for backward (they mask
        # them or subtract them outside inference mode first, which makes ordinary tensors).
        preds = tuple(p.clone() for p in preds) if isinstance(preds, tuple) else preds.clone()
        return preds, states


@dataclass
class DistillWeights:
    kl_alpha: float
    mse_alpha: float
    temperature: float = 2.0
    paper_compat: bool = False
    # --balance_losses: each term that is on gets weight ratio * task loss / term, measured on the first
    # training batch (or on every batch with every_step); kl_alpha / mse_alpha then only switch terms on.
    balance: bool = False
    kl_ratio: float = 1.0
    mse_ratio: float = 1.0
    every_step: bool = False
    kd_loss: str = "forward_kl"  # --kd_loss: a spec of ted.method.divergences.DIVERGENCES
    layer_loss: str = "mse"  # --layer_loss: a spec of ted.method.divergences.LAYER_LOSSES

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

    def __init__(self, head: str, teacher: Teacher, weights: DistillWeights):
        self.head = head
        self.kind = get_kind(head)
        self.teacher = teacher
        self.w = weights
        self.divergence = DIVERGENCES.resolve(weights.kd_loss)
        self.layer_loss = LAYER_LOSSES.resolve(weights.layer_loss)
        self.balanced: dict[str, float] = {}  # --balance_losses: the weights fixed on the first batch
        self.step0: dict[str, float] = {}  # ... and the raw terms they came from

    def weight(self, name: str, term: torch.Tensor, task_loss: torch.Tensor, terms: dict):
        """The weight of distillation term `name` (kl or mse) for this batch."""
        if not self.w.balance:
            return self.w.alpha(name)
        if self.w.every_step:  # stays on the device: no host sync per step
            ratio = self.w.ratio(name) * task_loss.detach() / term.detach().clamp_min(1e-12)
            terms[f"weight_{name}"] = ratio
            return ratio
        if name not in self.balanced:  # one host read of two scalars, on the first training batch only
            task0, term0 = float(task_loss.detach()), float(term.detach())
            found = balanced_alpha(self.w.ratio(name), task0, term0)
            self.balanced[name] = self.w.alpha(name) if found is None else found
            self.step0.update({"pred": task0, name: term0})
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
        mode = "every_step" if self.w.every_step else "step0"
        ratios = {n: self.w.ratio(n) for n in ("kl", "mse") if self.w.alpha(n)}
        return {"mode": mode, "ratios": ratios, "alphas": dict(self.balanced), "step0_terms": dict(self.step0)}

    def kd_term(self, s_preds, t_preds, attention_mask) -> torch.Tensor:
        return self.kind.output_distillation(
            s_preds,
            t_preds,
            temperature=self.w.temperature,
            attention_mask=attention_mask,
            paper_compat=self.w.paper_compat,
            divergence=self.divergence,
        )

    def __call__(self, model: DistillStudent, inputs):
        model_inputs, labels = self.kind.split_labels(inputs)
        if not model.training:  # evaluation scores the student's own head only
            s_preds = self.kind.predictions(model(**model_inputs)[0])
            loss = self.kind.task_loss(s_preds, labels, self.label_smoothing) if labels is not None else None
            return loss, {}, self.kind.stack(s_preds)
        need_states = self.w.mse_alpha > 0
        mask = None if self.w.paper_compat else model_inputs.get("attention_mask")
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
            terms["kl"] = self.kd_term(s_preds, t_preds, model_inputs.get("attention_mask"))
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
