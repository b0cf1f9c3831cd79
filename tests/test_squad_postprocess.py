"""Span post-processing (ted.squad.postprocess) on synthetic windows and logits."""

import json

import numpy as np
import pytest

from ted.squad.postprocess import SpanPostprocessor, write_prediction_files

CONTEXT = "hello big world today"
# Window layout: 0 CLS, 1 question, 2 SEP, 3 hello, 4 big, 5 world, 6 today, 7 SEP.
OFFSETS = [None, None, None, (0, 5), (6, 9), (10, 15), (16, 21), None]
LOW = -10.0


def postprocess_predictions(examples, features, start, end, v2, output_dir=None, prefix=None, **options):
    """All windows' logits (one array, or a list of per-batch arrays in window order) -> (preds, nbest, odds)."""
    proc, first = SpanPostprocessor(examples, features, v2, **options), 0
    for s, e in zip(*(x if isinstance(x, list) else [x] for x in (start, end))):
        proc.add_batch(range(first, first + len(s)), s, e)
        first += len(s)
    preds, nbest, odds = proc.finalize()
    if output_dir is not None:
        write_prediction_files(output_dir, preds, nbest, odds if v2 else None, prefix)
    return preds, nbest, odds


def logits(peaks, n=8):
    """float32 row with LOW everywhere except {position: value}."""
    row = np.full(n, LOW, dtype=np.float32)
    for pos, val in peaks.items():
        row[pos] = val
    return row


def one_window(start, end, v2=True, **kw):
    examples = [{"id": "q", "context": CONTEXT}]
    features = [{"example_id": "q", "offset_mapping": OFFSETS}]
    return postprocess_predictions(examples, features, start[None], end[None], v2, **kw)


def test_best_span_and_probabilities():
    preds, nbest, odds = one_window(logits({4: 5.0, 3: 1.0}), logits({5: 4.0, 6: 2.0}), v2=False)
    assert preds == {"q": "big world"}
    assert odds == {}
    best = nbest["q"]
    assert best[0]["text"] == "big world" and float(best[0]["start_logit"]) == 5.0
    scores = [float(b["start_logit"] + b["end_logit"]) for b in best]
    assert scores == sorted(scores, reverse=True)
    assert sum(float(b["probability"]) for b in best) == pytest.approx(1.0, abs=1e-6)
    assert all(b["text"] for b in best)  # v1: no null candidate


def test_null_vs_span_at_threshold():
    # null = 3 + 3 = 6; best span = 5 (start "big") + 0 (end "world") = 5 -> null odds = 1.
    start, end = logits({0: 3.0, 4: 5.0}), logits({0: 3.0, 5: 0.0})
    preds, nbest, odds = one_window(start, end)
    assert odds["q"] == pytest.approx(1.0)
    assert preds["q"] == ""  # 1 > 0.0
    assert any(b["text"] == "" for b in nbest["q"])  # the null answer is listed
    preds, _, _ = one_window(start, end, null_score_diff_threshold=1.0)
    assert preds["q"] == "big world"  # 1 > 1 is false: the span wins
    preds, _, _ = one_window(start, end, v2=False)
    assert preds["q"] == "big world"  # v1 never predicts the empty answer


def test_max_answer_length_filter():
    start, end = logits({3: 5.0, 4: 4.0}), logits({6: 5.0, 5: 1.0})
    assert one_window(start, end, v2=False)[0]["q"] == "hello big world today"  # 4 tokens
    # With 3 tokens at most: (3,6) is out; candidates (4,6)=9, (3,5)=6, (4,5)=5 -> "big world today".
    assert one_window(start, end, v2=False, max_answer_length=3)[0]["q"] == "big world today"


def test_spans_outside_context_rejected():
    # The highest logits sit on the question token and the SEPs; only context spans may win.
    start, end = logits({1: 9.0, 2: 9.0, 5: 1.0}), logits({1: 9.0, 7: 9.0, 6: 1.0})
    preds, nbest, _ = one_window(start, end, v2=False)
    assert preds["q"] == "world today"
    assert all(b["text"] in CONTEXT for b in nbest["q"])


def test_end_before_start_rejected():
    # (6,3) would score 18 but is backwards; (3,3) and (6,6) score -1; (4,5) scores 0.
    start, end = logits({6: 9.0, 4: 0.0}), logits({3: 9.0, 5: 0.0})
    assert one_window(start, end, v2=False)[0]["q"] == "big world"


def test_only_null_candidate_gives_empty_answer():
    n = 3  # the window holds no context token at all
    examples = [{"id": "q", "context": CONTEXT}]
    features = [{"example_id": "q", "offset_mapping": [None, None, None]}]
    preds, nbest, odds = postprocess_predictions(examples, features, logits({}, n)[None], logits({}, n)[None], True)
    assert preds["q"] == ""  # not the reference's literal "empty"
    assert [b["text"] for b in nbest["q"]] == ["empty", ""]  # its dummy is kept in the n-best
    assert odds["q"] == pytest.approx(2 * LOW)


def multi_window_setup():
    # Example "a" has two windows over "hello big world today": window 0 covers hello/big,
    # window 1 (shorter, padded with -100) covers world/today. Example "b" has one window.
    examples = {"id": ["a", "b"], "context": [CONTEXT, "just one"]}
    w0 = [None, None, (0, 5), (6, 9), None]
    w1 = [None, None, (10, 15), (16, 21)]
    wb = [None, None, (0, 4), (5, 8), None]
    features = {"example_id": ["a", "a", "b"], "offset_mapping": [w0, w1, wb]}
    start = np.full((3, 5), -100.0, dtype=np.float32)
    end = start.copy()
    start[0, :5], end[0, :5] = [4.0, LOW, 2.0, 3.0, LOW], [4.0, LOW, 1.0, 2.0, LOW]  # null 8, best "big" 5
    start[1, :4], end[1, :4] = [1.0, LOW, 3.0, 0.0], [1.0, LOW, 1.0, 4.0]  # null 2, best "world today" 7
    start[2, :5], end[2, :5] = [0.0, LOW, 2.0, LOW, LOW], [0.0, LOW, LOW, 3.0, LOW]  # null 0, "just one" 5
    return examples, features, start, end


def test_multiple_windows_aggregated():
    examples, features, start, end = multi_window_setup()
    preds, nbest, odds = postprocess_predictions(examples, features, start, end, True)
    # "a": null = min(8, 2) = 2; best span 7 -> odds -5 -> span.
    assert preds == {"a": "world today", "b": "just one"}
    assert odds["a"] == pytest.approx(2.0 - 7.0) and odds["b"] == pytest.approx(0.0 - 5.0)
    texts = [b["text"] for b in nbest["a"]]
    assert texts[0] == "world today" and "big" in texts and "" in texts  # both windows' candidates


def test_streaming_batches_in_any_order_match_full_arrays():
    examples, features, start, end = multi_window_setup()
    full = postprocess_predictions(examples, features, start, end, True)
    proc = SpanPostprocessor(examples, features, True)
    proc.add_batch([2, 0], start[[2, 0]], end[[2, 0]])
    proc.add_batch([1], start[1:2, :4], end[1:2, :4])  # per-batch (trimmed) length
    streamed = proc.finalize()
    assert streamed[0] == full[0] and streamed[2] == pytest.approx(full[2])
    assert proc._cand_sl.dtype == np.float32 and proc._cand_sl.shape == (3, 20)  # O(features x n_best)


def test_missing_features_detected():
    examples, features, start, end = multi_window_setup()
    proc = SpanPostprocessor(examples, features, True)
    proc.add_batch([0], start[:1], end[:1])
    with pytest.raises(ValueError, match="2 of 3"):
        proc.finalize()


def test_json_files_written(tmp_path):
    examples, features, start, end = multi_window_setup()
    preds, nbest, odds = postprocess_predictions(examples, features, start, end, True, output_dir=tmp_path)
    assert json.loads((tmp_path / "predictions.json").read_text()) == preds
    assert json.loads((tmp_path / "null_odds.json").read_text()) == pytest.approx(odds)
    written = json.loads((tmp_path / "nbest_predictions.json").read_text())
    assert set(written["a"][0]) == {"start_logit", "end_logit", "text", "probability"}
    assert isinstance(written["a"][0]["probability"], float)

    postprocess_predictions(examples, features, start, end, False, output_dir=tmp_path / "v1", prefix="eval")
    assert sorted(p.name for p in (tmp_path / "v1").iterdir()) == [
        "eval_nbest_predictions.json",
        "eval_predictions.json",
    ]


def test_accepts_datasets_tables():
    datasets = pytest.importorskip("datasets")
    examples, features, start, end = multi_window_setup()
    expected = postprocess_predictions(examples, features, start, end, True)
    got = postprocess_predictions(
        datasets.Dataset.from_dict(examples),
        datasets.Dataset.from_dict(features),
        [start[:2], start[2:]],
        [end[:2], end[2:]],
        True,
    )
    assert got[0] == expected[0] and got[2] == pytest.approx(expected[2])
