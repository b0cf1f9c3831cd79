"""What a stage scores on dev: the `compute_metrics` of the task, or of each Stage I filter head."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Optional

import numpy as np

from ted.squad.evaluator import SquadEvaluator
from ted.tasks.base import Task, TaskData
from ted.tasks.squad import version_2

if TYPE_CHECKING:
    from transformers import EvalPrediction

    from ted.settings.options import DataArguments

# A stage's `compute_metrics` for the Trainer. The SQuAD evaluator also keeps `last_predictions`, the others
# `evaluations` (for ted.stages.saving).
MetricsFn = Callable[..., dict[str, float]]


def squad_evaluator(
    task: Task, data: TaskData, data_args: DataArguments, layers: Optional[list[int]] = None
) -> SquadEvaluator:
    name = next(iter(data.eval_sets))
    return SquadEvaluator(
        data.eval_examples[name],
        data.eval_sets[name],
        version_2(task),
        n_best_size=data_args.n_best_size,
        max_answer_length=data_args.max_answer_length,
        null_score_diff_threshold=data_args.null_score_diff_threshold,
        layers=layers,
    )


def task_metrics(task: Task, data: TaskData, data_args: DataArguments) -> MetricsFn:
    if task.kind.streams_eval:
        return squad_evaluator(task, data, data_args)

    def compute(prediction: EvalPrediction) -> dict[str, float]:
        predictions, labels = np.asarray(prediction.predictions), np.asarray(prediction.label_ids)
        metrics = task.compute_metrics(predictions, labels)
        compute.evaluations.append((metrics, predictions, labels))  # see write_eval_predictions
        return metrics

    compute.evaluations = []
    return compute


def per_filter_metrics(task: Task, layers: list[int], data: TaskData, data_args: DataArguments) -> MetricsFn:
    """Stage I diagnostics: each filter head scored on its own, keyed `layer{i}_{metric}`."""
    if task.kind.streams_eval:
        return squad_evaluator(task, data, data_args, layers)

    def compute(prediction: EvalPrediction) -> dict[str, float]:
        preds, labels = np.asarray(prediction.predictions), np.asarray(prediction.label_ids)
        out: dict[str, float] = {}
        for k, layer in enumerate(layers):
            for name, value in task.compute_metrics(preds[:, k], labels).items():
                out[f"layer{layer}_{name}"] = value
        return out

    return compute
