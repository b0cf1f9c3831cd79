"""What a run stores: the components (`logits`, `states`), their shapes and dtypes, each keyed by its inputs."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
import torch

from ted.method.frozen_pass import autocast_dtype
from ted.method.kinds import get_kind
from ted.method.teacher_cache.identity import inputs_identity, module_identity
from ted.settings.checks import TEACHER_CACHE_DTYPES

if TYPE_CHECKING:
    import datasets
    from transformers import TrainingArguments

    from ted.method.modules import Teacher

FORMAT_VERSION = 1
DTYPE_CHOICES = TEACHER_CACHE_DTYPES  # the option's values, listed torch-free in ted.settings
DTYPES = {name: getattr(torch, name) for name in DTYPE_CHOICES if name != "auto"}


@dataclass
class Component:
    """One stored part of the signal: `logits` or `states` (later: `topk`)."""

    name: str
    key: str
    per_token: bool  # ragged (real tokens) or one row per example
    row_shape: tuple[int, ...]
    dtype: str
    description: dict[str, Any] = field(default_factory=dict)

    @property
    def folder_name(self) -> str:
        return f"{self.name}-{self.key}"

    def nbytes(self, rows: int, tokens: int) -> int:
        itemsize = torch.empty(0, dtype=DTYPES[self.dtype]).element_size()
        count = tokens if self.per_token else rows
        return int(count * int(np.prod(self.row_shape)) * itemsize + (rows + 1) * 8)


def plan_components(
    *,
    head: str,
    teacher: Teacher,
    need_logits: bool,
    need_states: bool,
    dataset: datasets.Dataset,
    compute_dtype: Optional[torch.dtype],
    store_dtype: str,
) -> list[Component]:
    """The components this run reads, each keyed by everything its values depend on."""
    base = {
        "format": FORMAT_VERSION,
        "teacher": module_identity(teacher.model),
        "inputs": inputs_identity(dataset),
        "compute": str(compute_dtype or "float32"),
        "head": head,
        "topk": None,  # the causal-LM hook (--teacher_cache_topk)
    }
    config = teacher.model.config
    out = []
    if need_logits:
        kind = get_kind(head)
        width = kind.num_labels([None] * int(getattr(config, "num_labels", 1)))  # span: start and end
        desc = {**base, "component": "logits", "dtype": "float32"}
        # A per-token head (span) stores logits per token, a sequence-level head one row per example.
        out.append(Component("logits", _key(desc), not kind.sequence_level, (width,), "float32", desc))
    if need_states:
        filters = teacher.filters
        width = filters.config.output_dim if filters is not None else config.hidden_size
        desc = {
            **base,
            "component": "states",
            "filters": module_identity(filters),
            "layers": list(teacher.layers),
            "dtype": store_dtype,
        }
        out.append(Component("states", _key(desc), True, (len(teacher.layers), int(width)), store_dtype, desc))
    return out


def _key(description: dict) -> str:
    return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:20]


def resolve_dtype(option: str, bf16: bool, fp16: bool) -> str:
    """`auto`: the run's own precision, so a float32 run's cache gives exactly the online teacher's losses."""
    if option != "auto":
        return option
    return "bfloat16" if bf16 else ("float16" if fp16 else "float32")


def compute_dtype(training_args: TrainingArguments) -> Optional[torch.dtype]:
    """The teacher's autocast in Stage II (TedTrainer's rule), which the cached values are computed under."""
    return autocast_dtype(training_args.device, training_args.bf16, training_args.fp16)
