"""SQuAD examples -> overlapping token windows (the HF run_qa pre-processing the paper's code uses).

A long context is split into windows of at most ``max_seq_length`` tokens that overlap by
``doc_stride`` tokens; each window repeats the question. Training windows get start/end token
labels (the CLS index when the answer is absent or not fully inside the window); evaluation
windows keep their example id and the character offsets of their context tokens.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

from ted.errors import TedInputError

if TYPE_CHECKING:
    import datasets
    from transformers import BatchEncoding, PreTrainedTokenizerBase
    from transformers import PreTrainedTokenizerBase as Tokenizer

# A window's (start, end) character offsets per token.
Offsets = list[tuple[int, int]]


def _require_fast(tokenizer: PreTrainedTokenizerBase) -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise TedInputError(
            f"SQuAD windows need a fast tokenizer (offset mappings); got {type(tokenizer).__name__}. "
            "Load it with AutoTokenizer.from_pretrained(..., use_fast=True)."
        )


def _tokenize_windows(
    examples: dict[str, list],
    tokenizer: PreTrainedTokenizerBase,
    max_seq_length: int,
    doc_stride: int,
    pad_to_max_length: bool,
) -> tuple[BatchEncoding, int, list[int], list[Offsets]]:
    """Tokenize (question, context) pairs into windows; returns (encoding, context sequence id, window -> example,
    window -> token offsets)."""
    _require_fast(tokenizer)
    questions = [q.lstrip() for q in examples["question"]]  # leading spaces waste window room
    contexts = list(examples["context"])
    pad_on_right = tokenizer.padding_side == "right"
    # The truncated (strided) sequence must be the context; with left padding it goes first.
    first, second = (questions, contexts) if pad_on_right else (contexts, questions)
    enc = tokenizer(
        first,
        second,
        truncation="only_second" if pad_on_right else "only_first",
        max_length=max_seq_length,
        stride=doc_stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        padding="max_length" if pad_to_max_length else False,
    )
    sample_map, offset_map = enc.pop("overflow_to_sample_mapping"), enc.pop("offset_mapping")
    return enc, (1 if pad_on_right else 0), sample_map, offset_map


def _context_span(sequence_ids: list, context_id: int) -> tuple[int, int]:
    """First and last token index of the context inside a window (it is contiguous)."""
    lo = sequence_ids.index(context_id)
    hi = len(sequence_ids) - 1 - sequence_ids[::-1].index(context_id)
    return lo, hi


def _label_window(
    offsets: Offsets, lo: int, hi: int, start_char: int, end_char: int, cls_index: int
) -> tuple[int, int]:
    """Token labels of the answer chars [start_char, end_char) inside context tokens lo..hi."""
    if not (offsets[lo][0] <= start_char and offsets[hi][1] >= end_char):
        return cls_index, cls_index  # answer not fully inside this window
    # Start: last context token starting at or before start_char. End: first context token ending
    # at or after end_char. (Restricted to the context, unlike HF's scan which can run past it.)
    start = lo
    while start < hi and offsets[start + 1][0] <= start_char:
        start += 1
    end = hi
    while end > lo and offsets[end - 1][1] >= end_char:
        end -= 1
    return start, max(start, end)


def prepare_train_features(
    batch: dict, tokenizer: Tokenizer, max_seq_length: int = 384, doc_stride: int = 128, pad_to_max_length: bool = False
) -> dict[str, list]:
    """Batched map function: a batch of examples (id, question, context, answers) -> labelled windows.

    Output: the tokenizer's model inputs plus ``start_positions`` / ``end_positions``.
    """
    enc, context_id, sample_map, offset_map = _tokenize_windows(
        batch, tokenizer, max_seq_length, doc_stride, pad_to_max_length
    )
    starts, ends = [], []
    for i, offsets in enumerate(offset_map):
        input_ids = enc["input_ids"][i]
        cls_index = input_ids.index(tokenizer.cls_token_id) if tokenizer.cls_token_id in input_ids else 0
        answers = batch["answers"][sample_map[i]]
        if len(answers["answer_start"]) == 0 or len(answers["text"]) == 0:
            starts.append(cls_index)
            ends.append(cls_index)
            continue
        start_char = int(answers["answer_start"][0])  # the first gold answer is the training target
        end_char = start_char + len(answers["text"][0])
        lo, hi = _context_span(enc.sequence_ids(i), context_id)
        s, e = _label_window(offsets, lo, hi, start_char, end_char, cls_index)
        starts.append(s)
        ends.append(e)
    out = dict(enc)
    out["start_positions"] = starts
    out["end_positions"] = ends
    return out


def prepare_eval_features(
    batch: dict, tokenizer: Tokenizer, max_seq_length: int = 384, doc_stride: int = 128, pad_to_max_length: bool = False
) -> dict[str, list]:
    """Batched map function: a batch of examples -> windows with ``example_id`` and ``offset_mapping``.

    Offsets of non-context tokens (question, special tokens, padding) are None, so post-processing
    can tell which positions may hold an answer.
    """
    enc, context_id, sample_map, offset_map = _tokenize_windows(
        batch, tokenizer, max_seq_length, doc_stride, pad_to_max_length
    )
    out = dict(enc)
    out["example_id"] = [batch["id"][j] for j in sample_map]
    out["offset_mapping"] = [
        [tuple(o) if sid == context_id else None for sid, o in zip(enc.sequence_ids(i), offsets)]
        for i, offsets in enumerate(offset_map)
    ]
    return out


# Same features as the hub dataset rajpurkar/squad_v2, so local files and hub data concatenate.
def squad_features() -> datasets.Features:
    import datasets

    List = getattr(datasets, "List", None) or datasets.Sequence  # datasets < 4 only has Sequence
    return datasets.Features(
        {
            "id": datasets.Value("string"),
            "title": datasets.Value("string"),
            "context": datasets.Value("string"),
            "question": datasets.Value("string"),
            "answers": {
                "text": List(datasets.Value("string")),
                "answer_start": List(datasets.Value("int32")),
            },
        }
    )


def _check_answers(path: str, qid: str, context: str, texts: list[str], starts: list[int]) -> None:
    """Each gold answer must sit in its context at answer_start: training labels are cut from that offset,
    so a wrong one would teach the model a wrong span without any error. Checked in dev files too: the
    metric reads only the texts, but a mismatch means the file is not what it claims to be (the official
    SQuAD files have none)."""
    for text, start in zip(texts, starts):
        if start < 0 or start + len(text) > len(context):
            problem = f"reaches past the end of its context ({len(context)} characters)"
        elif context[start : start + len(text)] != text:
            problem = f"does not match the context there, which reads {context[start : start + len(text)]!r}"
        else:
            continue
        raise TedInputError(
            f"{path}: question {qid!r}: answer {text!r} at answer_start {start} {problem}; answer_start must be "
            f"the character offset of the answer text in its context."
        )


def squad_rows_from_json(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Flatten an official SQuAD 1.1/2.0 JSON file into HF squad rows (plain dicts)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise TedInputError(f"SQuAD file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TedInputError(f"SQuAD file {path} is not valid JSON: {exc}") from None
    expected = (
        "expected the official schema "
        "data[].paragraphs[].{context, qas[].{id, question, answers[].{text, answer_start}}}"
    )
    if not isinstance(raw, dict) or not isinstance(raw.get("data"), list):
        raise TedInputError(f"{path} is not a SQuAD file: no top-level 'data' list; {expected}.")
    rows = []
    for a_i, article in enumerate(raw["data"]):
        where = f"{path}: data[{a_i}]"
        if not isinstance(article, dict) or not isinstance(article.get("paragraphs"), list):
            raise TedInputError(f"{where} has no 'paragraphs' list; {expected}.")
        title = str(article.get("title", ""))
        for p_i, paragraph in enumerate(article["paragraphs"]):
            pwhere = f"{where}.paragraphs[{p_i}]"
            if not isinstance(paragraph, dict) or not isinstance(paragraph.get("context"), str):
                raise TedInputError(f"{pwhere} has no 'context' string; {expected}.")
            if not isinstance(paragraph.get("qas"), list):
                raise TedInputError(f"{pwhere} has no 'qas' list; {expected}.")
            for q_i, qa in enumerate(paragraph["qas"]):
                qwhere = f"{pwhere}.qas[{q_i}]"
                missing = [k for k in ("id", "question", "answers") if not isinstance(qa, dict) or k not in qa]
                if missing:
                    raise TedInputError(f"{qwhere} lacks {', '.join(missing)}; {expected}.")
                try:
                    texts = [str(ans["text"]) for ans in qa["answers"]]
                    starts = [int(ans["answer_start"]) for ans in qa["answers"]]
                except (KeyError, TypeError, ValueError):
                    raise TedInputError(f"{qwhere}: every answer needs 'text' and an integer 'answer_start'.") from None
                _check_answers(path, str(qa["id"]), paragraph["context"], texts, starts)
                # Like the hub loader, "answers" decides answerability (is_impossible questions have
                # an empty list; their plausible_answers are not gold and are dropped).
                rows.append(
                    {
                        "id": str(qa["id"]),
                        "title": title,
                        "context": paragraph["context"],
                        "question": str(qa["question"]),
                        "answers": {"text": texts, "answer_start": starts},
                    }
                )
    if not rows:
        raise TedInputError(f"{path} holds no questions.")
    return rows


def squad_examples_from_json(path: str | os.PathLike) -> datasets.Dataset:
    """Load an official SQuAD JSON file as a ``datasets.Dataset`` in the hub squad_v2 schema."""
    import datasets

    return datasets.Dataset.from_list(squad_rows_from_json(path), features=squad_features())
