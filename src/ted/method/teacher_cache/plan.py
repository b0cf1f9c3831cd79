"""What a run stores: the components (`logits` or a causal LM's `topk_*`, `states`), their shapes and dtypes, each
keyed by its inputs."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
import torch

from ted.method.frozen_pass import autocast_dtype
from ted.method.kinds import get_kind
from ted.method.teacher_cache.identity import inputs_identity, labels_identity, module_identity
from ted.method.teacher_cache.topk import TOPK_IDS, TOPK_VALUES, resolve_topk
from ted.settings.checks import TEACHER_CACHE_DTYPES

if TYPE_CHECKING:
    import datasets
    from transformers import TrainingArguments

    from ted.method.modules import Teacher

FORMAT_VERSION = 1
DTYPE_CHOICES = TEACHER_CACHE_DTYPES  # the option's values, listed torch-free in ted.settings
DTYPES = {name: getattr(torch, name) for name in (*DTYPE_CHOICES, "int32") if name != "auto"}  # int32: top-k ids


@dataclass
class Component:
    """One stored part of the signal: `logits`, `states`, or a causal LM's `topk_logprobs` and `topk_ids`."""

    name: str
    key: str
    per_token: bool  # ragged (the distilled positions: real tokens; a causal LM's scored ones) or one row each
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
    topk: Optional[int] = None,
) -> list[Component]:
    """The components this run reads, each keyed by everything its values depend on (`topk`:
    --teacher_cache_topk, for a kind whose logits are a vocabulary)."""
    kind = get_kind(head)
    config = teacher.model.config
    vocab = vocab_size(teacher.model) if kind.teacher_cache_logits == "topk" else None
    k = resolve_topk(topk, vocab) if vocab is not None else None
    base = {
        "format": FORMAT_VERSION,
        "teacher": module_identity(teacher.model),
        "inputs": inputs_identity(dataset),
        "compute": str(compute_dtype or "float32"),
        "head": head,
        "topk": k,
    }
    if kind.token_labels:  # which positions are stored depends on the labels (prompt tokens are not scored)
        base["labels"] = labels_identity(dataset)
    out = []
    if need_logits and k is not None:  # one row of k per scored position; the ids and their log-probabilities
        for name, dtype in ((TOPK_VALUES, store_dtype), (TOPK_IDS, "int32")):
            desc = {**base, "component": name, "dtype": dtype, "vocab": vocab}
            out.append(Component(name, _key(desc), True, (k,), dtype, desc))
    elif need_logits:
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
            "topk": None,  # states do not depend on k
        }
        out.append(Component("states", _key(desc), True, (len(teacher.layers), int(width)), store_dtype, desc))
    return out


def vocab_size(model: torch.nn.Module) -> int:
    """The width of a causal LM's logits: its output embeddings' rows (the config's vocab_size without them)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return int(head.out_features if isinstance(head, torch.nn.Linear) else model.config.vocab_size)


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
