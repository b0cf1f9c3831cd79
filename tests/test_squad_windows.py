"""Window tokenization of SQuAD examples (ted.squad.windows) with the shared MiniLM fast tokenizer."""

import json
import os
from pathlib import Path

import pytest

from ted.errors import TedInputError
from ted.squad.windows import prepare_eval_features, prepare_train_features, squad_examples_from_json

MAX_LEN, STRIDE = 48, 16
WORDS = "alpha bravo charlie delta echo golf hotel india lima mike november oscar papa quebec romeo sierra".split()
# Each "<word><n>" is two word pieces, so 120 words is ~240 tokens: several windows of 48.
CONTEXT = " ".join(f"{WORDS[i % len(WORDS)]}{i}" for i in range(120))
QUESTION = "   which words come next?"  # leading spaces must be stripped


def shared_dir() -> Path:
    return Path(os.environ.get("TED_SHARED_DIR", Path(__file__).resolve().parents[1].parent / "shared"))


@pytest.fixture(scope="module")
def tokenizer():
    folder = shared_dir() / "models" / "all-MiniLM-L6-v2"
    if not folder.is_dir():
        pytest.skip(f"shared tokenizer not found at {folder} (set TED_SHARED_DIR to the shared folder)")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


def examples_with(answers):
    """One example per answer spec: None = unanswerable, else the answer text (first occurrence)."""
    ex = {"id": [], "question": [], "context": [], "answers": []}
    for i, ans in enumerate(answers):
        ex["id"].append(f"e{i}")
        ex["question"].append(QUESTION)
        ex["context"].append(CONTEXT)
        if ans is None:
            ex["answers"].append({"text": [], "answer_start": []})
        else:
            ex["answers"].append({"text": [ans], "answer_start": [CONTEXT.index(ans)]})
    return ex


def window_char_ranges(tokenizer, max_len=MAX_LEN):
    ev = prepare_eval_features(examples_with([None]), tokenizer, max_len, STRIDE)
    spans = []
    for offs in ev["offset_mapping"]:
        ctx = [o for o in offs if o is not None]
        spans.append((ctx[0][0], ctx[-1][1]))
    return spans


def check_labels(tokenizer, feats, answer, n_windows):
    """Every window: the label decodes to the answer when it lies fully inside, else CLS (0)."""
    start_char = CONTEXT.index(answer)
    end_char = start_char + len(answer)
    spans = window_char_ranges(tokenizer)
    assert len(feats["input_ids"]) == len(spans) == n_windows
    inside = []
    for ids, s, e, (lo, hi) in zip(feats["input_ids"], feats["start_positions"], feats["end_positions"], spans):
        if lo <= start_char and end_char <= hi:
            assert 0 < s <= e
            assert tokenizer.decode(ids[s : e + 1]) == answer.lower()
            inside.append(True)
        else:
            assert (s, e) == (0, 0) and ids[0] == tokenizer.cls_token_id
            inside.append(False)
    return inside


def test_answer_split_across_windows(tokenizer):
    spans = window_char_ranges(tokenizer)
    assert len(spans) >= 3
    # An answer straddling the end of window 0: partly in window 0 (-> CLS), fully in window 1.
    w0_end = spans[0][1]
    start = CONTEXT.rindex(" ", 0, w0_end - 8) + 1
    end = CONTEXT.index(" ", w0_end + 12)
    answer = CONTEXT[start:end]
    assert start < w0_end < end
    feats = prepare_train_features(examples_with([answer]), tokenizer, MAX_LEN, STRIDE)
    inside = check_labels(tokenizer, feats, answer, len(spans))
    assert inside[0] is False and inside[1] is True


def test_answer_beyond_first_window(tokenizer):
    answer = CONTEXT.split()[-2] + " " + CONTEXT.split()[-1]  # the last two words
    spans = window_char_ranges(tokenizer)
    feats = prepare_train_features(examples_with([answer]), tokenizer, MAX_LEN, STRIDE)
    inside = check_labels(tokenizer, feats, answer, len(spans))
    assert inside[0] is False and inside[-1] is True
    assert (feats["start_positions"][0], feats["end_positions"][0]) == (0, 0)


def test_no_answer_labels_cls(tokenizer):
    feats = prepare_train_features(examples_with([None]), tokenizer, MAX_LEN, STRIDE)
    assert set(feats["start_positions"]) == {0} and set(feats["end_positions"]) == {0}
    assert "offset_mapping" not in feats and "overflow_to_sample_mapping" not in feats


def test_question_whitespace_stripped_and_padding(tokenizer):
    feats = prepare_train_features(examples_with(["mike9"]), tokenizer, MAX_LEN, STRIDE, pad_to_max_length=True)
    assert all(len(ids) == MAX_LEN for ids in feats["input_ids"])
    first = tokenizer.decode(feats["input_ids"][0][1:6])
    assert first.startswith("which words")


def test_eval_features_offsets_only_on_context(tokenizer):
    ex = examples_with(["mike9", None])
    ev = prepare_eval_features(ex, tokenizer, MAX_LEN, STRIDE, pad_to_max_length=True)
    n0 = ev["example_id"].count("e0")
    assert n0 > 1 and ev["example_id"] == ["e0"] * n0 + ["e1"] * n0
    for ids, offs in zip(ev["input_ids"], ev["offset_mapping"]):
        sep = tokenizer.sep_token_id
        q_end = ids.index(sep)  # [CLS] question [SEP] context [SEP] pad...
        c_end = ids.index(sep, q_end + 1)
        assert all(o is None for o in offs[: q_end + 1])  # CLS, question, first SEP
        assert all(o is not None for o in offs[q_end + 1 : c_end])  # context tokens keep offsets
        assert all(o is None for o in offs[c_end:])  # last SEP and padding
        for i in range(q_end + 1, c_end):
            s, e = offs[i]
            assert CONTEXT[s:e].lower() == tokenizer.convert_ids_to_tokens(ids[i]).replace("##", "")


def test_left_padding_puts_context_first(tokenizer):
    tok = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    tok.padding_side = "left"
    answer = "quebec13 romeo14"
    feats = prepare_train_features(examples_with([answer]), tok, MAX_LEN, STRIDE)
    labelled = [
        (ids, s, e) for ids, s, e in zip(feats["input_ids"], feats["start_positions"], feats["end_positions"]) if s
    ]
    assert labelled and all(tok.decode(ids[s : e + 1]) == answer for ids, s, e in labelled)
    assert tok.decode(feats["input_ids"][0][1:3]) == "alpha0"  # context comes before the question


def test_slow_tokenizer_rejected():
    class Slow:
        is_fast = False

    with pytest.raises(TedInputError, match="fast tokenizer"):
        prepare_eval_features(examples_with([None]), Slow(), MAX_LEN, STRIDE)


def write(tmp_path, obj, name="f.json"):
    path = tmp_path / name
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return path


def test_json_loader_flattens_official_schema(tmp_path):
    raw = {
        "version": "v2.0",
        "data": [
            {
                "title": "T",
                "paragraphs": [
                    {
                        "context": "Paris is in France.",
                        "qas": [
                            {
                                "id": "a",
                                "question": "Where?",
                                "answers": [{"text": "France", "answer_start": 12}],
                                "is_impossible": False,
                            },
                            {
                                "id": "b",
                                "question": "Who?",
                                "answers": [],
                                "plausible_answers": [{"text": "Paris", "answer_start": 0}],
                                "is_impossible": True,
                            },
                        ],
                    }
                ],
            }
        ],
    }
    ds = squad_examples_from_json(write(tmp_path, raw))
    assert ds.column_names == ["id", "title", "context", "question", "answers"]
    assert ds[0]["answers"] == {"text": ["France"], "answer_start": [12]}
    assert ds[1]["answers"] == {"text": [], "answer_start": []}  # plausible answers are not gold
    assert ds[1]["title"] == "T" and ds[1]["context"] == "Paris is in France."


@pytest.mark.parametrize(
    "content, message",
    [
        ("not json", "not valid JSON"),
        ({"version": "v2.0"}, "'data'"),
        ({"data": [{"title": "T"}]}, "'paragraphs'"),
        ({"data": [{"paragraphs": [{"qas": []}]}]}, "'context'"),
        ({"data": [{"paragraphs": [{"context": "c"}]}]}, "'qas'"),
        ({"data": [{"paragraphs": [{"context": "c", "qas": [{"id": "x", "question": "q"}]}]}]}, "answers"),
    ],
)
def test_json_loader_rejects_bad_files(tmp_path, content, message):
    with pytest.raises(TedInputError, match=message):
        squad_examples_from_json(write(tmp_path, content))


def test_json_loader_missing_file(tmp_path):
    with pytest.raises(TedInputError, match="not found"):
        squad_examples_from_json(tmp_path / "nope.json")


def test_json_loader_shared_dev_subset():
    path = shared_dir() / "data" / "squad_v2" / "dev-v2.0-4articles.json"
    if not path.is_file():
        pytest.skip(f"shared SQuAD dev subset not found at {path} (set TED_SHARED_DIR)")
    ds = squad_examples_from_json(path)
    assert len(ds) == 1494
    assert sum(1 for a in ds["answers"] if not a["text"]) == 769
