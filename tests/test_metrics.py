"""Metrics against hand-computed numbers and direct scikit-learn / scipy calls."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as skm

from ted.tasks import metrics
from ted.tasks.metrics import classification_metric_fn, glue_metric_fn, regression_metric_fn

LABELS = np.array([1, 1, 1, 0, 0, 1, 0, 1])
PREDS = np.array([1, 0, 1, 0, 1, 1, 0, 1])
# By hand: TP=4 (idx 0,2,5,7), FN=1 (idx 1), FP=1 (idx 4), TN=2 (idx 3,6).
HAND_ACC = 6 / 8
HAND_F1 = 2 * 4 / (2 * 4 + 1 + 1)
HAND_MCC = 7 / 15  # (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (4*2 - 1*1) / sqrt(5*5*3*3)


def _logits(class_ids: np.ndarray, num_classes: int = 2) -> np.ndarray:
    out = np.random.default_rng(0).normal(size=(len(class_ids), num_classes))
    out[np.arange(len(class_ids)), class_ids] += 10.0
    return out


def test_hand_computed_values():
    assert metrics.accuracy(PREDS, LABELS) == pytest.approx(HAND_ACC)
    assert metrics.f1(PREDS, LABELS) == pytest.approx(HAND_F1)
    assert metrics.matthews_correlation(PREDS, LABELS) == pytest.approx(HAND_MCC)


def test_against_sklearn_and_scipy():
    rng = np.random.default_rng(1)
    y, p = rng.integers(0, 2, 200), rng.integers(0, 2, 200)
    assert metrics.accuracy(p, y) == pytest.approx(skm.accuracy_score(y, p))
    assert metrics.f1(p, y) == pytest.approx(skm.f1_score(y, p))
    assert metrics.matthews_correlation(p, y) == pytest.approx(skm.matthews_corrcoef(y, p))
    y3, p3 = rng.integers(0, 3, 200), rng.integers(0, 3, 200)
    assert metrics.f1_macro(p3, y3) == pytest.approx(skm.f1_score(y3, p3, average="macro"))
    a, b = rng.normal(size=100), rng.normal(size=100)
    b = a + 0.5 * b
    assert metrics.pearson(b, a) == pytest.approx(stats.pearsonr(b, a)[0])
    assert metrics.spearmanr(b, a) == pytest.approx(stats.spearmanr(b, a)[0])
    assert metrics.mse(b, a) == pytest.approx(float(np.mean((a - b) ** 2)))


def test_hand_computed_correlations():
    preds, labels = np.array([1.0, 2.0, 3.0, 4.0]), np.array([2.0, 4.0, 6.0, 8.5])
    assert metrics.spearmanr(preds, labels) == pytest.approx(1.0)
    assert metrics.pearson(preds, -labels) == pytest.approx(-metrics.pearson(preds, labels))
    assert metrics.pearson(np.array([1.0, 2.0, 3.0]), np.array([1.0, 3.0, 2.0])) == pytest.approx(0.5)


def test_plain_floats_not_percent():
    out = glue_metric_fn("mrpc")(_logits(PREDS), LABELS)
    assert all(type(v) is float for v in out.values())
    assert 0.0 <= out["accuracy"] <= 1.0


@pytest.mark.parametrize(
    "task,keys",
    [
        ("cola", {"matthews_correlation"}),
        ("sst2", {"accuracy"}),
        ("mnli", {"accuracy"}),
        ("qnli", {"accuracy"}),
        ("rte", {"accuracy"}),
        ("wnli", {"accuracy"}),
        ("mrpc", {"accuracy", "f1", "combined_score"}),
        ("qqp", {"accuracy", "f1", "combined_score"}),
        ("stsb", {"pearson", "spearmanr", "combined_score"}),
        ("SST-2", {"accuracy"}),
        ("STS-B", {"pearson", "spearmanr", "combined_score"}),
        ("CoLA", {"matthews_correlation"}),
    ],
)
def test_glue_key_sets(task, keys):
    fn = glue_metric_fn(task)
    if "pearson" in keys:
        out = fn(np.array([0.5, 1.0, 3.0, 4.5]), np.array([0.0, 2.0, 2.5, 5.0]))
    else:
        out = fn(_logits(PREDS, 3 if task == "mnli" else 2), LABELS)
    assert set(out) == keys


def test_glue_values_from_logits():
    out = glue_metric_fn("mrpc")(_logits(PREDS), LABELS)
    assert out == pytest.approx({"accuracy": HAND_ACC, "f1": HAND_F1, "combined_score": (HAND_ACC + HAND_F1) / 2})
    assert glue_metric_fn("cola")(_logits(PREDS), LABELS)["matthews_correlation"] == pytest.approx(HAND_MCC)
    with pytest.raises(ValueError, match="unknown GLUE task"):
        glue_metric_fn("squad")


def test_argmax_vs_regression_squeeze():
    logits = np.array([[0.1, 0.9, 0.0], [2.0, 1.0, 0.0], [0.0, 0.0, 3.0]])
    assert metrics.class_predictions(logits).tolist() == [1, 0, 2]
    assert metrics.class_predictions((logits, np.zeros(3))).tolist() == [1, 0, 2]  # Trainer tuple
    labels = np.array([0.0, 1.0, 2.0, 3.0])
    col = np.array([[0.1], [1.2], [1.9], [3.3]])
    flat = glue_metric_fn("stsb")(col[:, 0], labels)
    assert glue_metric_fn("stsb")(col, labels) == flat
    assert flat["pearson"] == pytest.approx(stats.pearsonr(col[:, 0], labels)[0])
    with pytest.raises(ValueError, match=r"\[N\] or \[N, 1\]"):
        metrics.regression_predictions(np.zeros((4, 2)))


def test_constant_predictions():
    labels = np.array([0.0, 1.0, 2.0, 3.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no ConstantInputWarning leaks out
        out = glue_metric_fn("stsb")(np.full((4, 1), 2.5), labels)
    assert out == {"pearson": 0.0, "spearmanr": 0.0, "combined_score": 0.0}
    assert regression_metric_fn()(np.full(4, 2.5), labels)["pearson"] == 0.0
    const = _logits(np.zeros(8, dtype=int))
    assert glue_metric_fn("cola")(const, LABELS) == {"matthews_correlation": 0.0}
    assert glue_metric_fn("mrpc")(const, LABELS)["f1"] == 0.0  # nothing predicted positive


def test_custom_metric_fns():
    assert set(classification_metric_fn(2)(_logits(PREDS), LABELS)) == {"accuracy", "f1"}
    y3 = np.array([0, 1, 2, 2, 1, 0])
    out3 = classification_metric_fn(3)(_logits(np.array([0, 1, 2, 1, 1, 0]), 3), y3)
    assert out3 == pytest.approx({"accuracy": 5 / 6, "f1_macro": skm.f1_score(y3, [0, 1, 2, 1, 1, 0], average="macro")})
    reg = regression_metric_fn()(np.array([[1.0], [2.0], [4.0]]), np.array([1.0, 2.0, 3.0]))
    assert set(reg) == {"pearson", "spearmanr", "mse"} and reg["mse"] == pytest.approx(1 / 3)
