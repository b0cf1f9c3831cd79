"""What each stage trains: the modules behind the objectives (Stage I learners, the Stage II student and teacher).

Stage I trains filters and heads on a frozen backbone (`FilterLearner`) or on its cached features
(`CachedFilterLearner`); Stage II trains a `DistillStudent` against a frozen `Teacher` that is never wrapped
for DDP nor saved with the student. Their losses live in `ted.method.objectives`.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Optional, Union

import torch
from torch import nn

from ted.method.filters import TaskAwareFilters
from ted.method.heads import StageOneHeads
from ted.method.kinds import get_kind
from ted.method.layer_hooks import LayerTaps
from ted.method.teacher_cache.collate import strip_batch_keys
from ted.method.tied import TiedWeights

if TYPE_CHECKING:
    from transformers.utils import ModelOutput

    from ted.method.kinds import Predictions


def unwrap(model: nn.Module) -> nn.Module:
    """The module itself under a DDP (or similar `.module`) wrapper, to read attributes such as `.filters`."""
    while isinstance(getattr(model, "module", None), nn.Module):
        model = model.module
    return model


def real_tokens(
    hidden_states: tuple[torch.Tensor, ...], layers: list[int], token_index: torch.Tensor
) -> dict[int, torch.Tensor]:
    """The selected layers' hidden states at the real tokens only, flattened to [tokens, hidden].

    Keyed like HF hidden states (layer i -> i + 1), so position-wise filters read them unchanged.
    """
    return {i + 1: hidden_states[i + 1].flatten(0, 1).index_select(0, token_index) for i in layers}


class FilterLearner(nn.Module):
    """Stage I module: a frozen backbone, trainable filters and one head per filter."""

    def __init__(
        self, backbone: nn.Module, filters: TaskAwareFilters, heads: StageOneHeads, backbone_mode: str = "train"
    ) -> None:
        super().__init__()
        if backbone_mode not in ("train", "eval"):
            raise ValueError(f"backbone_mode must be 'train' or 'eval', got {backbone_mode!r}")
        self.backbone = backbone
        self.filters = filters
        self.heads = heads
        self.backbone_mode = backbone_mode
        self.backbone.requires_grad_(False)

    def train(self, mode: bool = True) -> FilterLearner:
        super().train(mode)
        # The paper keeps dropout on inside the frozen backbone; "eval" turns it off.
        self.backbone.train(mode and self.backbone_mode == "train")
        return self

    def forward(self, **inputs: torch.Tensor) -> list[torch.Tensor]:
        with torch.no_grad():
            hidden = self.backbone(**inputs, output_hidden_states=True).hidden_states
        # The mask: a decoder's sequence-level heads read each row's last real token (ted.method.pooling).
        return self.heads(self.filters(hidden), inputs.get("attention_mask"))


class CachedFilterLearner(nn.Module):
    """Stage I on cached features: the filters and heads alone, fed the pooled token of each selected layer.

    With the frozen backbone in eval mode the classification / regression heads only read one token of each
    filter's output (token 0, or a decoder's last real token: ted.method.pooling), and a filter is position-wise, so
    `features` [B, K, hidden] (that token of the K selected layers' hidden states, computed once, see
    `ted.method.feature_cache`) give exactly the logits of a `FilterLearner` in "eval" mode, without running the
    backbone every epoch.
    """

    def __init__(self, filters: TaskAwareFilters, heads: StageOneHeads) -> None:
        super().__init__()
        self.filters = filters
        self.heads = heads

    def forward(self, features: torch.Tensor) -> list[torch.Tensor]:
        features = features.to(self.heads.filter_head[0].weight.dtype)
        # Indexed like HF hidden states (layer i -> i + 1), one position each: what the heads read.
        hidden = {layer + 1: features[:, k : k + 1] for k, layer in enumerate(self.filters.layers)}
        return self.heads(self.filters(hidden))


class DistillStudent(TiedWeights):
    """Stage II module: the student model and, for TED / LWD, its filters or projector (a tied LM head saved
    once: `TiedWeights`)."""

    def __init__(self, model: nn.Module, filters: Optional[TaskAwareFilters]) -> None:
        super().__init__()
        self.model = model
        self.filters = filters

    # --gradient_checkpointing: the Trainer asks the trained module; the student's layers are what is
    # recomputed (the filters are tiny). Newer transformers call it activation checkpointing.
    def activation_checkpointing_enable(self, **kwargs: Any) -> None:
        self.model.activation_checkpointing_enable(**kwargs)

    def gradient_checkpointing_enable(self, **kwargs: Any) -> None:
        self.model.gradient_checkpointing_enable(**kwargs)

    def forward(
        self, with_states: bool = False, token_index: Optional[torch.Tensor] = None, **inputs: torch.Tensor
    ) -> tuple[ModelOutput, Optional[list[torch.Tensor]]]:
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

    def __init__(self, model: nn.Module, filters: Optional[TaskAwareFilters], layers: list[int], head: str) -> None:
        self.model = model.eval().requires_grad_(False)
        self.filters = filters.eval().requires_grad_(False) if filters is not None else None
        self.layers = layers
        self.head = head
        self.kind = get_kind(head)
        # The selected layers (and the filters' own) by forward hooks: not every layer's hidden state at once.
        tapped = set(layers) | set(self.filters.layers if self.filters is not None else [])
        self.taps = LayerTaps(self.model, sorted(tapped))
        # Set by TedTrainer from --bf16 / --fp16: the teacher is not prepared by accelerate, so it would
        # otherwise run in full precision while the student runs under autocast.
        self.autocast_dtype: Optional[torch.dtype] = None
        self.device_type = "cpu"

    def to(self, device: Union[torch.device, str]) -> Teacher:
        self.model.to(device)
        if self.filters is not None:
            self.filters.to(device)
        self.device_type = torch.device(device).type
        return self

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.autocast_dtype)

    def __call__(
        self, inputs: dict[str, torch.Tensor], with_states: bool, token_index: Optional[torch.Tensor] = None
    ) -> tuple[Predictions, Optional[list[torch.Tensor]]]:
        # Only what the loss reads: logits, and the selected layers (filtered) when there is a layer term.
        with torch.inference_mode(), self.autocast():
            outputs, hidden = self.taps(inputs) if with_states else (self.model(**inputs), None)
            preds = self.kind.predictions(outputs)
            states = None
            if with_states:
                if token_index is not None:
                    hidden = real_tokens(hidden, self.layers, token_index)
                states = self.filters(hidden) if self.filters is not None else [hidden[i + 1] for i in self.layers]
        # Inference tensors cannot be saved for backward; a clone outside inference mode can. The logits are
        # small; the layer states are not cloned: the layer losses never save them for backward (they mask
        # them or subtract them outside inference mode first, which makes ordinary tensors).
        preds = tuple(p.clone() for p in preds) if isinstance(preds, tuple) else preds.clone()
        return preds, states
