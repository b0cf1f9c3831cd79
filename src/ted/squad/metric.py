"""SQuAD 1.1 / 2.0 scoring, following the rules of the official SQuAD 2.0 evaluation script.

Our own implementation (clean-room) of the same behaviour: answer normalisation, exact match,
bag-of-tokens F1 (max over gold answers), HasAns/NoAns splits, the no-answer threshold and the
best-threshold search. Every score is in percent. SQuAD 1.1 files score the same way (no NoAns
split appears since every question has an answer).

CLI: ``python -m ted.squad.metric DATA_FILE PRED_FILE [--na_prob_file F] [--na_prob_thresh T]
[--out_file F]`` (wired as ``ted score-squad``).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import string
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Optional, Union

from ted.errors import TedInputError

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)


def normalize_answer(text: str) -> str:
    """Lower case, drop punctuation, drop the articles a/an/the, collapse whitespace (official order)."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def answer_tokens(text: str) -> list[str]:
    return normalize_answer(text).split() if text else []


def exact_match(gold: str, pred: str) -> int:
    return int(normalize_answer(gold) == normalize_answer(pred))


def f1_score(gold: str, pred: str) -> float:
    gold_toks = answer_tokens(gold)
    pred_toks = answer_tokens(pred)
    if not gold_toks or not pred_toks:
        # No-answer case: right only when both sides are empty.
        return float(gold_toks == pred_toks)
    common = collections.Counter(gold_toks) & collections.Counter(pred_toks)
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(pred_toks)
    recall = num_same / len(gold_toks)
    return 2 * precision * recall / (precision + recall)


# qid -> (gold texts, has an answer); the articles of a SQuAD JSON file (or the whole file); flat HF rows.
Gold = Mapping[str, tuple[list[str], bool]]
Articles = Union[Mapping[str, Any], Iterable[Mapping[str, Any]]]
Rows = Iterable[Mapping[str, Any]]
NullOdds = Optional[Mapping[str, float]]  # qid -> null odds (SQuAD 2.0), or None


def gold_answer_texts(texts: Iterable[str]) -> list[str]:
    """Gold answers that survive normalisation; [""] for an unanswerable question."""
    gold = [t for t in texts if normalize_answer(t)]
    return gold or [""]


# Gold tables map qid -> (normalised-non-empty gold texts or [""], has_answer). has_answer follows
# the official script: the raw answers list is non-empty (even if every text normalises to "").


def _gold_from_articles(dataset: Articles) -> collections.OrderedDict[str, tuple[list[str], bool]]:
    if isinstance(dataset, Mapping) and "data" in dataset:  # whole JSON file given
        dataset = dataset["data"]
    gold = collections.OrderedDict()
    try:
        for article in dataset:
            for paragraph in article["paragraphs"]:
                for qa in paragraph["qas"]:
                    texts = [a["text"] for a in qa["answers"]]
                    gold[qa["id"]] = (gold_answer_texts(texts), bool(texts))
    except (KeyError, TypeError) as exc:
        raise TedInputError(
            f"SQuAD data does not follow the official schema (missing or malformed {exc}); expected "
            "the JSON 'data' list: data[].paragraphs[].qas[] with id and answers[].text."
        ) from None
    return gold


def _gold_from_rows(examples: Rows) -> collections.OrderedDict[str, tuple[list[str], bool]]:
    gold = collections.OrderedDict()
    for row in examples:
        texts = list(row["answers"]["text"])
        gold[row["id"]] = (gold_answer_texts(texts), bool(texts))
    return gold


def _raw_scores(gold: Gold, predictions: Mapping[str, str]) -> tuple[dict[str, float], dict[str, float]]:
    exact, f1 = {}, {}
    for qid, (answers, _) in gold.items():
        if qid not in predictions:
            print(f"Missing prediction for {qid}", file=sys.stderr)
            exact[qid] = f1[qid] = 0.0  # counted as wrong
            continue
        pred = predictions[qid]
        exact[qid] = float(max(exact_match(a, pred) for a in answers))
        f1[qid] = max(f1_score(a, pred) for a in answers)
    return exact, f1


def _apply_threshold(
    scores: Mapping[str, float],
    na_probs: Mapping[str, float],
    has_ans: Mapping[str, bool],
    predicted: Mapping[str, str],
    thresh: float,
) -> dict[str, float]:
    """A prediction whose na prob exceeds thresh counts as the empty answer."""
    out = {}
    for qid, s in scores.items():
        if qid in predicted and na_probs[qid] > thresh:
            out[qid] = float(not has_ans[qid])
        else:
            out[qid] = s
    return out


def _summary(
    exact: Mapping[str, float], f1: Mapping[str, float], qids: Sequence[str]
) -> collections.OrderedDict[str, float]:
    total = len(qids)
    return collections.OrderedDict(
        [
            ("exact", 100.0 * sum(exact[q] for q in qids) / total),
            ("f1", 100.0 * sum(f1[q] for q in qids) / total),
            ("total", total),
        ]
    )


def _best_threshold(
    predictions: Mapping[str, str],
    scores: Mapping[str, float],
    na_probs: Mapping[str, float],
    has_ans: Mapping[str, bool],
) -> tuple[float, float]:
    """Official find_best_thresh: start with every prediction forced to empty, then un-force them
    in increasing na-prob order, keeping the running score's maximum."""
    # Missing predictions never change with the threshold, they stay wrong.
    cur = sum(1 for q, h in has_ans.items() if not h and q in predictions)
    best, best_thresh = cur, 0.0
    # Like the official script, ties are visited in the order of the no-answer file (na_probs' own order):
    # the running maximum is taken inside runs of equal probabilities, so that order shows in best_*.
    for qid in sorted((q for q in na_probs if q in scores and q in predictions), key=lambda q: na_probs[q]):
        if has_ans[qid]:
            cur += scores[qid]
        elif predictions[qid]:
            cur -= 1
        if cur > best:
            best, best_thresh = cur, na_probs[qid]
    return 100.0 * best / len(scores), float(best_thresh)


def _evaluate(
    gold: Gold, predictions: Mapping[str, str], na_probs: Optional[Mapping[str, float]], na_prob_thresh: float
) -> collections.OrderedDict[str, float]:
    if not gold:
        raise TedInputError("The SQuAD data holds no questions; nothing to score.")
    has_ans = {q: h for q, (_, h) in gold.items()}
    exact_raw, f1_raw = _raw_scores(gold, predictions)
    probs = {q: 0.0 for q in predictions}
    if na_probs is not None:
        missing = [q for q in gold if q in predictions and q not in na_probs]
        if missing:
            print(f"Missing no-answer probability for {len(missing)} question(s), using 0.0", file=sys.stderr)
        # The file's order first (it decides how ties are walked), then questions it lacks.
        probs = {**{q: float(p) for q, p in na_probs.items()}, **{q: 0.0 for q in missing}}
    exact = _apply_threshold(exact_raw, probs, has_ans, predictions, na_prob_thresh)
    f1 = _apply_threshold(f1_raw, probs, has_ans, predictions, na_prob_thresh)

    result = _summary(exact, f1, list(gold))
    for name, flag in (("HasAns", True), ("NoAns", False)):
        qids = [q for q, h in has_ans.items() if h == flag]
        if qids:  # like the official script, a split appears only when non-empty
            for key, value in _summary(exact, f1, qids).items():
                result[f"{name}_{key}"] = value
    if na_probs is not None:
        result["best_exact"], result["best_exact_thresh"] = _best_threshold(predictions, exact_raw, probs, has_ans)
        result["best_f1"], result["best_f1_thresh"] = _best_threshold(predictions, f1_raw, probs, has_ans)
    return result


def evaluate_squad(
    dataset: Articles, predictions: Mapping[str, str], na_probs: NullOdds = None, na_prob_thresh: float = 1.0
) -> collections.OrderedDict[str, float]:
    """Score predictions (qid -> answer text) against the JSON's "data" list of articles.

    Returns the official keys, scores in percent: exact, f1, total, HasAns_*, NoAns_* and, when
    na_probs is given, best_exact(_thresh) and best_f1(_thresh).
    """
    return _evaluate(_gold_from_articles(dataset), predictions, na_probs, na_prob_thresh)


def evaluate_squad_rows(
    examples: Rows, predictions: Mapping[str, str], na_probs: NullOdds = None, na_prob_thresh: float = 1.0
) -> collections.OrderedDict[str, float]:
    """Same as evaluate_squad for flat rows in the HF squad schema (id, answers{"text": [...]})."""
    return _evaluate(_gold_from_rows(examples), predictions, na_probs, na_prob_thresh)


def _load_json(path: str, what: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise TedInputError(f"{what} file not found: {path}") from None
    except json.JSONDecodeError as exc:
        raise TedInputError(f"{what} file {path} is not valid JSON: {exc}") from None


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="score-squad",
        allow_abbrev=False,
        description="Official-style SQuAD 2.0 scoring (scores in percent).",
    )
    parser.add_argument("data_file", help="SQuAD JSON file (official schema).")
    parser.add_argument("pred_file", help="JSON file mapping question id to predicted answer text.")
    parser.add_argument(
        "--na_prob_file", "--na-prob-file", "-n", help="JSON file: question id -> no-answer probability."
    )
    parser.add_argument(
        "--na_prob_thresh",
        "--na-prob-thresh",
        "-t",
        type=float,
        default=1.0,
        help="Predict the empty answer when the no-answer probability exceeds this (default 1.0).",
    )
    parser.add_argument("--out_file", "--out-file", "-o", help="Also write the scores as JSON here.")
    args = parser.parse_args(argv)

    data = _load_json(args.data_file, "SQuAD data")
    if not isinstance(data, dict) or "data" not in data:
        raise TedInputError(f"{args.data_file} is not a SQuAD file: expected a JSON object with a 'data' list.")
    preds = _load_json(args.pred_file, "Prediction")
    _check_values(preds, args.pred_file, lambda v: isinstance(v, str), 'the answer text (a string; "" for no answer)')
    na_probs = _load_json(args.na_prob_file, "No-answer probability") if args.na_prob_file else None
    if na_probs is not None:
        _check_values(na_probs, args.na_prob_file, _is_probability, "a number (the no-answer probability)")

    result = evaluate_squad(data["data"], preds, na_probs, args.na_prob_thresh)
    if args.out_file:
        with open(args.out_file, "w", encoding="utf-8") as f:
            json.dump(result, f)
    return _print(json.dumps(result, indent=2))


def _is_probability(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_values(table: Any, path: str, valid: Callable[[Any], bool], expected: str) -> None:
    """A prediction file maps question ids to values of one kind; name the first question that breaks it."""
    if not isinstance(table, dict):
        raise TedInputError(f"{path} must hold a JSON object mapping question id to {expected}.")
    for qid, value in table.items():
        if not valid(value):
            raise TedInputError(f"{path}: the value for question {qid!r} is {json.dumps(value)}; expected {expected}.")


def _print(text: str) -> int:
    """Print the scores; a reader that stops early (`| head`) ends the command quietly, like any Unix tool."""
    try:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()  # inside the try: a closed pipe fails here, not in the interpreter's exit flush
    except BrokenPipeError:
        # Python's documented recipe: point stdout at devnull so the exit-time flush cannot fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, the status of a tool killed by a closed pipe
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except TedInputError as err:  # a bad file is a user error: message, no traceback
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
