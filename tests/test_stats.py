"""Significance statistics of `ted report` (ted.reporting.stats) against scipy and against a hand-made bootstrap."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from ted.reporting.stats import fast_metric, paired_bootstrap, seed_difference, significant


def accuracy(preds, labels) -> float:  # numpy, not sklearn: thousands of resamples stay fast
    return float(np.mean(preds == labels))


def test_seed_difference_matches_the_paired_t_test():
    a, b = [0.61, 0.64, 0.58], [0.55, 0.60, 0.57]
    got = seed_difference(a, b)
    diff = np.subtract(a, b)
    half = sps.t.ppf(0.975, len(diff) - 1) * diff.std(ddof=1) / np.sqrt(len(diff))  # textbook t interval
    assert got["mean"] == pytest.approx(diff.mean())
    assert (got["low"], got["high"]) == (pytest.approx(diff.mean() - half), pytest.approx(diff.mean() + half))
    assert got["p"] == pytest.approx(sps.ttest_rel(a, b).pvalue)
    assert got["n"] == 3


def test_one_seed_has_no_interval_and_constant_differences_are_handled():
    assert seed_difference([0.6], [0.5]) == {"n": 1, "mean": pytest.approx(0.1), "low": None, "high": None, "p": None}
    same = seed_difference([0.6, 0.7, 0.55], [0.5, 0.6, 0.45])
    assert same["low"] == same["high"] == pytest.approx(0.1)
    # scipy calls a constant difference p 0 ("significant"); there is no t-test without spread
    assert same["p"] is None and same["no_spread"] and sps.ttest_rel([0.6, 0.7, 0.55], [0.5, 0.6, 0.45]).pvalue < 0.05
    with pytest.raises(ValueError):
        seed_difference([0.6, 0.7], [0.5])


def hand_bootstrap(a, b, labels, n=4000, seed=1):
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(labels), size=(n, len(labels)))
    diffs = [(a[r] == labels[r]).mean() - (b[r] == labels[r]).mean() for r in draws]
    return np.percentile(diffs, [2.5, 97.5])


def test_paired_bootstrap_interval_and_permutation_p():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 300)
    better = np.where(rng.random(300) < 0.80, labels, 1 - labels)  # ~80% right
    worse = np.where(rng.random(300) < 0.60, labels, 1 - labels)  # ~60% right
    got = paired_bootstrap(accuracy, better, worse, labels, n_resamples=1000)
    assert got["diff"] == pytest.approx(accuracy(better, labels) - accuracy(worse, labels))
    low, high = hand_bootstrap(better, worse, labels)
    assert got["low"] == pytest.approx(low, abs=0.02) and got["high"] == pytest.approx(high, abs=0.02)
    assert significant(got["p"]) and got["p"] < 0.01
    # A method against itself with a few flips: no difference shown.
    flipped = better.copy()
    flipped[:3] = 1 - flipped[:3]
    same = paired_bootstrap(accuracy, better, flipped, labels, n_resamples=500)
    assert not significant(same["p"]) and same["low"] <= 0 <= same["high"] + 1e-12


def test_permutation_p_matches_an_exact_sign_flip_test_on_accuracy():
    """For accuracy the paired permutation test is an exact test on the discordant examples: with 9 examples
    that only `a` gets right and 1 that only `b` gets right, p = P(|K - 5| >= 4), K ~ Binomial(10, 1/2)."""
    labels = np.zeros(40, dtype=int)
    a = np.zeros(40, dtype=int)
    b = np.zeros(40, dtype=int)
    b[:9] = 1  # b wrong on 9 examples a gets right
    a[9] = 1  # a wrong on 1 example b gets right
    got = paired_bootstrap(accuracy, a, b, labels, n_resamples=3000, seed=3)
    exact = sps.binomtest(9, 10, 0.5).pvalue
    assert got["p"] == pytest.approx(exact, abs=0.01)


@pytest.mark.parametrize("name", ["accuracy", "f1", "matthews_correlation", "pearson", "spearmanr"])
def test_fast_metrics_agree_with_ted_metrics(name):
    from ted.tasks import metrics

    reference = {"matthews_correlation": metrics.matthews_correlation}.get(name, getattr(metrics, name, None))
    fast = fast_metric(name)
    rng = np.random.default_rng(1)
    for classes in (2, 3):
        labels = rng.integers(0, classes, 50)
        preds = np.where(rng.random(50) < 0.6, labels, rng.integers(0, classes, 50))
        if name in ("pearson", "spearmanr"):
            labels, preds = labels + rng.random(50), preds + rng.random(50)
        if name == "f1" and classes == 3:
            continue  # binary F1 of class 1 only
        assert fast(preds, labels) == pytest.approx(reference(preds, labels))
    assert fast(np.zeros(5, dtype=int), np.zeros(5, dtype=int)) == pytest.approx(reference(np.zeros(5), np.zeros(5)))
