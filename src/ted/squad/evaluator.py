"""SQuAD scoring inside the Trainer's evaluation loop, one batch at a time.

Used with `batch_eval_metrics`: each batch's start/end logits go straight into the streaming
post-processor (only the n-best candidates per window are kept), so evaluating thousands of
questions never holds every window's logits in memory.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional, Union

import numpy as np

from ted.squad.metric import evaluate_squad_rows
from ted.squad.postprocess import SpanPostprocessor

if TYPE_CHECKING:
    import datasets
    import torch
    from transformers import EvalPrediction


class SquadEvaluator:
    """`compute_metrics(eval_prediction, compute_result)` for span predictions.

    Predictions are [B, T, 2] (one head) or [B, K, T, 2] (Stage I, one head per filter); the
    "labels" are the windows' feature indices. Scores are in percent, like the official script.
    """

    def __init__(
        self,
        examples: datasets.Dataset,
        features: datasets.Dataset,
        version_2_with_negative: bool,
        layers: Optional[list[int]] = None,
        **options: Any,
    ) -> None:
        """`options`: SpanPostprocessor's n_best_size, max_answer_length, null_score_diff_threshold."""
        self.examples = examples
        self.features = features.select_columns(["example_id", "offset_mapping"])
        self.options = dict(version_2_with_negative=version_2_with_negative, **options)
        self.layers = layers
        self.last_predictions = None
        self._processors = None

    def _new_processors(self) -> list[SpanPostprocessor]:
        heads = len(self.layers) if self.layers is not None else 1
        return [SpanPostprocessor(self.examples, self.features, **self.options) for _ in range(heads)]

    def __call__(self, prediction: EvalPrediction, compute_result: bool = True) -> dict[str, float]:
        if self._processors is None:
            self._processors = self._new_processors()
        logits = _numpy(prediction.predictions)
        indices = _numpy(prediction.label_ids).reshape(-1).astype(np.int64)
        if logits.ndim == 3:
            logits = logits[:, None]
        for k, processor in enumerate(self._processors):
            processor.add_batch(indices, logits[:, k, :, 0], logits[:, k, :, 1])
        if not compute_result:
            return {}
        processors, self._processors = self._processors, None
        return self._score(processors)

    def _score(self, processors: list[SpanPostprocessor]) -> dict[str, float]:
        metrics: dict[str, float] = {}
        for k, processor in enumerate(processors):
            predictions, nbest, null_odds = processor.finalize()
            scores = dict(evaluate_squad_rows(self.examples, predictions))
            if self.options["version_2_with_negative"]:
                best = evaluate_squad_rows(self.examples, predictions, na_probs=null_odds)
                scores.update({key: value for key, value in best.items() if key.startswith("best_")})
            prefix = f"layer{self.layers[k]}_" if self.layers is not None else ""
            metrics.update({f"{prefix}{key}": float(value) for key, value in scores.items()})
            if self.layers is None:
                self.last_predictions = (
                    predictions,
                    nbest,
                    null_odds if self.options["version_2_with_negative"] else None,
                )
        return metrics


def _numpy(x: Union[torch.Tensor, np.ndarray]) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy() if x.is_floating_point() else x.detach().cpu().numpy()
    return np.asarray(x)
