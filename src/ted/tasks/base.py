"""The small interface every task family implements.

A task knows how to load its splits (hub id or local files), what its labels are, how to turn
examples into model inputs, which head it needs and how to score predictions. Stages only talk to
this interface, so GLUE, SQuAD and user data share one training path.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from ted.method.kinds import HeadKind, get_kind

DEFAULT_MAX_SEQ_LENGTH = 128  # sentence(-pair) tasks; SQuAD has its own (tasks/squad.py)


@dataclass
class TaskData:
    """What a task hands to a stage: tokenized splits plus what is needed to score them.

    `train` and each entry of `eval_sets` are `datasets.Dataset`s holding model inputs
    (`input_ids`, `attention_mask`, optional `token_type_ids`) and `labels`.
    `eval_sets` maps a split name ("validation", or "validation_matched" /
    "validation_mismatched" for MNLI) to its dataset; the first entry drives model selection.
    `eval_examples` holds, for tasks that need it (SQuAD), the raw examples of each eval set.
    """

    train: Any
    eval_sets: dict[str, Any]
    eval_examples: dict[str, Any] = field(default_factory=dict)


@dataclass
class Task:
    """Static description of a task."""

    name: str
    head: str  # "classification", "regression" or "span"
    label_list: Optional[list[str]]  # label names in id order; None for regression and span tasks
    selection_metric: str  # key of compute_metrics' result used to keep the best checkpoint
    metric_fn: Callable[[np.ndarray, np.ndarray], dict[str, float]] = field(repr=False, default=None)

    @property
    def kind(self) -> HeadKind:
        """The head kind object (ted.method.kinds) that owns everything that differs between heads."""
        return get_kind(self.head)

    @property
    def num_labels(self) -> int:
        return self.kind.num_labels(self.label_list)

    @property
    def is_regression(self) -> bool:
        return self.kind.scores

    def compute_metrics(self, predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        """Scores from raw model outputs: logits [N, C] (classification) or [N] / [N, 1] (regression)."""
        return self.metric_fn(predictions, labels)
