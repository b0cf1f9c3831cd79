"""Hub datasets for `--task_name causal_lm` (`--dataset_name`, `--dataset_config_name`): the splits, the text
column, EOS after each document and packing, equal to the same rows read from local files; the clear errors; a
train-only dataset cut by `--validation_split_percentage` as run_clm cuts it; `ted evaluate` reading no training
rows and taking the dataset from a hub-trained stage.

The hub is unreachable here: `datasets.load_dataset` reads a local folder given as --dataset_name (train.jsonl and
validation.jsonl), which is the same code path as a hub id, or is replaced by a stand-in that records its call."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ted.cli.main import main
from ted.errors import TedInputError
from ted.tasks import load_task
from ted.tasks.packing import packed_blocks
from test_causal_lm import data_args, decoder_tokenizer, lm_flags, sentences, write_decoder

DOCS = sentences(9, seed=5)


def write_rows(path: Path, rows: list[str], column: str = "text") -> Path:
    path.write_text("".join(json.dumps({"id": i, column: r}) + "\n" for i, r in enumerate(rows)))
    return path


def hub_folder(tmp_path: Path, splits=("train", "validation"), column: str = "text") -> Path:
    """A dataset folder `datasets.load_dataset` reads like a hub dataset: one JSONL file per split."""
    folder = tmp_path / "hub"
    folder.mkdir()
    for i, split in enumerate(splits):
        write_rows(folder / f"{split}.jsonl", DOCS[i::2] + ["", "  "], column)  # blank rows make no document
    return folder


def hand_blocks(tok, docs: list[str], size: int) -> list[list[int]]:
    """BOS where the tokenizer adds one, the tokens, EOS; all documents in one stream cut every `size` tokens."""
    stream = [t for d in docs if d.strip() for t in tok(d)["input_ids"] + [tok.eos_token_id]]
    return [stream[i : i + size] for i in range(0, len(stream), size)]


@pytest.mark.parametrize("bos", [False, True])
def test_hub_splits_are_packed_like_the_same_rows_in_files(tmp_path, bos):
    tok = decoder_tokenizer(bos=bos)
    folder = hub_folder(tmp_path)
    _, hub = load_task(data_args(dataset_name=str(folder), block_size=8), tok)
    train_rows, dev_rows = DOCS[0::2] + ["", "  "], DOCS[1::2] + ["", "  "]
    assert hub.train["input_ids"] == hand_blocks(tok, train_rows, 8)
    assert hub.eval_sets["validation"]["input_ids"] == hand_blocks(tok, dev_rows, 8)
    if bos:
        assert hub.train["input_ids"][0][0] == tok.bos_token_id
    files = data_args(
        train_file=str(write_rows(tmp_path / "t.jsonl", train_rows)),
        validation_file=str(write_rows(tmp_path / "d.jsonl", dev_rows)),
        block_size=8,
    )
    _, local = load_task(files, tok)
    assert local.train["input_ids"] == hub.train["input_ids"]
    assert local.eval_sets["validation"]["input_ids"] == hub.eval_sets["validation"]["input_ids"]
    assert local.train.features == hub.train.features


def test_text_column_and_max_samples(tmp_path):
    tok = decoder_tokenizer()
    folder = hub_folder(tmp_path, column="body")
    args = data_args(dataset_name=str(folder), text_column="body", block_size=4, max_train_samples=3)
    _, data = load_task(args, tok)
    assert data.train["input_ids"] == hand_blocks(tok, DOCS[0::2], 4)[:3]
    with pytest.raises(TedInputError, match=r"no column 'text' \(--text_column\); its columns: \['id', 'body'\]"):
        load_task(data_args(dataset_name=str(folder)), tok)


def test_a_limit_reads_only_the_documents_that_fill_it():
    tok = decoder_tokenizer()

    def batches():
        yield ["good movie . bad plot", "the film"]  # 7 tokens with their EOS
        yield ["a film"]
        raise AssertionError("read past the blocks asked for")

    blocks = packed_blocks(batches(), tok, 4, limit=2)
    assert blocks["input_ids"] == hand_blocks(tok, ["good movie . bad plot", "the film", "a film"], 4)[:2]


class FakeHub:
    """`datasets.load_dataset` as a hub with one dataset: WikiText-like rows (lines, blank ones included)."""

    def __init__(self, splits: dict[str, list[str]]):
        self.splits, self.calls = splits, []

    def __call__(self, name, config=None, **kwargs):
        import datasets

        self.calls.append((name, config, kwargs))
        return datasets.DatasetDict({k: datasets.Dataset.from_dict({"text": v}) for k, v in self.splits.items()})


def test_name_and_configuration_go_to_load_dataset(monkeypatch):
    import datasets

    lines = [" = Title = \n", "", " good movie . \n", "", " bad plot \n"]
    hub = FakeHub({"train": lines, "validation": lines[2:], "test": lines})
    monkeypatch.setattr(datasets, "load_dataset", hub)
    tok = decoder_tokenizer()
    args = data_args(dataset_name="wikitext", dataset_config_name="wikitext-103-raw-v1", block_size=64)
    _, data = load_task(args, tok)
    assert hub.calls == [("wikitext", "wikitext-103-raw-v1", {})]
    # Each non-blank row (a WikiText line) is one document with its EOS.
    words = tok.convert_ids_to_tokens(data.eval_sets["validation"]["input_ids"][0])
    assert " ".join(words) == "good movie . </s> bad plot </s>"
    assert [len(block) for block in data.train["input_ids"]] == [4 + 4 + 3]  # 3 rows: their tokens and EOS


@pytest.mark.parametrize(
    ("extra", "splits", "words"),
    [
        ({"train_file": "t.txt"}, None, "so --train_file (for local files) cannot go with it"),
        ({"validation_file": "d.txt"}, None, "--validation_file (for local files) cannot go with it"),
        ({"prompt_column": "q", "completion_column": "a"}, None, "--prompt_column, --completion_column"),
        ({"dataset_name": None, "dataset_config_name": "x"}, None, "--dataset_config_name names a configuration"),
        ({}, {"train": ["a"], "test": ["b"]}, "has no 'validation' split (its splits: train, test)"),
        ({}, {"train": ["a"], "test": ["b"]}, "pass --validation_split_percentage P to score the first P% of its"),
        ({"validation_split_percentage": 5}, {"test": ["b"]}, "its splits: test), which causal_lm scores as the dev"),
        ({"validation_split_percentage": 100}, None, "would leave no rows for the dev set or for training"),
        ({"validation_split_percentage": 0}, None, "pass a whole number from 1 to 99"),
        ({}, {"train": ["a"], "validation": [" ", ""]}, "the split 'validation' holds no text"),
        ({"validation_split_percentage": 50}, {"train": [" ", "a"]}, "the first 50% of split 'train' holds no text"),
    ],
)
def test_bad_hub_requests_are_one_line(monkeypatch, extra, splits, words):
    import datasets

    hub = FakeHub(splits or {"train": ["a"], "validation": ["b"]})
    monkeypatch.setattr(datasets, "load_dataset", hub)
    with pytest.raises(TedInputError) as err:
        load_task(data_args(**{"dataset_name": "wikitext", "block_size": 8, **extra}), decoder_tokenizer())
    assert words in str(err.value) and "\n" not in str(err.value), str(err.value)
    assert splits is not None or not hub.calls  # option conflicts are refused before anything loads


def test_an_unreachable_hub_says_so_in_one_line(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'wikitext' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(TedInputError, match=r"Could not load the hub dataset 'wikitext' \(configuration 'w2'\): "):
        load_task(data_args(dataset_name="wikitext", dataset_config_name="w2"), decoder_tokenizer())


def test_evaluate_by_cli_scores_the_hub_validation_split_as_the_file(tmp_path):
    model = write_decoder(tmp_path / "m", "gpt2")
    folder = hub_folder(tmp_path)
    dev = write_rows(tmp_path / "d.jsonl", DOCS[1::2])
    scores = []
    for source in (["--dataset_name", folder], ["--validation_file", dev]):
        out = tmp_path / f"out{len(scores)}"
        flags = ["--task_name", "causal_lm", *source, "--block_size", 8, "--output_dir", out, "--disable_tqdm", True]
        assert main(["evaluate", "--model_name_or_path", str(model), *map(str, flags)]) == 0
        scores.append(json.loads((out / "eval_results.json").read_text()))
    assert scores[0]["eval_tokens"] == scores[1]["eval_tokens"] > 0
    assert scores[0]["eval_perplexity"] == pytest.approx(scores[1]["eval_perplexity"], rel=1e-6)


def test_finetune_by_cli_trains_on_the_hub_train_split(tmp_path, capsys):
    model = write_decoder(tmp_path / "m", "gpt2")
    folder = hub_folder(tmp_path)
    flags = lm_flags(Path("t"), Path("d"))
    del flags[flags.index("--train_file") : flags.index("--train_file") + 2]
    del flags[flags.index("--validation_file") : flags.index("--validation_file") + 2]
    out = tmp_path / "out"
    argv = ["finetune", "--model_name_or_path", str(model), "--output_dir", str(out), "--dataset_name", str(folder)]
    assert main([*argv, *map(str, flags), "--max_steps", "1"]) == 0, capsys.readouterr().err
    info = json.loads((out / "ted_stage.json").read_text())
    assert info["args"]["dataset_name"] == str(folder)


# ------------------------------------------------------------------------------------ a train split only (openwebtext)


@pytest.mark.parametrize("percent", [5, 30])
def test_a_train_only_dataset_gives_its_first_rows_to_dev_as_run_clm(tmp_path, percent):
    """--validation_split_percentage P: dev = the rows of `load_dataset(NAME, split="train[:P%]")` (run_clm's
    call), train = `train[P%:]`; both packed like the same rows in files."""
    import datasets

    folder = tmp_path / "owt"
    folder.mkdir()
    rows = sentences(37, seed=7)
    write_rows(folder / "train.jsonl", rows)
    tok = decoder_tokenizer()
    _, data = load_task(data_args(dataset_name=str(folder), validation_split_percentage=percent, block_size=8), tok)
    first = datasets.load_dataset(str(folder), split=f"train[:{percent}%]")["text"][:]
    rest = datasets.load_dataset(str(folder), split=f"train[{percent}%:]")["text"][:]
    assert len(first) == {5: 2, 30: 11}[percent]  # round(37 * P / 100): 1.85 -> 2, 11.1 -> 11
    assert first + rest == rows
    assert data.eval_sets["validation"]["input_ids"] == hand_blocks(tok, first, 8)
    assert data.train["input_ids"] == hand_blocks(tok, rest, 8)


def test_the_percentage_is_unused_where_there_is_a_dev_split(tmp_path, caplog):
    tok = decoder_tokenizer()
    folder = hub_folder(tmp_path)
    with caplog.at_level("WARNING", logger="ted.tasks.lm_hub"):
        _, data = load_task(data_args(dataset_name=str(folder), validation_split_percentage=20, block_size=8), tok)
    assert data.eval_sets["validation"]["input_ids"] == hand_blocks(tok, DOCS[1::2], 8)
    assert data.train["input_ids"] == hand_blocks(tok, DOCS[0::2], 8)
    assert "has a 'validation' split, which is the dev set: --validation_split_percentage 20 is not used" in caplog.text
    # Local files bring their own dev file: the percentage (a preset's hub setting, say) is unused there too.
    caplog.clear()
    dev = write_rows(tmp_path / "d.jsonl", DOCS[1::2])
    with caplog.at_level("WARNING", logger="ted.tasks.lm_hub"):
        _, local = load_task(data_args(validation_file=str(dev), validation_split_percentage=20, block_size=8), tok)
    assert local.eval_sets["validation"]["input_ids"] == data.eval_sets["validation"]["input_ids"]
    assert "--validation_split_percentage 20 is not used" in caplog.text


# ------------------------------------------------------------------------------------ `ted evaluate` and hub stages


def unreadable_split():
    """A train split whose rows raise when anything reads them (its column names and types are known)."""
    import datasets

    def rows():
        raise AssertionError("the train split was read")
        yield {}

    return datasets.IterableDataset.from_generator(rows, features=datasets.Features({"text": datasets.Value("string")}))


def test_evaluate_never_reads_the_train_split(tmp_path, monkeypatch):
    import datasets

    dev = DOCS[1::2]
    monkeypatch.setattr(
        datasets,
        "load_dataset",
        lambda *a, **k: datasets.DatasetDict({"train": unreadable_split(), "validation": text_rows(dev)}),
    )
    with pytest.raises(AssertionError, match="the train split was read"):  # a training stage does read it
        load_task(data_args(dataset_name="owt", block_size=8), decoder_tokenizer())
    model = write_decoder(tmp_path / "m", "gpt2")
    out = tmp_path / "out"
    flags = ["--task_name", "causal_lm", "--dataset_name", "owt", "--block_size", "8", "--output_dir", str(out)]
    assert main(["evaluate", "--model_name_or_path", str(model), *flags, "--disable_tqdm", "True"]) == 0
    scored = sum(len(block) - 1 for block in hand_blocks(decoder_tokenizer(), dev, 8))
    assert json.loads((out / "eval_results.json").read_text())["eval_tokens"] == scored


def test_evaluate_reads_only_the_dev_rows_cut_from_train(monkeypatch):
    """With --validation_split_percentage the dev rows come from `train`; the rest (training rows) is not read."""
    import datasets

    from ted.tasks import lm_hub

    rows = sentences(20, seed=9)
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: datasets.DatasetDict({"train": text_rows(rows)}))
    read, real = [], lm_hub.text_batches

    def recorded(data, column):
        read.append(list(data[column]))
        return real(data, column)

    monkeypatch.setattr(lm_hub, "text_batches", recorded)
    args = data_args(dataset_name="owt", validation_split_percentage=25, block_size=8, max_train_samples=0)
    _, data = load_task(args, decoder_tokenizer())
    assert read == [rows[:5]] and len(data.train) == 0
    assert data.eval_sets["validation"]["input_ids"] == hand_blocks(decoder_tokenizer(), rows[:5], 8)


def text_rows(texts: list[str]):
    import datasets

    return datasets.Dataset.from_dict({"text": texts})


def test_evaluate_on_a_hub_stage_remembers_its_dataset_unless_a_file_is_given(tmp_path, capsys):
    """A stage trained on a train-only local hub folder with --validation_split_percentage: `ted evaluate STAGE`
    scores the same dev rows without data flags; --validation_file wins over the remembered dataset."""
    folder = tmp_path / "owt"
    folder.mkdir()
    rows = sentences(30, seed=11)
    write_rows(folder / "train.jsonl", rows)
    model, stage = write_decoder(tmp_path / "m", "gpt2"), tmp_path / "stage"
    flags = lm_flags(Path("t"), Path("d"), block_size=8)
    for name in ("--train_file", "--validation_file"):
        del flags[flags.index(name) : flags.index(name) + 2]
    hub = ["--dataset_name", str(folder), "--validation_split_percentage", "20"]
    argv = ["finetune", "--model_name_or_path", str(model), "--output_dir", str(stage), *hub, *flags]
    assert main([*argv, "--max_steps", "1"]) == 0, capsys.readouterr().err
    assert json.loads((stage / "ted_stage.json").read_text())["args"]["validation_split_percentage"] == 20

    def evaluate(name: str, *extra: str) -> dict:
        out = tmp_path / name
        argv = ["evaluate", "--model_name_or_path", str(stage), "--output_dir", str(out), "--disable_tqdm", "True"]
        assert main([*argv, *extra]) == 0, capsys.readouterr().err
        return json.loads((out / "eval_results.json").read_text())

    tok = decoder_tokenizer()
    remembered, explicit = evaluate("remembered"), evaluate("explicit", "--task_name", "causal_lm", *hub)
    assert remembered["eval_tokens"] == sum(len(b) - 1 for b in hand_blocks(tok, rows[:6], 8))  # 20% of 30 rows
    assert remembered["eval_perplexity"] == pytest.approx(explicit["eval_perplexity"], rel=1e-6)
    assert remembered["eval_tokens"] == explicit["eval_tokens"]
    other = write_rows(tmp_path / "other.jsonl", rows[10:13])
    from_file = evaluate("file", "--validation_file", str(other))  # no conflict with the remembered dataset
    assert from_file["eval_tokens"] == sum(len(b) - 1 for b in hand_blocks(tok, rows[10:13], 8))


# ------------------------------------------------------------------------- packing a cached split: on disk, reused


def packed_files(cache: Path) -> list[Path]:
    return sorted((cache / "ted_packed").glob("*")) if (cache / "ted_packed").is_dir() else []


@pytest.fixture
def datasets_cache(tmp_path, monkeypatch):
    import datasets

    cache = tmp_path / "hf_datasets"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    return cache


def test_a_cached_split_is_packed_to_disk_once_and_reused(tmp_path, datasets_cache, monkeypatch):
    import ted.tasks.packing as packing

    tok = decoder_tokenizer()
    folder = hub_folder(tmp_path)
    args = data_args(dataset_name=str(folder), block_size=8)
    _, first = load_task(args, tok)
    files = packed_files(datasets_cache)
    assert len(files) == 2 and all(f.suffix == ".arrow" for f in files)  # train and dev
    assert first.train.cache_files and first.train["input_ids"] == hand_blocks(tok, DOCS[0::2], 8)  # memory-mapped

    def no_tokenising(*a, **k):
        raise AssertionError("packed again instead of reusing the file")

    monkeypatch.setattr(packing, "encode", no_tokenising)
    _, again = load_task(args, tok)
    assert again.train["input_ids"] == first.train["input_ids"]
    assert again.eval_sets["validation"]["input_ids"] == first.eval_sets["validation"]["input_ids"]
    assert packed_files(datasets_cache) == files
    monkeypatch.undo()  # the cache key holds everything that changes the blocks
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", datasets_cache)
    for other in (dict(block_size=4), dict(block_size=8, max_train_samples=2)):
        load_task(data_args(dataset_name=str(folder), **other), tok)
    load_task(args, decoder_tokenizer(bos=True))
    assert len(packed_files(datasets_cache)) == 2 + 2 + 1 + 2  # block 4: both splits; limit: train; BOS: both


def test_an_interrupted_packing_leaves_no_file(tmp_path, datasets_cache, monkeypatch):
    import ted.tasks.packing as packing

    tok = decoder_tokenizer()
    folder = hub_folder(tmp_path)
    real = packing.encode
    calls = []

    def fails_on_the_second_split(tokenizer, texts):
        calls.append(1)
        if len(calls) > 1:
            raise KeyboardInterrupt
        return real(tokenizer, texts)

    monkeypatch.setattr(packing, "encode", fails_on_the_second_split)
    with pytest.raises(KeyboardInterrupt):
        load_task(data_args(dataset_name=str(folder), block_size=8), tok)
    assert len(packed_files(datasets_cache)) == 1  # dev finished; train neither finished nor left half-written
    monkeypatch.setattr(packing, "encode", real)
    _, data = load_task(data_args(dataset_name=str(folder), block_size=8), tok)
    assert data.train["input_ids"] == hand_blocks(tok, DOCS[0::2], 8)


def test_caching_off_or_rows_in_memory_pack_in_memory(tmp_path, datasets_cache, monkeypatch):
    import datasets

    tok = decoder_tokenizer()
    monkeypatch.setattr(datasets, "is_caching_enabled", lambda: False)
    _, data = load_task(data_args(dataset_name=str(hub_folder(tmp_path)), block_size=8), tok)
    assert not data.train.cache_files and packed_files(datasets_cache) == []
    assert data.train["input_ids"] == hand_blocks(tok, DOCS[0::2], 8)


def test_blocks_leave_as_each_batch_fills_them():
    """Only the unfinished tail is carried from one batch of documents to the next: memory stays one batch."""
    from ted.tasks.packing import block_tables

    tok = decoder_tokenizer()
    read = []

    def batches():
        for i in range(3):
            read.append(i)
            yield DOCS[3 * i : 3 * i + 3]  # 3 documents make more than one block of 4 tokens

    blocks, reads_at_each_table = [], []
    for table in block_tables(batches(), tok, 4, None):
        reads_at_each_table.append(len(read))
        blocks += table["input_ids"].to_pylist()
    assert reads_at_each_table[:3] == [1, 2, 3]  # each batch's full blocks before the next batch is read
    assert blocks == hand_blocks(tok, DOCS[:9], 4)
