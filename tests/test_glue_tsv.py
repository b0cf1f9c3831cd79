"""GLUE from the original TSV folders (--data_dir): real shared files plus small synthetic ones."""

from __future__ import annotations

import collections
from pathlib import Path

import datasets
import pytest

from helpers import SHARED, requires_shared
from ted.errors import TedInputError
from ted.settings.training_args import DataArguments
from ted.tasks import GLUE_TASKS, load_task, task_from_name
from ted.tasks.glue import read_glue_tsv

GLUE_DIR = SHARED / "data" / "glue"


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(SHARED / "models" / "all-MiniLM-L6-v2"))


class ExplodingTokenizer:
    """Proves validation happens before tokenization: any call fails the test."""

    def __call__(self, *args, **kwargs):
        raise AssertionError("tokenizer called before the input was validated")


@pytest.fixture(autouse=True)
def no_hub(monkeypatch):
    # The data_dir path must never reach the hub.
    def refuse(*args, **kwargs):
        raise AssertionError("datasets.load_dataset called on the data_dir path")

    monkeypatch.setattr(datasets, "load_dataset", refuse)


# ---- raw reading of the real files -----------------------------------------------------------

ROW_COUNTS = [
    ("cola", "CoLA/train.tsv", 8551),
    ("cola", "CoLA/dev.tsv", 1043),
    ("sst2", "SST-2/train.tsv", 67349),
    ("sst2", "SST-2/dev.tsv", 872),
    ("mrpc", "MRPC/train.tsv", 3668),
    ("mrpc", "MRPC/dev.tsv", 408),
    ("stsb", "STS-B/train.tsv", 5749),
    ("stsb", "STS-B/dev.tsv", 1500),
    ("rte", "RTE/train.tsv", 2490),
    ("rte", "RTE/dev.tsv", 277),
]


@requires_shared
@pytest.mark.parametrize("task,rel,rows", ROW_COUNTS)
def test_row_counts(task, rel, rows):
    cols = read_glue_tsv(task, str(GLUE_DIR / rel))
    assert set(cols) == set(GLUE_TASKS[task].text_columns) | {"label"}
    assert all(len(values) == rows for values in cols.values())


@requires_shared
@pytest.mark.parametrize(
    "task,rel,expected",
    [
        ("cola", "CoLA/train.tsv", {1: 6023, 0: 2528}),
        ("cola", "CoLA/dev.tsv", {1: 721, 0: 322}),
        ("sst2", "SST-2/train.tsv", {1: 37569, 0: 29780}),
        ("sst2", "SST-2/dev.tsv", {1: 444, 0: 428}),
        ("mrpc", "MRPC/train.tsv", {1: 2474, 0: 1194}),
        ("mrpc", "MRPC/dev.tsv", {1: 279, 0: 129}),
        ("rte", "RTE/train.tsv", {0: 1249, 1: 1241}),  # id 0 = entailment
        ("rte", "RTE/dev.tsv", {0: 146, 1: 131}),
    ],
)
def test_label_distributions(task, rel, expected):
    assert collections.Counter(read_glue_tsv(task, str(GLUE_DIR / rel))["label"]) == expected


@requires_shared
@pytest.mark.parametrize("rel", ["STS-B/train.tsv", "STS-B/dev.tsv"])
def test_stsb_scores_are_floats_in_range(rel):
    scores = read_glue_tsv("STS-B", str(GLUE_DIR / rel))["label"]
    assert all(isinstance(s, float) and 0.0 <= s <= 5.0 for s in scores)
    assert min(scores) == 0.0 and max(scores) == 5.0


@requires_shared
def test_mrpc_bom_and_literal_quotes():
    train = read_glue_tsv("mrpc", str(GLUE_DIR / "MRPC/train.tsv"))
    assert train["sentence1"][0].startswith('Amrozi accused his brother, whom he called "the witness"')
    assert train["label"][0] == 1
    dev = read_glue_tsv("mrpc", str(GLUE_DIR / "MRPC/dev.tsv"))
    # Unbalanced quote: must stay a literal character, not swallow the following fields.
    assert dev["sentence2"][0] == '"The foodservice pie business does not fit our long-term growth strategy.'
    assert not any("\ufeff" in s for s in train["sentence1"] + dev["sentence1"])


@requires_shared
def test_cola_quotes_and_no_header():
    cola = read_glue_tsv("CoLA", str(GLUE_DIR / "CoLA/train.tsv"))
    assert cola["sentence"][0] == "Our friends won't buy this analysis, let alone the next one we propose."
    assert 'Susan whispered "Shut up".' in cola["sentence"]


# ---- full load with tokenization ------------------------------------------------------------


@requires_shared
@pytest.mark.parametrize("name", ["RTE", "sts-b", "CoLA", "mrpc", "SST-2"])
def test_load_task_from_data_dir(name, tokenizer):
    args = DataArguments(
        task_name=name, data_dir=str(GLUE_DIR), max_train_samples=50, max_eval_samples=20, max_seq_length=24
    )
    task, data = load_task(args, tokenizer)
    assert task == task_from_name(name)
    assert list(data.eval_sets) == ["validation"]
    assert len(data.train) == 50 and len(data.eval_sets["validation"]) == 20
    for ds in [data.train, data.eval_sets["validation"]]:
        assert set(ds.column_names) == {"input_ids", "token_type_ids", "attention_mask", "labels"}
        assert ds.features["labels"].dtype == ("float32" if task.is_regression else "int64")
        assert max(len(ids) for ids in ds["input_ids"]) <= 24
    # Row order is the file's (first N kept), and labels survive tokenization.
    first = read_glue_tsv(name, str(GLUE_DIR / GLUE_TASKS[task.name].folder / "train.tsv"))["label"][:50]
    assert data.train["labels"] == pytest.approx(first)


@requires_shared
def test_padding_and_pairs(tokenizer):
    args = DataArguments(
        task_name="rte",
        data_dir=str(GLUE_DIR),
        max_train_samples=3,
        max_eval_samples=3,
        max_seq_length=64,
        pad_to_max_length=True,
    )
    _, data = load_task(args, tokenizer)
    row = data.train[0]
    assert len(row["input_ids"]) == 64
    assert 1 in row["token_type_ids"]  # second sentence present
    assert row["input_ids"].count(tokenizer.sep_token_id) == 2


def test_task_metadata():
    assert task_from_name("STS-B").label_list is None and task_from_name("stsb").head == "regression"
    assert task_from_name("MNLI").label_list == ["entailment", "neutral", "contradiction"]
    assert task_from_name("wnli").label_list == ["not_entailment", "entailment"]
    assert {n: task_from_name(n).selection_metric for n in ["cola", "mrpc", "qqp", "stsb", "rte"]} == {
        "cola": "matthews_correlation",
        "mrpc": "f1",
        "qqp": "f1",
        "stsb": "spearmanr",
        "rte": "accuracy",
    }
    assert task_from_name("SST-2").num_labels == 2 and task_from_name("sst_2").name == "sst2"


# ---- synthetic folders: formats not in shared data and bad inputs --------------------------------


def _write(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


RTE_HEADER = "index\tsentence1\tsentence2\tlabel"


def _rte_dir(tmp_path: Path, dev_lines: list[str]) -> Path:
    _write(tmp_path / "RTE" / "train.tsv", [RTE_HEADER, "0\ta b\tc\tentailment", "1\td\te\tnot_entailment"])
    _write(tmp_path / "RTE" / "dev.tsv", [RTE_HEADER] + dev_lines)
    return tmp_path


def test_bad_label_names_file_line_and_allowed(tmp_path):
    data_dir = _rte_dir(tmp_path, ["0\ta\tb\tentailment", "1\ta\tb\tcontradiction"])
    with pytest.raises(TedInputError) as err:
        load_task(DataArguments(task_name="rte", data_dir=str(data_dir)), ExplodingTokenizer())
    msg = str(err.value)
    assert "RTE/dev.tsv" in msg and "line 3" in msg and "'contradiction'" in msg
    assert "entailment, not_entailment" in msg


def test_wrong_number_of_fields(tmp_path):
    data_dir = _rte_dir(tmp_path, ["0\ta\tb\tentailment", "1\ta\tb"])
    with pytest.raises(TedInputError, match=r"RTE/dev.tsv, line 3: expected 4 .* found 3"):
        load_task(DataArguments(task_name="rte", data_dir=str(data_dir)), ExplodingTokenizer())


def test_missing_data_dir(tmp_path):
    with pytest.raises(TedInputError, match=r"expected .*nowhere/RTE.*RTE/train.tsv"):
        load_task(DataArguments(task_name="rte", data_dir=str(tmp_path / "nowhere")), ExplodingTokenizer())


def test_missing_split_file(tmp_path):
    _write(tmp_path / "RTE" / "train.tsv", [RTE_HEADER, "0\ta\tb\tentailment"])
    with pytest.raises(TedInputError, match=r"expected .*RTE/dev.tsv"):
        load_task(DataArguments(task_name="rte", data_dir=str(tmp_path)), ExplodingTokenizer())


def test_missing_header_column(tmp_path):
    _write(tmp_path / "QNLI" / "train.tsv", ["index\tsentence1\tsentence2\tlabel", "0\ta\tb\tentailment"])
    with pytest.raises(TedInputError, match=r"header lacks column\(s\) \['question', 'sentence'\]"):
        read_glue_tsv("qnli", str(tmp_path / "QNLI" / "train.tsv"))


def test_bad_stsb_score(tmp_path):
    header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"
    _write(tmp_path / "train.tsv", [header, "0\tg\tf\ty\to\ts\ts\ta\tb\tfive"])
    with pytest.raises(TedInputError, match=r"line 2: .*'five'"):
        read_glue_tsv("stsb", str(tmp_path / "train.tsv"))


def test_unknown_task_and_no_task():
    with pytest.raises(TedInputError, match=r"Unknown task 'glue-foo'.*cola.*rte.*custom"):
        load_task(DataArguments(task_name="glue-foo"), ExplodingTokenizer())
    with pytest.raises(TedInputError, match="No task given"):
        load_task(DataArguments(), ExplodingTokenizer())
    with pytest.raises(TedInputError, match="--train_file/--validation_file are for custom data"):
        load_task(DataArguments(task_name="rte", train_file="x.csv", validation_file="y.csv"), ExplodingTokenizer())


@requires_shared  # for the tokenizer
def test_mnli_two_eval_sets(tmp_path, tokenizer):
    # MNLI is not in shared data; the column layout follows the GLUE download (gold_label last).
    train_header = "index\tpromptID\tpairID\tgenre\tsentence1\tsentence2\tlabel1\tgold_label"
    dev_header = "index\tpromptID\tpairID\tgenre\tsentence1\tsentence2\tlabel1\tlabel2\tgold_label"
    _write(
        tmp_path / "MNLI" / "train.tsv",
        [
            train_header,
            "0\tp\tq\tg\tA cat.\tAn animal.\tentailment\tentailment",
            "1\tp\tq\tg\tA cat.\tA dog.\tcontradiction\tcontradiction",
        ],
    )
    for name, label in [("dev_matched.tsv", "neutral"), ("dev_mismatched.tsv", "contradiction")]:
        _write(tmp_path / "MNLI" / name, [dev_header, f'0\tp\tq\tg\tA "cat.\tIt sleeps.\tx\tx\t{label}'])
    task, data = load_task(DataArguments(task_name="MNLI", data_dir=str(tmp_path)), tokenizer)
    assert task.name == "mnli" and task.num_labels == 3
    assert list(data.eval_sets) == ["validation_matched", "validation_mismatched"]
    assert data.train["labels"] == [0, 2]
    assert data.eval_sets["validation_matched"]["labels"] == [1]
    assert data.eval_sets["validation_mismatched"]["labels"] == [2]


def test_qqp_and_wnli_int_labels(tmp_path):
    _write(
        tmp_path / "train.tsv",
        [
            "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate",
            "0\t1\t2\tq1?\tq2?\t1",
            '"\tWas it real?\t0',
            "1\t3\t4\tq3?\tq4?\t0",
        ],
    )
    cols = read_glue_tsv("QQP", str(tmp_path / "train.tsv"))
    # The malformed row (as in the original QQP train.tsv) is skipped, not fatal.
    assert cols == {"question1": ["q1?", "q3?"], "question2": ["q2?", "q4?"], "label": [1, 0]}
    _write(tmp_path / "w.tsv", [RTE_HEADER, "0\ta\tb\t1", "1\tc\td\t0"])
    assert read_glue_tsv("wnli", str(tmp_path / "w.tsv"))["label"] == [1, 0]
    _write(tmp_path / "w.tsv", [RTE_HEADER, "0\ta\tb\tentailment"])
    with pytest.raises(TedInputError, match="allowed values: 0, 1"):
        read_glue_tsv("wnli", str(tmp_path / "w.tsv"))


def test_hub_path_with_a_fake_hub(monkeypatch):
    # The hub is unreachable here; a stand-in for load_dataset checks what the hub path asks for and
    # does with the result (split choice, column selection, label-order guard).
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

    calls = []

    def fake_load_dataset(name, config):
        calls.append((name, config))
        names = ["entailment", "not_entailment"] if name == "nyu-mll/glue" else ["not_entailment", "entailment"]
        feats = Features(
            {
                "sentence1": Value("string"),
                "sentence2": Value("string"),
                "label": ClassLabel(names=names),
                "idx": Value("int32"),
            }
        )
        split = Dataset.from_dict(
            {"sentence1": ["a", "c"], "sentence2": ["b", "d"], "label": [0, 1], "idx": [0, 1]}, features=feats
        )
        return DatasetDict({"train": split, "validation": split, "test": split})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)

    def simple_tokenizer(a, b, **kwargs):
        return {"input_ids": [[len(x), len(y)] for x, y in zip(a, b)]}

    task, data = load_task(DataArguments(task_name="RTE"), simple_tokenizer)
    assert calls == [("nyu-mll/glue", "rte")]
    assert list(data.eval_sets) == ["validation"]
    assert data.train.column_names == ["input_ids", "labels"] and data.train["labels"] == [0, 1]
    with pytest.raises(TedInputError, match=r"labels are \['not_entailment', 'entailment'\]"):
        load_task(DataArguments(task_name="rte", dataset_name="someone/glue"), ExplodingTokenizer())
