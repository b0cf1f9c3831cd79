"""Cached Stage I (`--stage1_backbone_mode eval`): the cache gives the same logits and the same training as
running the eval-mode backbone on every batch, and the stage writes the same kind of folder."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from datasets import Dataset
from safetensors.torch import load_file as safetensors_load
from transformers import (
    AutoModelForSequenceClassification,
    DataCollatorWithPadding,
    TrainingArguments,
    default_data_collator,
)

import tiny
from ted.cli.main import main
from ted.method import feature_cache
from ted.method.feature_cache import pooled_token_features
from ted.method.filters import new_filters
from ted.method.heads import new_heads
from ted.method.objectives import CachedFilterLearner, FilterLearner, FilterObjective
from ted.method.trainer import TedTrainer
from tiny import one_thread  # noqa: F401  (module fixture)

pytestmark = pytest.mark.usefixtures("one_thread")

LAYERS = [1, 3]


def _setup(tmp_path):
    tok = tiny.build_tokenizer()
    folder = tiny.write_model(
        tmp_path / "m",
        tok,
        layers=4,
        head_labels=["neg", "pos"],
        hidden_dropout_prob=0.3,
        attention_probs_dropout_prob=0.3,
    )
    model = AutoModelForSequenceClassification.from_pretrained(folder)
    train, _ = tiny.write_data(tmp_path / "data", n_train=24, n_dev=4)
    rows = [line.rsplit(",", 1) for line in train.read_text().splitlines()[1:]]
    enc = tok([r[0] for r in rows], truncation=True, max_length=tiny.MAX_LEN)
    data = Dataset.from_dict({**enc, "labels": [int(r[1] == "pos") for r in rows]})
    torch.manual_seed(5)
    filters = new_filters(model.config, LAYERS, 16, nonlinear=True)
    heads = new_heads("classification", len(LAYERS), 16, 2, model.config)
    return tok, model, data, filters, heads


def test_cached_logits_equal_eval_mode_backbone(tmp_path):
    tok, model, data, filters, heads = _setup(tmp_path)
    full = FilterLearner(model, filters, heads, backbone_mode="eval").eval()
    cache = pooled_token_features(model, data, LAYERS, tok, torch.device("cpu"), batch_size=5)
    assert cache.features.shape == (len(data), len(LAYERS), model.config.hidden_size)
    assert not cache.features.is_inference()  # it feeds autograd later
    cached = CachedFilterLearner(filters, heads).eval()
    inputs = [k for k in data.column_names if k != "labels"]
    batch = DataCollatorWithPadding(tok)([{k: data[i][k] for k in inputs} for i in range(8)])  # padded batch
    with torch.no_grad():
        expected = full(**batch)
        got = cached(features=cache.features[:8])
    for e, g in zip(expected, got, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cache.labels, torch.tensor(data["labels"]))


def test_cached_training_matches_uncached_eval_mode(tmp_path):
    """Same seed, same data order, same head dropout: the trained filters agree up to float error."""
    tok, model, data, filters, heads = _setup(tmp_path)

    def train(module, dataset, collator):
        args = TrainingArguments(
            output_dir=str(tmp_path / "out"),
            max_steps=4,
            per_device_train_batch_size=6,
            learning_rate=1e-2,
            report_to=[],
            remove_unused_columns=False,
            save_strategy="no",
            use_cpu=True,
            disable_tqdm=True,
            dataloader_pin_memory=False,
            seed=3,
        )
        TedTrainer(
            model=module,
            args=args,
            objective=FilterObjective("classification"),
            data_collator=collator,
            train_dataset=dataset,
        ).train()
        return module.filters.state_dict()

    uncached = train(
        FilterLearner(model, copy.deepcopy(filters), copy.deepcopy(heads), backbone_mode="eval"),
        data,
        DataCollatorWithPadding(tok),
    )
    cache = pooled_token_features(model, data, LAYERS, tok, torch.device("cpu"), batch_size=7)
    cached = train(CachedFilterLearner(copy.deepcopy(filters), copy.deepcopy(heads)), cache, default_data_collator)
    moved = False
    for key, value in uncached.items():
        torch.testing.assert_close(cached[key], value, rtol=1e-4, atol=1e-5)
        moved |= not torch.equal(value, filters.state_dict()[key])
    assert moved  # the comparison is not vacuous: training changed the filters


def test_learn_filters_default_is_cached_eval_mode(tmp_path, monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    tok = tiny.build_tokenizer()
    model = tiny.write_model(tmp_path / "m", tok, layers=2, head_labels=["neg", "pos"])
    train, dev = tiny.write_data(tmp_path / "data", n_train=32, n_dev=16)
    out = tmp_path / "stage1"
    argv = [
        "learn-filters",
        "--model_name_or_path",
        str(model),
        "--output_dir",
        str(out),
        "--disable_tqdm",
        "true",
        *tiny.train_flags(train, dev),
    ]  # no --stage1_backbone_mode: the default
    assert main(argv) == 0
    scores = json.loads((out / "stage1_layer_scores.json").read_text())
    assert set(scores) == {"0", "1"} and all("accuracy" in v for v in scores.values())
    stage = json.loads((out / "ted_stage.json").read_text())
    assert stage["args"]["stage1_backbone_mode"] == "eval" and stage["stage1_feature_cache"] is True
    assert (out / "filters.safetensors").is_file() and (out / "stage1_heads.safetensors").is_file()
    logged = [e for e in json.loads((out / "log_history.json").read_text()) if "loss" in e]
    assert logged and "loss_filter_layer0" in logged[0]
    # The backbone is saved unchanged.
    before = tiny.state_dict_of(model)
    after = tiny.state_dict_of(out)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_cache_too_big_for_memory_falls_back_to_the_backbone(tmp_path, monkeypatch, caplog):
    """A cache that would take over half of the available memory is not built; Stage I still runs (eval mode,
    backbone on every batch) and gives the cached run's filters (same math)."""
    monkeypatch.setenv("TQDM_DISABLE", "1")
    tok = tiny.build_tokenizer()
    model = tiny.write_model(tmp_path / "m", tok, layers=2, head_labels=["neg", "pos"])
    train, dev = tiny.write_data(tmp_path / "data", n_train=32, n_dev=16)

    def run(out):
        assert (
            main(
                [
                    "learn-filters",
                    "--model_name_or_path",
                    str(model),
                    "--output_dir",
                    str(out),
                    "--disable_tqdm",
                    "true",
                    *tiny.train_flags(train, dev),
                ]
            )
            == 0
        )
        return json.loads((out / "ted_stage.json").read_text())

    assert run(tmp_path / "cached")["stage1_feature_cache"] is True
    # 48 rows x 2 layers x hidden x 4 B is a few kB: pretend only 1 kB is available.
    monkeypatch.setattr(feature_cache, "available_memory_bytes", lambda: 1024)
    with caplog.at_level("WARNING"):
        assert run(tmp_path / "uncached")["stage1_feature_cache"] is False
    assert "Not caching Stage I features" in caplog.text
    cached, uncached = tiny.state_dict_of(tmp_path / "cached"), tiny.state_dict_of(tmp_path / "uncached")
    a = safetensors_load(tmp_path / "cached" / "filters.safetensors")
    b = safetensors_load(tmp_path / "uncached" / "filters.safetensors")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    assert all(torch.equal(cached[k], uncached[k]) for k in cached)  # the backbone is saved unchanged


def test_cache_fits_counts_every_process_on_the_machine(monkeypatch):
    monkeypatch.setattr(feature_cache, "available_memory_bytes", lambda: 100 * 1024**3)
    need = feature_cache.cache_bytes(392_702, 12, 768, None)  # MNLI, 12 layers of a base model, float32
    assert round(need / 1e9, 1) == 14.5
    assert feature_cache.cache_bytes(392_702, 12, 768, torch.bfloat16) * 2 == need
    assert feature_cache.cache_fits(need, 1)[0] and not feature_cache.cache_fits(need, 8)[0]
