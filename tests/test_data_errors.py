"""Bad data files: one line naming the file, the line (or question id) and what is wrong; exit 2, no traceback,
nothing written, no model loaded."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import tiny
from helpers import SHARED
from ted.cli.main import main
from ted.errors import TedInputError
from ted.settings.training_args import DataArguments
from ted.tasks import task_from_name


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny.write_model(tmp_path_factory.mktemp("model") / "m", tiny.build_tokenizer(), layers=1)


@pytest.fixture
def no_model_load(monkeypatch):
    """Every error here must come before the model is loaded."""
    import ted.stages.common

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(ted.stages.common, "load_task_model", refuse)


def finetune_error(capsys, model, train, dev, out) -> str:
    """The one error line of `ted finetune` on these files."""
    return cli_error(
        capsys, "finetune", "--model_name_or_path", model, "--train_file", train, "--validation_file", dev,
        "--output_dir", out,
    )  # fmt: skip


def cli_error(capsys, *argv) -> str:
    """Run `ted ARGV`, expect exit 2 with one error line and no traceback; return that line."""
    capsys.readouterr()
    flags = ["--max_seq_length", tiny.MAX_LEN] if argv[0] != "score-squad" else []
    assert main([str(a) for a in [*argv, *flags]]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith(f"ted {argv[0]}: error: ")]
    assert len(lines) == 1, err
    return lines[0]


def write(path: Path, content: str | bytes) -> Path:
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


GOOD = "sentence,label\nthe movie was good,pos\nthe movie was bad,neg\n"

# file name, content, what the message must say (a regex)
BAD_FILES = [
    ("header.csv", "sentence,label\n", r"header.csv has a header but no data rows"),
    ("empty.csv", "", r"empty.csv is empty"),
    ("blank.jsonl", "\n \n", r"blank.jsonl is empty"),
    ("latin1.csv", b"sentence,label\ngood,pos\nd\xe9j\xe0 vu,neg\n", r"latin1.csv, line 3: not UTF-8 text .*UTF-8"),
    (
        "broken.jsonl",
        '{"text": "a", "label": "pos"}\n{"text": "b", "label": }\n',
        r"broken.jsonl, line 2: not valid JSON",
    ),
    (
        "broken.json",
        '[{"text": "a", "label": "pos"},\n {"text": "b" "label": "neg"}]\n',
        r"broken.json, line 2: not valid JSON",
    ),
    (
        "lines.json",
        '{"text": "a", "label": "pos"}\n{"text": "b", "label": "neg"\n',
        r"lines.json, line 2: not valid JSON",
    ),
    ("array.jsonl", '["a", "pos"]\n', r"array.jsonl, line 1: a JSON list, expected one object per line"),
    ("ragged.csv", "sentence,label\na,pos\nb,neg,oops\nc,pos\n", r"ragged.csv, line 3: 3 field\(s\), but the header"),
    # One field too many on every row: pandas would silently turn the first column into an index.
    ("shifted.csv", "sentence,label\na,pos,x\nb,neg,y\n", r"shifted.csv, line 2: 3 field\(s\)"),
    ("short.csv", "sentence,label\na,pos\nb\n", r"short.csv, line 3: 1 field\(s\)"),
    ("quote.tsv", 'sentence\tlabel\na\tpos\n"open quote\tneg\nb\tpos\n', r"quote.tsv, line 3: .*never closed"),
    ("ragged.tsv", "sentence\tlabel\na\tpos\nb\tneg\textra\n", r"ragged.tsv, line 3: 3 field\(s\).*tab-separated"),
]


@pytest.mark.parametrize("name,content,expected", BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_bad_file_is_one_line_naming_file_and_line(tmp_path, capsys, model, no_model_load, name, content, expected):
    bad, good = write(tmp_path / name, content), write(tmp_path / "good.csv", GOOD)
    out = tmp_path / "out"
    for train, dev in ((bad, good), (good, bad)):  # either file
        line = finetune_error(capsys, model, train, dev, out)
        assert "could not be read" not in line and "An error occurred" not in line
        assert re.search(expected, line), line
    assert not out.exists() and not Path(f"{out}.incomplete").exists()


def test_missing_file(tmp_path, capsys, model, no_model_load):
    good = write(tmp_path / "good.csv", GOOD)
    line = finetune_error(capsys, model, good, tmp_path / "nope.csv", tmp_path / "out")
    assert "--validation_file" in line and "nope.csv does not exist" in line


def _labels_csv(path: Path, labels: list[str]) -> Path:
    return write(path, "sentence,label\n" + "".join(f"text {i},{v}\n" for i, v in enumerate(labels)))


def test_mixed_label_types_are_refused_naming_the_row(tmp_path, capsys, model, no_model_load):
    train = _labels_csv(tmp_path / "train.csv", ["pos", "neg", "1", "0.5"])
    line = finetune_error(capsys, model, train, train, tmp_path / "out")
    # pos/neg on lines 2-3 come first, so the numbers are the odd ones out: the first is on line 4.
    assert "train.csv, line 4: label '1' is a number" in line and "'pos' on line 2" in line
    assert "--task_type classification" in line


def test_one_text_value_among_scores_is_named(tmp_path):
    scores = [f"{0.5 + i / 10:.2f}" for i in range(30)]
    scores[20] = "n/a"
    train = _labels_csv(tmp_path / "train.csv", scores)
    with pytest.raises(TedInputError, match=r"train.csv, line 22: label 'n/a' is text, but other labels .* numbers"):
        task_from_name(None, DataArguments(train_file=str(train), validation_file=str(train)))


def test_bad_regression_value_is_named(tmp_path):
    train = _labels_csv(tmp_path / "train.csv", ["0.5", "1.5", "2"])
    dev = _labels_csv(tmp_path / "dev.csv", ["0.5", "nan"])  # a number to Python, not a score
    args = dict(train_file=str(train), validation_file=str(dev))
    with pytest.raises(TedInputError, match=r"dev.csv, line 3: regression label 'nan' is not a number"):
        task_from_name(None, DataArguments(**args))
    words = _labels_csv(tmp_path / "words.csv", ["good", "bad"])
    with pytest.raises(TedInputError, match=r"words.csv, line 2: regression label 'good' is not a number"):
        task_from_name(None, DataArguments(train_file=str(words), validation_file=str(dev), task_type="regression"))


def test_named_classes_may_look_like_numbers(tmp_path):
    train = _labels_csv(tmp_path / "train.csv", ["pos", "neg", "1", "pos"])
    task = task_from_name(
        None, DataArguments(train_file=str(train), validation_file=str(train), task_type="classification")
    )
    assert task.label_list == ["1", "neg", "pos"]
    task = task_from_name(
        None, DataArguments(train_file=str(train), validation_file=str(train), label_list=["neg", "pos", "1"])
    )
    assert task.label_list == ["neg", "pos", "1"]


def test_lines_count_blank_lines_and_multiline_fields(tmp_path):
    content = 'sentence,label\n\n"two\nlines",pos\nb,neg\n\n,pos\n'
    train = write(tmp_path / "t.csv", content)  # the empty cell is on line 7 as an editor shows it
    with pytest.raises(TedInputError, match=r"t.csv, line 7: column 'sentence' is empty"):
        task_from_name(None, DataArguments(train_file=str(train), validation_file=str(train)))


def test_byte_order_mark_is_not_part_of_the_header(tmp_path):
    train = write(tmp_path / "bom.csv", b"\xef\xbb\xbf" + GOOD.encode())
    task = task_from_name(None, DataArguments(train_file=str(train), validation_file=str(train)))
    assert task.label_list == ["neg", "pos"]


def test_glue_tsv_not_utf8_names_the_line(tmp_path):
    from ted.tasks.glue import read_glue_tsv

    path = write(
        tmp_path / "dev.tsv", b"index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\t\xff\tb\tentailment\n"
    )
    with pytest.raises(TedInputError, match=r"dev.tsv, line 3: not UTF-8 text"):
        read_glue_tsv("rte", str(path))


# ---- SQuAD answers must sit at their answer_start ---------------------------------------------------------


def _squad(path: Path, answer: str, start: int) -> Path:
    context = "the movie was good and the plot was fine"
    qas = [
        {"id": "q-ok", "question": "what", "answers": [{"text": "movie", "answer_start": 4}]},
        {"id": "q-bad", "question": "how", "answers": [{"text": answer, "answer_start": start}]},
    ]
    path.write_text(
        json.dumps({"version": "v2.0", "data": [{"title": "t", "paragraphs": [{"context": context, "qas": qas}]}]})
    )
    return path


@pytest.mark.parametrize(
    "answer,start,problem",
    [
        ("fine", 60, "reaches past the end of its context"),
        ("good", 5, "does not match the context there"),
        ("good", -1, "reaches past"),
    ],
)
def test_squad_answer_start_must_match_its_context(tmp_path, capsys, model, no_model_load, answer, start, problem):
    bad, good = _squad(tmp_path / "bad.json", answer, start), _squad(tmp_path / "good.json", "good", 14)
    for train, dev in ((bad, good), (good, bad)):  # the dev file too: it is not the file it claims to be
        line = cli_error(
            capsys,
            "finetune",
            "--model_name_or_path",
            model,
            "--task_name",
            "squad_v2",
            "--doc_stride",
            16,
            "--train_file",
            train,
            "--validation_file",
            dev,
            "--output_dir",
            tmp_path / "out",
        )
        assert "bad.json: question 'q-bad'" in line and problem in line, line
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(not (SHARED / "data" / "squad_v2").is_dir(), reason="shared SQuAD files not found")
def test_official_squad_files_pass_the_answer_check():
    from ted.squad.windows import squad_rows_from_json

    for path in sorted((SHARED / "data" / "squad_v2").glob("*.json")):
        rows = squad_rows_from_json(path)
        assert rows and sum(len(r["answers"]["text"]) for r in rows) > 0


# ---- ted score-squad ---------------------------------------------------------------------------------------


def test_score_squad_names_a_non_string_prediction(tmp_path, capsys):
    data = _squad(tmp_path / "dev.json", "good", 14)
    preds = write(tmp_path / "preds.json", json.dumps({"q-ok": "movie", "q-bad": {"id": 3}}))
    line = cli_error(capsys, "score-squad", data, preds)
    assert "preds.json: the value for question 'q-bad' is {\"id\": 3}; expected the answer text" in line
    probs = write(tmp_path / "na.json", json.dumps({"q-ok": 0.1, "q-bad": "high"}))
    ok = write(tmp_path / "ok.json", json.dumps({"q-ok": "movie", "q-bad": ""}))
    line = cli_error(capsys, "score-squad", data, ok, "--na_prob_file", probs)
    assert "na.json: the value for question 'q-bad' is \"high\"; expected a number" in line


def test_score_squad_into_a_closed_pipe_exits_quietly(tmp_path):
    data = _squad(tmp_path / "dev.json", "good", 14)
    preds = write(tmp_path / "preds.json", json.dumps({"q-ok": "movie", "q-bad": "good"}))
    read_end, write_end = os.pipe()
    os.close(read_end)  # like `| head` that has already stopped reading
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "ted", "score-squad", str(data), str(preds)],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
    finally:
        os.close(write_end)
    assert proc.stderr == "" and proc.returncode == 141, proc.stderr
