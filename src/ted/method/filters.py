"""Task-aware filters: one small network per selected layer, reading that layer's output.

A filter on layer i reads `hidden_states[i + 1]` (the output of transformer layer i), which for
post-LN encoders is exactly the tensor the paper's filters read. Filters live next to the model,
keyed by layer index, so any model that returns hidden states works without model surgery.
State-dict keys are `filters.{i}.weight` (linear) or `filters.{i}.0.*` / `filters.{i}.2.*`
(nonlinear), the same layout as the golden reference files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import torch
from torch import nn
from transformers.activations import ACT2FN

from ted.errors import TedInputError
from ted.method.saved_module import SavedModule

if TYPE_CHECKING:
    from transformers import PretrainedConfig

FILTERS_WEIGHTS = "filters.safetensors"
FILTERS_CONFIG = "filters.json"


def select_layers(num_layers: int, interval: int) -> list[int]:
    """0-based layers that carry a filter: those with (i + 1) % interval == 0 (the paper's rule)."""
    if interval < 1:
        raise TedInputError(f"A filter interval must be >= 1, got {interval}.")
    if interval > num_layers:
        raise TedInputError(
            f"Filter interval {interval} is larger than the model's {num_layers} layers: no layer would "
            "get a filter. Use an interval between 1 and the number of layers."
        )
    if num_layers % interval:
        raise TedInputError(
            f"Filter interval {interval} does not divide the model's {num_layers} layers; the top "
            f"{num_layers % interval} layer(s) would never be matched. Pick an interval that divides {num_layers}."
        )
    return [i for i in range(num_layers) if (i + 1) % interval == 0]


def match_layers(student_layers: list[int], teacher_layers: list[int]) -> list[tuple[int, int]]:
    """Pair the k-th student layer with the k-th teacher layer; the counts must agree."""
    if len(student_layers) != len(teacher_layers):
        raise TedInputError(
            f"The student has {len(student_layers)} selected layers {student_layers} but the teacher has "
            f"{len(teacher_layers)} {teacher_layers}. Choose --filter_interval and --teacher_filter_interval so "
            "that student_layers / filter_interval == teacher_layers / teacher_filter_interval "
            "(e.g. a 6-layer teacher with interval 2 and a 3-layer student with interval 1)."
        )
    return list(zip(student_layers, teacher_layers))


@dataclass
class FilterConfig:
    layers: list[int]
    hidden_size: int
    output_dim: int
    nonlinear: bool = False
    activation: str = "gelu"
    interval: Optional[int] = None
    initializer_range: float = 0.02
    role: str = "filter"  # "filter" (TED) or "projector" (LWD student side)


class TaskAwareFilters(SavedModule):
    """The filters of one model: maps {layer: hidden state} to {layer: filtered state}."""

    WEIGHTS, CONFIG, WHAT, config_class = FILTERS_WEIGHTS, FILTERS_CONFIG, "filters", FilterConfig

    def __init__(self, config: FilterConfig) -> None:
        super().__init__()
        self.config = config
        self.filters = nn.ModuleDict({str(i): self._build(config) for i in config.layers})
        self.reset_parameters()

    @staticmethod
    def _build(config: FilterConfig) -> nn.Module:
        if not config.nonlinear:
            return nn.Linear(config.hidden_size, config.output_dim)
        return nn.Sequential(
            nn.Linear(config.hidden_size, config.hidden_size),
            ACT2FN[config.activation],
            nn.Linear(config.hidden_size, config.output_dim),
        )

    def reset_parameters(self) -> None:
        # The paper's filters get the HF initialiser: N(0, initializer_range), zero bias.
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, mean=0.0, std=self.config.initializer_range)
                nn.init.zeros_(module.bias)

    def start_as_identity(self) -> None:
        """Linear filters as wide as their input start as the identity (zero bias) instead of random: a causal LM's
        lens filter then starts from the model's own reading of its layer (the "logit lens")."""
        if self.config.nonlinear or self.config.output_dim != self.config.hidden_size:
            raise ValueError("only linear filters that keep the width can start as the identity")
        with torch.no_grad():
            for module in self.filters.values():
                module.weight.copy_(torch.eye(self.config.hidden_size))
                module.bias.zero_()

    @property
    def layers(self) -> list[int]:
        return list(self.config.layers)

    def forward(self, hidden_states: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
        """Filtered outputs in increasing layer order; `hidden_states` as returned by HF models."""
        return [self.filters[str(i)](hidden_states[i + 1]) for i in self.config.layers]


def has_filters(folder: str | Path) -> bool:
    return (Path(folder) / FILTERS_CONFIG).is_file()


def new_filters(
    model_config: PretrainedConfig,
    layers: list[int],
    output_dim: Optional[int],
    nonlinear: bool,
    interval: Optional[int] = None,
    role: str = "filter",
) -> TaskAwareFilters:
    """Fresh filters for a Hugging Face model config."""
    hidden = model_config.hidden_size
    return TaskAwareFilters(
        FilterConfig(
            layers=layers,
            hidden_size=hidden,
            output_dim=output_dim or hidden,
            nonlinear=nonlinear,
            activation=act if isinstance(act := getattr(model_config, "hidden_act", None), str) else "gelu",
            interval=interval,
            initializer_range=getattr(model_config, "initializer_range", 0.02),
            role=role,
        )
    )


def check_filters_match(
    filters: TaskAwareFilters, layers: list[int], output_dim: Optional[int], nonlinear: bool, where: str
) -> None:
    """A saved filter set must be the one the run asks for; silent re-initialisation is never an option."""
    cfg = filters.config
    problems = []
    if cfg.layers != layers:
        problems.append(f"layers {cfg.layers} (requested {layers})")
    if output_dim is not None and cfg.output_dim != output_dim:
        problems.append(f"output dim {cfg.output_dim} (requested --filter_output_dim {output_dim})")
    if cfg.nonlinear != nonlinear:
        problems.append(f"nonlinear={cfg.nonlinear} (requested {nonlinear})")
    if problems:
        raise TedInputError(
            f"The filters saved in {where} do not match this run: " + "; ".join(problems) + ". Use the same "
            "--filter_interval / --teacher_filter_interval / --filter_output_dim / --filter_nonlinear as in "
            "that model's Stage I, or run Stage I again."
        )
