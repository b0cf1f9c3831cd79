"""Custom --train_file / --validation_file data: formats, label handling, task type, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ted.errors import TedInputError
from ted.settings.training_args import DataArguments
from ted.tasks import load_task, task_from_name

WORDS = ["the", "movie", "was", "good", "bad", "great", "a", "cat", "dog", "sat", "ok"]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    # A tiny local WordPiece vocabulary: no hub, no shared data needed.
    from transformers import BertTokenizer

    vocab = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS) + "\n")
    return BertTokenizer(vocab=str(vocab))


class ExplodingTokenizer:
    def __call__(self, *args, **kwargs):
        raise AssertionError("tokenizer called before the input was validated")


def _csv(path: Path, header: list[str], rows: list[list], sep: str = ",") -> str:
    path.write_text("\n".join(sep.join(str(v) for v in row) for row in [header] + rows) + "\n")
    return str(path)


def _jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _load(tokenizer, train, dev, **kwargs):
    return load_task(DataArguments(train_file=train, validation_file=dev, **kwargs), tokenizer)


def test_csv_round_trip(tmp_path, tokenizer):
    rows = [["the movie was good", "pos"], ["the movie was bad", "neg"], ["great", "pos"], ["NA", "neg"]]
    train = _csv(tmp_path / "train.csv", ["sentence", "label"], rows)
    dev = _csv(tmp_path / "dev.csv", ["sentence", "label"], [["a good movie", "pos"], ["bad", "neg"]])
    task, data = _load(tokenizer, train, dev)
    assert (task.name, task.head, task.label_list, task.selection_metric) == (
        "custom",
        "classification",
        ["neg", "pos"],
        "accuracy",
    )
    assert data.train["labels"] == [1, 0, 1, 0]
    assert data.eval_sets["validation"]["labels"] == [1, 0]
    assert set(data.train.column_names) == {"input_ids", "token_type_ids", "attention_mask", "labels"}
    ids = data.train[0]["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids) == ["[CLS]", "the", "movie", "was", "good", "[SEP]"]
    assert data.train.features["labels"].dtype == "int64"
    assert set(task.compute_metrics([[0.0, 1.0], [1.0, 0.0]], [1, 0])) == {"accuracy", "f1"}


def test_tsv_pair_round_trip(tmp_path, tokenizer):
    header = ["id", "sentence1", "sentence2", "label"]
    train = _csv(
        tmp_path / "train.tsv",
        header,
        [[0, "a cat", "a dog", 0], [1, "the cat", "the cat sat", 1], [2, "a, b", "ok", 1]],
        sep="\t",
    )
    dev = _csv(tmp_path / "dev.tsv", header, [[9, "a cat sat", "a dog sat", 0]], sep="\t")
    task, data = _load(tokenizer, train, dev, max_seq_length=6, pad_to_max_length=True)
    assert task.label_list == ["0", "1"]
    assert data.train["labels"] == [0, 1, 1]
    row = data.eval_sets["validation"][0]
    assert len(row["input_ids"]) == 6 and 1 in row["token_type_ids"]  # truncated pair, padded


def test_jsonl_regression_inferred(tmp_path, tokenizer):
    train = _jsonl(
        tmp_path / "train.jsonl",
        [{"text": "good", "score": 4.5}, {"text": "bad", "score": 1}, {"text": "ok", "score": 2.25}],
    )
    dev = _jsonl(tmp_path / "dev.jsonl", [{"text": "great", "score": 5}])
    task, data = _load(tokenizer, train, dev, label_column="score")
    assert (task.head, task.label_list, task.num_labels, task.selection_metric) == ("regression", None, 1, "spearmanr")
    assert data.train["labels"] == pytest.approx([4.5, 1.0, 2.25])
    assert data.train.features["labels"].dtype == "float32"
    assert set(task.compute_metrics([[1.0], [2.0]], [1.0, 3.0])) == {"pearson", "spearmanr", "mse"}


def test_whole_floats_are_classes_and_task_type_override(tmp_path, tokenizer):
    rows = [{"text": "a", "label": 0.0}, {"text": "b", "label": 2.0}, {"text": "c", "label": 10.0}]
    train = _jsonl(tmp_path / "train.jsonl", rows)
    dev = _jsonl(tmp_path / "dev.jsonl", rows[:1])
    task = task_from_name(None, DataArguments(train_file=train, validation_file=dev))
    assert task.head == "classification" and task.label_list == ["0", "2", "10"]  # numeric, not "10" < "2"
    assert set(task.compute_metrics([[1.0, 0, 0]], [0])) == {"accuracy", "f1_macro"}
    task, data = _load(tokenizer, train, dev, task_type="regression")
    assert task.is_regression and data.train["labels"] == [0.0, 2.0, 10.0]


def test_explicit_label_list_order(tmp_path, tokenizer):
    train = _csv(tmp_path / "train.csv", ["text", "label"], [["a", "pos"], ["b", "neg"], ["c", "neutral"]])
    dev = _csv(tmp_path / "dev.csv", ["text", "label"], [["d", "neutral"]])
    task, data = _load(tokenizer, train, dev, label_list=["pos", "neutral", "neg"], task_name="custom")
    assert task.label_list == ["pos", "neutral", "neg"]
    assert data.train["labels"] == [0, 2, 1] and data.eval_sets["validation"]["labels"] == [1]


def test_text_columns_option_and_sample_limits(tmp_path, tokenizer):
    header = ["premise", "hypothesis", "y"]
    train = _csv(tmp_path / "t.csv", header, [["a", "b", "x"], ["c", "d", "y"], ["e", "f", "x"]])
    dev = _csv(tmp_path / "d.csv", header, [["a", "b", "x"], ["c", "d", "y"]])
    args = dict(text_columns=["premise", "hypothesis"], label_column="y", max_train_samples=2, max_eval_samples=1)
    task, data = _load(tokenizer, train, dev, **args)
    assert len(data.train) == 2 and len(data.eval_sets["validation"]) == 1 and task.label_list == ["x", "y"]


# ---- bad input: each fails before tokenization, with the fix in the message ---------------------


def test_missing_label_column(tmp_path):
    train = _csv(tmp_path / "train.csv", ["sentence", "target"], [["a", 1], ["b", 0]])
    with pytest.raises(TedInputError, match=r"\['label'\] not found; available columns: \['sentence', 'target'\]"):
        _load(ExplodingTokenizer(), train, train)


def test_unseen_validation_label(tmp_path):
    train = _csv(tmp_path / "train.csv", ["sentence", "label"], [["a", "pos"], ["b", "neg"]])
    dev = _csv(tmp_path / "dev.csv", ["sentence", "label"], [["c", "pos"], ["d", "neutral"]])
    with pytest.raises(
        TedInputError, match=r"dev.csv, line 3: label 'neutral' is not in the label list \['neg', 'pos'\]"
    ):
        _load(ExplodingTokenizer(), train, dev)


def test_missing_text_column(tmp_path):
    train = _csv(tmp_path / "train.csv", ["review", "label"], [["a", 1], ["b", 0]])
    with pytest.raises(TedInputError, match=r"no text column found.*\['review', 'label'\].*--text_columns"):
        _load(ExplodingTokenizer(), train, train)
    with pytest.raises(TedInputError, match=r"text column\(s\) \['body'\] not found"):
        _load(ExplodingTokenizer(), train, train, text_columns=["body"])
    dev = _csv(tmp_path / "dev.csv", ["text", "label"], [["a", 1]])
    with pytest.raises(TedInputError, match=r"dev.csv: column\(s\) \['review'\] not found"):
        _load(ExplodingTokenizer(), train, dev, text_columns=["review"])


def test_missing_files_and_bad_options(tmp_path):
    train = _csv(tmp_path / "train.csv", ["sentence", "label"], [["a", 1], ["b", 0]])
    with pytest.raises(TedInputError, match="--validation_file is missing"):
        _load(ExplodingTokenizer(), train, None)
    with pytest.raises(TedInputError, match=r"--validation_file .*nope.csv does not exist"):
        _load(ExplodingTokenizer(), train, str(tmp_path / "nope.csv"))
    with pytest.raises(TedInputError, match="unsupported extension '.txt'"):
        _load(ExplodingTokenizer(), train, _csv(tmp_path / "dev.txt", ["sentence", "label"], [["a", 1]]))
    with pytest.raises(TedInputError, match="at least 2 distinct labels"):
        _load(ExplodingTokenizer(), _csv(tmp_path / "one.csv", ["sentence", "label"], [["a", 1]]), train)
    with pytest.raises(TedInputError, match=r"e.csv, line 3: column 'sentence' is empty"):
        _load(ExplodingTokenizer(), _csv(tmp_path / "e.csv", ["sentence", "label"], [["a", 1], ["", 0]]), train)
    with pytest.raises(TedInputError, match="--data_dir holds GLUE TSV folders"):
        _load(ExplodingTokenizer(), train, train, data_dir=str(tmp_path))


def test_dev_file_alone_needs_the_labels(tmp_path, tokenizer):
    dev = _csv(tmp_path / "dev.csv", ["sentence", "label"], [["the movie was good", "pos"], ["a cat sat", "neg"]])
    with pytest.raises(TedInputError, match="needs --train_file .* --label_list"):
        _load(ExplodingTokenizer(), None, dev)
    task, data = _load(tokenizer, None, dev, label_list=["neg", "pos"])
    assert task.label_list == ["neg", "pos"] and len(data.train) == 0
    assert data.eval_sets["validation"]["labels"] == [1, 0]
    with pytest.raises(TedInputError, match=r"label 'pos' is not in the label list \['LABEL_0', 'LABEL_1'\]"):
        _load(ExplodingTokenizer(), None, dev, label_list=["LABEL_0", "LABEL_1"])


def test_evaluate_on_a_dev_file_alone_takes_labels_from_the_model(tmp_path, monkeypatch):
    """`ted evaluate` scores a model on a custom dev file without its training file; training stages refuse."""
    import tiny
    from ted.cli.main import main

    monkeypatch.setenv("TQDM_DISABLE", "1")
    tok = tiny.build_tokenizer()
    train, dev = tiny.write_data(tmp_path / "data", n_train=8, n_dev=16)
    model = tiny.write_model(tmp_path / "m", tok, layers=2, head_labels=["neg", "pos"])
    flags = [
        "--max_seq_length",
        str(tiny.MAX_LEN),
        "--disable_tqdm",
        "true",
        "--report_to",
        "none",
        "--dataloader_pin_memory",
        "false",
    ]
    both, alone = tmp_path / "both", tmp_path / "alone"
    assert (
        main(
            [
                "evaluate",
                "--model_name_or_path",
                str(model),
                "--train_file",
                str(train),
                "--validation_file",
                str(dev),
                "--output_dir",
                str(both),
                *flags,
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "evaluate",
                "--model_name_or_path",
                str(model),
                "--validation_file",
                str(dev),
                "--output_dir",
                str(alone),
                *flags,
            ]
        )
        == 0
    )
    a, b = (json.loads((f / "eval_results.json").read_text()) for f in (both, alone))
    assert a["eval_accuracy"] == b["eval_accuracy"] and a["eval_loss"] == pytest.approx(b["eval_loss"], abs=1e-6)
    # A training stage with the dev file alone stops before any training, with a way out.
    assert (
        main(
            [
                "finetune",
                "--model_name_or_path",
                str(model),
                "--validation_file",
                str(dev),
                "--label_list",
                "neg",
                "pos",
                "--output_dir",
                str(tmp_path / "ft"),
                *flags,
            ]
        )
        == 2
    )
    assert not (tmp_path / "ft").exists()


def test_evaluate_remembers_the_stage_columns_and_task_type(tmp_path, monkeypatch, capsys):
    """A regression stage trained on columns review/score is scored on a dev file without repeating them."""
    import random

    import tiny
    from ted.cli.main import main

    monkeypatch.setenv("TQDM_DISABLE", "1")
    rng = random.Random(0)

    def scores(path, n):
        rows = [f"{' '.join(rng.choices(tiny.WORDS, k=5))},{rng.uniform(0, 5):.2f}" for _ in range(n)]
        path.write_text("id,review,score\n" + "".join(f"{i},{row}\n" for i, row in enumerate(rows)))
        return path

    train, dev = scores(tmp_path / "train.csv", 16), scores(tmp_path / "dev.csv", 8)
    model = tiny.write_model(tmp_path / "m", tiny.build_tokenizer(), layers=1)
    stage, scored = tmp_path / "stage", tmp_path / "scored"
    assert (
        main(
            [
                "finetune",
                "--model_name_or_path",
                str(model),
                "--output_dir",
                str(stage),
                "--save_strategy",
                "no",
                *tiny.train_flags(train, dev, text_columns="review", label_column="score"),
            ]
        )
        == 0
    )
    pinned = ["--dataloader_pin_memory", "false", "--disable_tqdm", "true"]
    assert (
        main(
            [
                "evaluate",
                "--model_name_or_path",
                str(stage),
                "--validation_file",
                str(dev),
                "--output_dir",
                str(scored),
                *pinned,
            ]
        )
        == 0
    )
    a, b = (json.loads((f / "eval_results.json").read_text()) for f in (stage, scored))
    assert b["eval_spearmanr"] == pytest.approx(a["eval_spearmanr"]) and b["eval_mse"] == pytest.approx(a["eval_mse"])
    # An explicit flag beats what the stage remembers.
    capsys.readouterr()
    assert (
        main(
            [
                "evaluate",
                "--model_name_or_path",
                str(stage),
                "--validation_file",
                str(dev),
                "--label_column",
                "rating",
                "--output_dir",
                str(tmp_path / "x"),
                *pinned,
            ]
        )
        == 2
    )
    assert "['rating'] not found" in capsys.readouterr().err
