"""Hand-worked checks of the official-style SQuAD 2.0 scoring (ted.squad.metric)."""

import json
import os
from pathlib import Path

import pytest

from ted.errors import TedInputError
from ted.squad.metric import evaluate_squad, evaluate_squad_rows, exact_match, f1_score, main, normalize_answer

OFFICIAL_KEYS = [
    "exact",
    "f1",
    "total",
    "HasAns_exact",
    "HasAns_f1",
    "HasAns_total",
    "NoAns_exact",
    "NoAns_f1",
    "NoAns_total",
]
BEST_KEYS = ["best_exact", "best_exact_thresh", "best_f1", "best_f1_thresh"]


def shared_dir() -> Path:
    return Path(os.environ.get("TED_SHARED_DIR", Path(__file__).resolve().parents[1].parent / "shared"))


def qa(qid, *answers):
    return {
        "id": qid,
        "question": f"question {qid}?",
        "answers": [{"text": a, "answer_start": 0} for a in answers],
        "is_impossible": not answers,
    }


# q1, q2 answerable; q3, q4 unanswerable.
DATA = [
    {
        "title": "T",
        "paragraphs": [
            {"context": "a cat sat down", "qas": [qa("q1", "cat"), qa("q2", "a cat sat down"), qa("q3"), qa("q4")]}
        ],
    }
]
PREDS = {"q1": "Cat.", "q2": "the big cat sat", "q3": "", "q4": "dog"}
# Raw scores: q1 EM 1 F1 1; q2 EM 0, F1 2/3 (see test_partial_overlap_f1); q3 1 1; q4 0 0.


def test_normalisation():
    assert normalize_answer("  The  Quick, Brown-Fox!  ") == "quick brownfox"  # punctuation removed, not split
    assert normalize_answer("An apple a DAY") == "apple day"
    assert normalize_answer("theater anthem") == "theater anthem"  # articles only as whole words
    assert normalize_answer("A.B.") == "ab"
    assert normalize_answer("the") == ""
    assert exact_match("Paris", "  paris. ") == 1


def test_partial_overlap_f1():
    # pred "the big cat sat" -> [big, cat, sat]; gold "a cat sat down" -> [cat, sat, down]
    # common = {cat, sat} = 2; precision = 2/3, recall = 2/3, F1 = 2/3.
    assert f1_score("a cat sat down", "the big cat sat") == pytest.approx(2 / 3)
    # repeated tokens count with multiplicity: pred [cat, cat] vs gold [cat] -> P 1/2, R 1, F1 2/3
    assert f1_score("cat", "cat cat") == pytest.approx(2 / 3)
    assert f1_score("cat", "dog") == 0.0


def test_empty_answers_f1():
    assert f1_score("", "") == 1.0
    assert f1_score("", "something") == 0.0
    assert f1_score("something", "") == 0.0
    assert f1_score("the", "") == 1.0  # normalises to no tokens on both sides


def test_multiple_gold_takes_max():
    data = [{"title": "T", "paragraphs": [{"context": "x", "qas": [qa("q", "Paris", "the city of Paris")]}]}]
    res = evaluate_squad(data, {"q": "City of Paris"})
    assert res["exact"] == 100.0 and res["f1"] == 100.0
    # "paris france" vs "paris": P 1/2 R 1 -> 2/3; vs "city of paris": common {paris}, P 1/2 R 1/3 -> 0.4; max 2/3
    res = evaluate_squad(data, {"q": "Paris, France"})
    assert res["exact"] == 0.0
    assert res["f1"] == pytest.approx(100 * 2 / 3)


def test_unanswerable():
    data = [{"title": "T", "paragraphs": [{"context": "x", "qas": [qa("q")]}]}]
    assert evaluate_squad(data, {"q": ""})["exact"] == 100.0
    res = evaluate_squad(data, {"q": "some text"})
    assert res["exact"] == 0.0 and res["f1"] == 0.0
    assert "HasAns_total" not in res and res["NoAns_total"] == 1


def test_answer_that_normalises_to_empty_still_has_answer():
    # Official rule: has-answer comes from the raw answers list, the gold texts from normalisation.
    data = [{"title": "T", "paragraphs": [{"context": "x", "qas": [qa("q", "The")]}]}]
    res = evaluate_squad(data, {"q": ""})
    assert res["HasAns_total"] == 1 and res["exact"] == 100.0


def test_scores_in_percent_with_official_keys():
    res = evaluate_squad(DATA, PREDS)
    assert list(res) == OFFICIAL_KEYS
    assert res["total"] == 4
    assert res["exact"] == pytest.approx(50.0)  # (1 + 0 + 1 + 0) / 4
    assert res["f1"] == pytest.approx(100 * (1 + 2 / 3 + 1 + 0) / 4)  # 66.67
    assert res["HasAns_exact"] == pytest.approx(50.0) and res["HasAns_f1"] == pytest.approx(100 * (5 / 3) / 2)
    assert res["NoAns_exact"] == pytest.approx(50.0) and res["NoAns_total"] == 2


def test_no_answer_threshold_and_best_thresholds():
    na = {"q1": 0.1, "q2": 0.3, "q3": 0.9, "q4": 0.4}
    res = evaluate_squad(DATA, PREDS, na, na_prob_thresh=0.2)
    assert list(res) == OFFICIAL_KEYS + BEST_KEYS
    # thresh 0.2 empties q2 (HasAns -> 0), q4 and q3 (NoAns -> 1); q1 stays 1: exact = f1 = 3/4.
    assert res["exact"] == pytest.approx(75.0) and res["f1"] == pytest.approx(75.0)
    assert res["HasAns_f1"] == pytest.approx(50.0) and res["NoAns_exact"] == pytest.approx(100.0)
    # Best threshold: start at #no-answer = 2, walk q1(0.1), q2(0.3), q4(0.4), q3(0.9):
    #   exact: +1 -> 3 (best, 0.1), +0 -> 3, -1 (q4 predicts text) -> 2, 0 -> 2  => 75 @ 0.1
    #   f1:    +1 -> 3 (0.1), +2/3 -> 3.667 (best, 0.3), -1 -> 2.667, 0          => 91.67 @ 0.3
    assert res["best_exact"] == pytest.approx(75.0) and res["best_exact_thresh"] == pytest.approx(0.1)
    assert res["best_f1"] == pytest.approx(100 * (11 / 3) / 4) and res["best_f1_thresh"] == pytest.approx(0.3)


def test_missing_prediction_counts_as_wrong(capsys):
    preds = dict(PREDS)
    del preds["q1"]
    res = evaluate_squad(DATA, preds)
    assert "Missing prediction for q1" in capsys.readouterr().err
    assert res["total"] == 4
    assert res["exact"] == pytest.approx(25.0)  # only q3 is right


def test_rows_api_matches_articles():
    rows = [
        {"id": q["id"], "answers": {"text": [a["text"] for a in q["answers"]]}} for q in DATA[0]["paragraphs"][0]["qas"]
    ]
    assert evaluate_squad_rows(rows, PREDS) == evaluate_squad(DATA, PREDS)


def test_bad_schema_raises():
    with pytest.raises(TedInputError):
        evaluate_squad([{"title": "no paragraphs"}], {})


def test_cli_prints_official_json(tmp_path, capsys):
    data_file, pred_file, na_file, out_file = (tmp_path / n for n in ("d.json", "p.json", "na.json", "o.json"))
    data_file.write_text(json.dumps({"version": "v2.0", "data": DATA}))
    pred_file.write_text(json.dumps(PREDS))
    na_file.write_text(json.dumps({"q1": 0.1, "q2": 0.3, "q3": 0.9, "q4": 0.4}))
    assert main([str(data_file), str(pred_file)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert list(printed) == OFFICIAL_KEYS and printed["exact"] == pytest.approx(50.0)
    main(
        [
            str(data_file),
            str(pred_file),
            "--na_prob_file",
            str(na_file),
            "--na_prob_thresh",
            "0.2",
            "--out_file",
            str(out_file),
        ]
    )
    printed = json.loads(capsys.readouterr().out)
    assert list(printed) == OFFICIAL_KEYS + BEST_KEYS
    assert json.loads(out_file.read_text()) == printed
    with pytest.raises(TedInputError):
        main([str(tmp_path / "missing.json"), str(pred_file)])


def test_shared_dev_subset_gold_predictions_score_100():
    path = shared_dir() / "data" / "squad_v2" / "dev-v2.0-4articles.json"
    if not path.is_file():
        pytest.skip(f"shared SQuAD dev subset not found at {path} (set TED_SHARED_DIR)")
    data = json.loads(path.read_text(encoding="utf-8"))["data"]
    qas = [q for a in data for p in a["paragraphs"] for q in p["qas"]]
    preds = {q["id"]: (q["answers"][0]["text"] if q["answers"] else "") for q in qas}
    res = evaluate_squad(data, preds)
    assert res["total"] == len(qas) == 1494
    assert res["NoAns_total"] == sum(1 for q in qas if not q["answers"]) == 769
    assert res["exact"] == pytest.approx(100.0) and res["f1"] == pytest.approx(100.0)


def test_best_threshold_walks_ties_in_null_odds_file_order():
    """The official script visits equal no-answer probabilities in the order of the null-odds file.

    q1 is answerable ("x", predicted right), q2 is not (but "y" is predicted). Starting from "all
    forced empty" (score 1 of 2): visiting q2 first gives 1 - 1 = 0 then +1 = 1 (never above 1, so
    best stays 50% at threshold 0.0); visiting q1 first gives 2 (100% at 0.5) before q2 brings it back.
    """
    data = [
        {
            "title": "t",
            "paragraphs": [
                {
                    "context": "x y",
                    "qas": [
                        {"id": "q1", "question": "?", "answers": [{"text": "x", "answer_start": 0}]},
                        {"id": "q2", "question": "?", "answers": []},
                    ],
                }
            ],
        }
    ]
    preds = {"q1": "x", "q2": "y"}
    q2_first = evaluate_squad(data, preds, na_probs={"q2": 0.5, "q1": 0.5})
    q1_first = evaluate_squad(data, preds, na_probs={"q1": 0.5, "q2": 0.5})
    assert (q2_first["best_exact"], q2_first["best_exact_thresh"]) == (50.0, 0.0)
    assert (q1_first["best_exact"], q1_first["best_exact_thresh"]) == (100.0, 0.5)
