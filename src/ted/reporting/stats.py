"""Significance of a difference between two methods (issue 14: reports users can trust).

Two views, both paired:
- over seeds: the per-seed differences' mean with a 95% t interval and a paired t-test (scipy);
- over dev examples, for one seed: a bootstrap interval of the metric difference (the same resampled examples
  for both methods, scipy.stats.bootstrap) and a paired permutation test (each example's two predictions
  swapped at random, scipy.stats.permutation_test).

With few seeds (2-3) the seed test has little power: "not significant" then means "not shown", not "equal".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Optional, SupportsFloat

import numpy as np

ALPHA = 0.05


def seed_difference(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> dict:
    """Paired over seeds: mean of a - b, its t interval and the paired t-test p (None with fewer than 2 seeds, or
    when every seed's difference is the same: then `no_spread` is True)."""
    from scipy import stats

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError("seed_difference needs two equally long, non-empty lists of per-seed scores")
    diff = a - b
    out = {"n": len(diff), "mean": float(diff.mean()), "low": None, "high": None, "p": None}
    if len(diff) < 2:
        return out
    if np.allclose(diff, diff[0]):
        # No spread (every seed differs by the same few dev examples, say): the t statistic is undefined. scipy
        # gives p 0, which would call three equal differences of one example "significant"; there is no test.
        out.update(low=float(diff[0]), high=float(diff[0]), no_spread=True)
        return out
    test = stats.ttest_rel(a, b)
    interval = test.confidence_interval(confidence)
    out.update(low=float(interval.low), high=float(interval.high), p=float(test.pvalue))
    return out


def paired_bootstrap(
    metric: Callable[[np.ndarray, np.ndarray], float],
    preds_a: np.ndarray,
    preds_b: np.ndarray,
    labels: np.ndarray,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict:
    """One seed, over dev examples: metric(a) - metric(b), a percentile bootstrap interval (the same examples
    drawn for both) and a paired permutation test p. `preds_*` are decoded (class ids or scores)."""
    from scipy import stats

    preds_a, preds_b, labels = np.asarray(preds_a), np.asarray(preds_b), np.asarray(labels)
    if not len(preds_a) == len(preds_b) == len(labels) or len(labels) < 2:
        raise ValueError("paired_bootstrap needs predictions of both methods for the same (2+) dev examples")

    def on_rows(rows: np.ndarray) -> float:
        rows = np.asarray(rows, dtype=np.int64)
        return metric(preds_a[rows], labels[rows]) - metric(preds_b[rows], labels[rows])

    rng = np.random.default_rng(seed)
    index = np.arange(len(labels))
    observed = on_rows(index)
    boot = stats.bootstrap(
        (index,),
        on_rows,
        n_resamples=n_resamples,
        confidence_level=confidence,
        method="percentile",
        vectorized=False,
        random_state=rng,
    )

    def swapped(x: np.ndarray, y: np.ndarray) -> float:
        return metric(x, labels) - metric(y, labels)

    perm = stats.permutation_test(
        (preds_a, preds_b),
        swapped,
        permutation_type="samples",
        n_resamples=n_resamples,
        vectorized=False,
        random_state=rng,
    )
    low, high = boot.confidence_interval
    return {"diff": float(observed), "low": _finite(low), "high": _finite(high), "p": float(perm.pvalue)}


def _finite(value: SupportsFloat) -> Optional[float]:
    value = float(value)
    return None if math.isnan(value) else value


def significant(p: Optional[float]) -> bool:
    return p is not None and p < ALPHA


# ------------------------------------------------------------------------- metrics for resampling
# The same numbers as ted.tasks.metrics (scikit-learn / scipy), in plain numpy: a bootstrap calls the metric thousands
# of times, and scikit-learn's input validation costs ~1 ms a call. tests/test_stats.py checks they agree.


def _accuracy(preds: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(preds == labels))


def _f1(preds: np.ndarray, labels: np.ndarray) -> float:
    tp = np.sum((preds == 1) & (labels == 1))
    wrong = np.sum(preds != labels)  # false positives + false negatives
    return float(2 * tp / (2 * tp + wrong)) if tp + wrong else 0.0


def _mcc(preds: np.ndarray, labels: np.ndarray) -> float:
    classes = int(max(preds.max(), labels.max())) + 1
    confusion = np.bincount(labels * classes + preds, minlength=classes * classes).reshape(classes, classes)
    t_sum, p_sum, n = confusion.sum(1), confusion.sum(0), confusion.sum()
    cov_tp = np.trace(confusion) * n - t_sum @ p_sum
    denominator = np.sqrt(float(n * n - p_sum @ p_sum) * float(n * n - t_sum @ t_sum))
    return float(cov_tp / denominator) if denominator else 0.0


def _pearson(preds: np.ndarray, labels: np.ndarray) -> float:
    if np.std(preds) == 0 or np.std(labels) == 0:
        return 0.0
    return float(np.corrcoef(preds, labels)[0, 1])


def _spearman(preds: np.ndarray, labels: np.ndarray) -> float:
    from scipy.stats import rankdata

    return _pearson(rankdata(preds), rankdata(labels))


def _perplexity(rows: np.ndarray, labels: np.ndarray) -> float:
    """Causal LMs: rows of (summed next-token NLL, scored tokens) per dev block -> the exact perplexity."""
    sums = np.asarray(rows, dtype=np.float64).reshape(-1, 2).sum(axis=0)
    return float(np.exp(sums[0] / sums[1])) if sums[1] else math.nan


FAST_METRICS = {
    "perplexity": _perplexity,
    "accuracy": _accuracy,
    "f1": _f1,
    "matthews_correlation": _mcc,
    "pearson": _pearson,
    "spearmanr": _spearman,
}


def fast_metric(name: str) -> Optional[Callable[[np.ndarray, np.ndarray], float]]:
    """A numpy version of the ted.tasks.metrics score `name` on decoded predictions, or None."""
    fn = FAST_METRICS.get(name)
    if fn is None:
        return None
    return lambda preds, labels: fn(np.asarray(preds), np.asarray(labels))
