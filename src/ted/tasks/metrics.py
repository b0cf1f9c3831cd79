"""Evaluation metrics for GLUE and custom data.

Scores come from scikit-learn / scipy (no hand-written formulas) and are plain Python floats in
[0, 1] or [-1, 1], never percentages. Key names follow Hugging Face `evaluate`'s glue metric so
logs and selection metrics match what people know from `run_glue.py`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Union

import numpy as np
from scipy import stats
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef, mean_squared_error

MetricFn = Callable[[np.ndarray, np.ndarray], dict[str, float]]
# Raw model outputs as the Trainer hands them: logits, or a tuple whose first entry is the logits.
Outputs = Union[np.ndarray, tuple[np.ndarray, ...]]


# ---- single metrics on already-decoded predictions ---------------------------------------------


def accuracy(preds: np.ndarray, labels: np.ndarray) -> float:
    return float(accuracy_score(labels, preds))


def f1(preds: np.ndarray, labels: np.ndarray) -> float:
    """Binary F1 of the positive class (id 1); 0.0 when nothing is predicted positive."""
    return float(f1_score(labels, preds, pos_label=1, average="binary", zero_division=0.0))


def f1_macro(preds: np.ndarray, labels: np.ndarray) -> float:
    return float(f1_score(labels, preds, average="macro", zero_division=0.0))


def matthews_correlation(preds: np.ndarray, labels: np.ndarray) -> float:
    # scikit-learn already returns 0.0 for a constant prediction.
    return float(matthews_corrcoef(labels, preds))


def _finite_or_zero(value: float) -> float:
    # A correlation is undefined (nan) for constant inputs; 0.0 keeps model selection and logging
    # working, e.g. when an untrained regression head predicts the same score everywhere.
    value = float(value)
    return 0.0 if math.isnan(value) else value


def _correlation(
    scipy_fn: Callable[[np.ndarray, np.ndarray], Sequence[float]], preds: np.ndarray, labels: np.ndarray
) -> float:
    # Fewer than 2 points or a constant input has no correlation: 0, not NaN, so model selection still works.
    if len(preds) < 2:
        return 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        return _finite_or_zero(scipy_fn(preds, labels)[0])


def pearson(preds: np.ndarray, labels: np.ndarray) -> float:
    return _correlation(stats.pearsonr, preds, labels)


def spearmanr(preds: np.ndarray, labels: np.ndarray) -> float:
    return _correlation(stats.spearmanr, preds, labels)


def mse(preds: np.ndarray, labels: np.ndarray) -> float:
    return float(mean_squared_error(labels, preds))


# ---- decoding raw model outputs ----------------------------------------------------------------


def _first(predictions: Outputs) -> np.ndarray:
    # Trainer hands over a tuple when the model returns more than logits; logits come first.
    return predictions[0] if isinstance(predictions, tuple) else predictions


def class_predictions(predictions: Outputs) -> np.ndarray:
    """Logits [N, C] -> class ids [N] (argmax); an [N] array is taken as class ids already."""
    preds = np.asarray(_first(predictions))
    return preds.argmax(axis=-1) if preds.ndim == 2 else preds.astype(np.int64)


def regression_predictions(predictions: Outputs) -> np.ndarray:
    """Regression outputs [N] or [N, 1] -> float array [N]."""
    preds = np.asarray(_first(predictions), dtype=np.float64)
    if preds.ndim == 2 and preds.shape[1] == 1:
        preds = preds[:, 0]
    if preds.ndim != 1:
        raise ValueError(f"regression predictions must have shape [N] or [N, 1], got {preds.shape}")
    return preds


# ---- per-task metric functions -----------------------------------------------------------------


def _decode_classes(predictions: Outputs, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return class_predictions(predictions), np.asarray(labels).astype(np.int64).reshape(-1)


def _decode_scores(predictions: Outputs, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return regression_predictions(predictions), np.asarray(labels, dtype=np.float64).reshape(-1)


def _mcc_metrics(predictions: Outputs, labels: np.ndarray) -> dict[str, float]:
    return {"matthews_correlation": matthews_correlation(*_decode_classes(predictions, labels))}


def _acc_metrics(predictions: Outputs, labels: np.ndarray) -> dict[str, float]:
    return {"accuracy": accuracy(*_decode_classes(predictions, labels))}


def _acc_f1_metrics(predictions: Outputs, labels: np.ndarray) -> dict[str, float]:
    preds, labels = _decode_classes(predictions, labels)
    acc, f1_value = accuracy(preds, labels), f1(preds, labels)
    return {"accuracy": acc, "f1": f1_value, "combined_score": (acc + f1_value) / 2}


def _corr_metrics(predictions: Outputs, labels: np.ndarray) -> dict[str, float]:
    preds, labels = _decode_scores(predictions, labels)
    p, s = pearson(preds, labels), spearmanr(preds, labels)
    return {"pearson": p, "spearmanr": s, "combined_score": (p + s) / 2}


# Metrics of each GLUE task as in the GLUE paper; combined_score as in HF evaluate's glue metric.
_GLUE_METRICS: dict[str, MetricFn] = {
    "cola": _mcc_metrics,
    "sst2": _acc_metrics,
    "mnli": _acc_metrics,
    "qnli": _acc_metrics,
    "rte": _acc_metrics,
    "wnli": _acc_metrics,
    "mrpc": _acc_f1_metrics,
    "qqp": _acc_f1_metrics,
    "stsb": _corr_metrics,
}


def glue_metric_fn(task_name: str) -> MetricFn:
    """`fn(predictions, labels) -> dict` for a GLUE task (aliases like "SST-2" or "STS-B" accepted)."""
    key = task_name.strip().lower().replace("-", "").replace("_", "")
    if key not in _GLUE_METRICS:
        raise ValueError(f"unknown GLUE task {task_name!r}; expected one of {sorted(_GLUE_METRICS)}")
    return _GLUE_METRICS[key]


def classification_metric_fn(num_labels: int) -> MetricFn:
    """Custom classification: accuracy, plus f1 (binary) or f1_macro (more than two classes)."""

    def compute(predictions: Outputs, labels: np.ndarray) -> dict[str, float]:
        preds, labels = _decode_classes(predictions, labels)
        out = {"accuracy": accuracy(preds, labels)}
        if num_labels == 2:
            out["f1"] = f1(preds, labels)
        elif num_labels > 2:
            out["f1_macro"] = f1_macro(preds, labels)
        return out

    return compute


def regression_metric_fn() -> MetricFn:
    """Custom regression: pearson, spearmanr and mse."""

    def compute(predictions: Outputs, labels: np.ndarray) -> dict[str, float]:
        preds, labels = _decode_scores(predictions, labels)
        return {
            "pearson": pearson(preds, labels),
            "spearmanr": spearmanr(preds, labels),
            "mse": mse(preds, labels),
        }

    return compute
