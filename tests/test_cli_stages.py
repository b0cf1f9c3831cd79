"""Every stage end to end through the CLI, on tiny BERT, RoBERTa and DeBERTa-v2 models built offline.

finetune (teacher 4 layers, student 2) -> learn-filters (teacher interval 2, student interval 1) ->
distill ted / kd / lwd -> evaluate -> export, then: STS-B-like regression with and without
--paper_compat, a --config YAML file, the Python API, the GLUE TSV path and the installed console script.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

import ted
import tiny
from helpers import SHARED, requires_shared
from ted.cli.main import main
from tiny import one_thread  # noqa: F401  (module fixture)

pytestmark = pytest.mark.usefixtures("one_thread")

TED_FILES = {
    "filters.safetensors",
    "filters.json",
    "stage1_heads.safetensors",
    "stage1_heads.json",
    "ted_stage.json",
    "eval_results.json",
    "train_results.json",
    "log_history.json",
    "stage1_layer_scores.json",
}


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    # tqdm reads TQDM_* when it is imported, so in-process runs also pass --disable_tqdm (tiny.train_flags).
    monkeypatch.setenv("TQDM_DISABLE", "1")


def read(folder: Path, name: str):
    return json.loads((Path(folder) / name).read_text())


def ted_cli(*argv) -> None:
    assert main([str(a) for a in argv]) == 0, argv


def base_model_state(folder: Path) -> dict[str, torch.Tensor]:
    return AutoModel.from_pretrained(folder).state_dict()


def changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> list[str]:
    assert set(before) == set(after)
    return [k for k in before if not torch.equal(before[k], after[k])]


@pytest.fixture(scope="module", params=["bert", "roberta", "deberta-v2"])
def chain(request, tmp_path_factory, one_thread):  # noqa: F811
    """Runs the whole method once per architecture; the tests below inspect the folders."""
    arch = request.param
    root = tmp_path_factory.mktemp(arch)
    tok = tiny.build_tokenizer()
    train, dev = tiny.write_data(root / "data", n_train=32, n_dev=16)
    flags = tiny.train_flags(train, dev)
    p = {name: root / name for name in ("t", "s", "t1", "s1", "ted", "kd", "lwd", "eval", "export")}
    p["t0"] = tiny.write_model(root / "t0", tok, arch, layers=4, seed=0)
    p["s0"] = tiny.write_model(root / "s0", tok, arch, layers=2, seed=1)
    p["data"] = (train, dev)

    ted_cli("finetune", "--model_name_or_path", p["t0"], "--output_dir", p["t"], *flags)
    ted_cli("finetune", "--model_name_or_path", p["s0"], "--output_dir", p["s"], *flags)
    ted_cli("learn-filters", "--model_name_or_path", p["t"], "--output_dir", p["t1"], "--filter_interval", 2, *flags)
    ted_cli("learn-filters", "--model_name_or_path", p["s"], "--output_dir", p["s1"], "--filter_interval", 1, *flags)
    distill = ["distill", "--kl_alpha", 1.0, "--teacher_filter_interval", 2, "--filter_interval", 1, *flags]
    ted_cli(
        *distill,
        "--model_name_or_path",
        p["s1"],
        "--teacher_model_name_or_path",
        p["t1"],
        "--mse_alpha",
        10,
        "--output_dir",
        p["ted"],
    )
    # Baselines start from the untrained student, with the fine-tuned teacher (no filters).
    ted_cli(
        *distill,
        "--model_name_or_path",
        p["s0"],
        "--teacher_model_name_or_path",
        p["t"],
        "--filter_disabled",
        "--mse_alpha",
        0,
        "--output_dir",
        p["kd"],
    )
    ted_cli(
        *distill,
        "--model_name_or_path",
        p["s0"],
        "--teacher_model_name_or_path",
        p["t"],
        "--filter_disabled",
        "--mse_alpha",
        5,
        "--output_dir",
        p["lwd"],
    )
    ted_cli("evaluate", "--model_name_or_path", p["ted"], "--output_dir", p["eval"], *flags)
    ted_cli("export", p["ted"], "--output_dir", p["export"])
    p["arch"] = arch
    return p


def test_every_stage_writes_metrics_and_description(chain):
    expected = {
        "t": ("finetune", None),
        "s": ("finetune", None),
        "t1": ("learn_filters", None),
        "s1": ("learn_filters", None),
        "ted": ("distill", "ted"),
        "kd": ("distill", "kd"),
        "lwd": ("distill", "lwd"),
    }
    for name, (stage, method) in expected.items():
        folder = chain[name]
        metrics = read(folder, "eval_results.json")
        info = read(folder, "ted_stage.json")
        assert (info["stage"], info["method"]) == (stage, method), name
        assert info["task"]["name"] == "custom" and info["task"]["label_list"] == ["neg", "pos"]
        assert {"ted", "torch", "transformers"} <= set(info["versions"])
        if stage == "learn_filters":  # per-filter scores, keyed by layer
            assert any(k.startswith("eval_layer") and k.endswith("_accuracy") for k in metrics), name
        else:
            assert 0.0 <= metrics["eval_accuracy"] <= 1.0, name
        # No checkpoints left behind once the run completed.
        assert not folder.with_name(folder.name + ".incomplete").exists()
        assert not list(folder.glob("checkpoint-*"))
    assert read(chain["ted"], "ted_stage.json")["lineage"]["layer_pairs"] == [[0, 1], [1, 3]]
    assert read(chain["lwd"], "ted_stage.json")["lineage"]["layer_pairs"] == [[0, 1], [1, 3]]
    assert read(chain["kd"], "ted_stage.json")["lineage"]["layer_pairs"] == []
    assert read(chain["ted"], "ted_stage.json")["args"]["mse_alpha"] == 10


def test_filters_written_where_expected(chain):
    with_filters = {"t1", "s1", "ted", "lwd"}
    for name in ("t", "s", "t1", "s1", "ted", "kd", "lwd"):
        assert (chain[name] / "filters.safetensors").is_file() is (name in with_filters), name
    assert read(chain["t1"], "filters.json")["layers"] == [1, 3]
    assert read(chain["s1"], "filters.json")["layers"] == [0, 1]
    assert read(chain["lwd"], "filters.json")["role"] == "projector"
    assert (chain["t1"] / "stage1_heads.safetensors").is_file()


def test_stage1_layer_scores(chain):
    for name, layers in (("t1", ["1", "3"]), ("s1", ["0", "1"])):
        scores = read(chain[name], "stage1_layer_scores.json")
        assert sorted(scores) == layers
        assert all(0.0 <= entry["accuracy"] <= 1.0 for entry in scores.values())
        metrics = read(chain[name], "eval_results.json")
        for layer in layers:
            assert scores[layer]["accuracy"] == metrics[f"eval_layer{layer}_accuracy"]


def test_stage1_leaves_backbone_untouched(chain):
    # Stage I trains filters and heads only; the saved model is the fine-tuned one, bit for bit.
    assert changed(tiny.state_dict_of(chain["t"]), tiny.state_dict_of(chain["t1"])) == []


def test_distillation_trains_the_student(chain):
    assert changed(tiny.state_dict_of(chain["s1"]), tiny.state_dict_of(chain["ted"]))
    init = base_model_state(chain["s0"])
    for name in ("kd", "lwd"):
        moved = changed(init, base_model_state(chain[name]))
        assert any(".layer." in k or "layer." in k for k in moved), (name, moved[:5])
    # The teacher's folder is read, never written.
    assert not (chain["t"] / "filters.json").exists()


def test_evaluate_reproduces_stage_metrics(chain):
    assert (
        read(chain["eval"], "eval_results.json")["eval_accuracy"]
        == read(chain["ted"], "eval_results.json")["eval_accuracy"]
    )


def test_export_is_a_stock_model(chain):
    exported = chain["export"]
    names = {p.name for p in exported.iterdir()}
    assert not names & TED_FILES, names & TED_FILES
    assert {"config.json", "model.safetensors", "README.md"} <= names
    assert "ted" in (exported / "README.md").read_text()
    tok = AutoTokenizer.from_pretrained(exported)
    batch = tok(["the movie was good", "a bad film"], padding=True, return_tensors="pt")
    with torch.no_grad():
        a = AutoModelForSequenceClassification.from_pretrained(exported).eval()(**batch).logits
        b = AutoModelForSequenceClassification.from_pretrained(chain["ted"]).eval()(**batch).logits
    assert a.shape == (2, 2)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("chain", ["bert"], indirect=True)
def test_console_script_runs(chain, tmp_path):
    """The installed `ted` entry point (the suite's one real subprocess: export needs no training)."""
    exe = Path(sys.executable).with_name("ted")
    exe = str(exe) if exe.is_file() else shutil.which("ted")
    if exe is None:
        pytest.skip("the `ted` console script is not installed in this environment")
    env = dict(os.environ, TQDM_DISABLE="1", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    out = tmp_path / "exported"
    proc = subprocess.run(
        [exe, "export", str(chain["ted"]), "--output_dir", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["output_dir"] == str(out)
    assert (out / "model.safetensors").read_bytes() == (chain["export"] / "model.safetensors").read_bytes()
    # Exit status 2 on bad input is checked in-process (test_models_checks): one interpreter start is enough.


# ---- regression, --config, Python API, GLUE TSV -------------------------------------------------


@pytest.fixture(scope="module")
def bert_assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("bert_assets")
    tok = tiny.build_tokenizer()
    return {
        "root": root,
        "t0": tiny.write_model(root / "t0", tok, "bert", layers=4, seed=0),
        "s0": tiny.write_model(root / "s0", tok, "bert", layers=2, seed=1),
        "cls": tiny.write_data(root / "cls", n_train=32, n_dev=16),
        "reg": tiny.write_data(root / "reg", n_train=32, n_dev=16, regression=True),
    }


def test_regression_ted_with_and_without_paper_compat(bert_assets, tmp_path):
    flags = tiny.train_flags(*bert_assets["reg"])
    t, s, t1, s1 = (tmp_path / n for n in ("t", "s", "t1", "s1"))
    ted_cli("finetune", "--model_name_or_path", bert_assets["t0"], "--output_dir", t, *flags)
    ted_cli("finetune", "--model_name_or_path", bert_assets["s0"], "--output_dir", s, *flags)
    assert read(t, "ted_stage.json")["task"]["head"] == "regression"
    ted_cli("learn-filters", "--model_name_or_path", t, "--output_dir", t1, "--filter_interval", 2, *flags)
    ted_cli("learn-filters", "--model_name_or_path", s, "--output_dir", s1, "--filter_interval", 1, *flags)
    assert sorted(read(t1, "stage1_layer_scores.json")["1"]) == ["mse", "pearson", "spearmanr"]
    distill = [
        "distill",
        "--model_name_or_path",
        s1,
        "--teacher_model_name_or_path",
        t1,
        "--kl_alpha",
        1,
        "--mse_alpha",
        5,
        "--teacher_filter_interval",
        2,
        *flags,
    ]
    ted_cli(*distill, "--output_dir", tmp_path / "ted")
    with pytest.warns(UserWarning, match="softmax across the examples"):
        ted_cli(*distill, "--paper_compat", "--output_dir", tmp_path / "ted_paper")
    first_step = {}
    for name, compat in (("ted", False), ("ted_paper", True)):
        folder = tmp_path / name
        assert "eval_spearmanr" in read(folder, "eval_results.json")
        assert read(folder, "ted_stage.json")["args"]["paper_compat"] is compat
        logs = [e for e in read(folder, "log_history.json") if "loss_kl" in e]
        assert logs and all(k in logs[0] for k in ("loss_pred", "loss_kl", "loss_mse", "loss_mse_layer0"))
        first_step[name] = logs[0]
    # Same weights and batch at step 1: the task loss agrees, the KD and MSE definitions do not
    # (softmax across the batch vs MSE; padding positions in vs out of the layer MSE).
    assert first_step["ted"]["loss_pred"] == pytest.approx(first_step["ted_paper"]["loss_pred"], rel=1e-5)
    assert first_step["ted"]["loss_kl"] != pytest.approx(first_step["ted_paper"]["loss_kl"], rel=1e-3)
    assert first_step["ted"]["loss_mse"] != pytest.approx(first_step["ted_paper"]["loss_mse"], rel=1e-6)


def test_config_file_with_cli_overrides(bert_assets, tmp_path):
    train, dev = bert_assets["cls"]
    out = tmp_path / "ft"
    config = tmp_path / "finetune.yaml"
    config.write_text(
        "\n".join(
            [
                f"model_name_or_path: {bert_assets['s0']}",
                f"train_file: {train}",
                f"validation_file: {dev}",
                "text_columns: [sentence]",
                "max_seq_length: 32",
                "num_train_epochs: 3",
                "learning_rate: 0.01",
                "per_device_train_batch_size: 16",
                "dataloader_pin_memory: false",
                "disable_tqdm: true",
                "seed: 7",
                f"output_dir: {tmp_path / 'from_yaml'}",
            ]
        )
        + "\n"
    )
    ted_cli("finetune", "--config", config, "--num_train_epochs", 1, "--learning_rate", 0.002, "--output_dir", out)
    args = read(out, "ted_stage.json")["args"]
    assert args["num_train_epochs"] == 1 and args["learning_rate"] == 0.002  # the command line wins
    assert args["seed"] == 7 and args["text_columns"] == ["sentence"] and args["max_seq_length"] == 32  # from YAML
    assert args["dataloader_pin_memory"] is False and args["disable_tqdm"] is True  # YAML booleans
    assert read(out, "train_results.json")["epoch"] == 1
    assert not (tmp_path / "from_yaml").exists()


def test_python_api_learn_filters(bert_assets, tmp_path):
    train, dev = bert_assets["cls"]
    common = dict(
        train_file=str(train),
        validation_file=str(dev),
        max_seq_length=32,
        num_train_epochs=1,
        per_device_train_batch_size=16,
        dataloader_pin_memory=False,
        learning_rate=1e-3,
        disable_tqdm=True,
    )
    student = ted.finetune(model_name_or_path=str(bert_assets["s0"]), output_dir=str(tmp_path / "s"), **common)
    assert student.output_dir == str(tmp_path / "s") and "eval_accuracy" in student.metrics
    result = ted.learn_filters(
        model_name_or_path=student.output_dir,
        output_dir=str(tmp_path / "s1"),
        filter_interval=2,
        filter_nonlinear=True,
        filter_output_dim=16,
        stage1_backbone_mode="eval",
        **common,
    )
    assert set(result.extra["layer_scores"]) == {"1"}  # 2 layers, interval 2: the top layer only
    filters = read(tmp_path / "s1", "filters.json")
    assert (filters["layers"], filters["nonlinear"], filters["output_dim"]) == ([1], True, 16)
    assert read(tmp_path / "s1", "ted_stage.json")["args"]["stage1_backbone_mode"] == "eval"
    assert "eval_layer1_accuracy" in result.metrics


@requires_shared
def test_glue_rte_tsv_finetune(bert_assets, tmp_path):
    out = tmp_path / "rte"
    ted_cli(
        "finetune",
        "--model_name_or_path",
        bert_assets["s0"],
        "--task_name",
        "rte",
        "--data_dir",
        SHARED / "data" / "glue",
        "--max_train_samples",
        32,
        "--max_eval_samples",
        16,
        "--max_seq_length",
        32,
        "--num_train_epochs",
        1,
        "--per_device_train_batch_size",
        16,
        "--dataloader_pin_memory",
        "False",
        "--disable_tqdm",
        "True",
        "--output_dir",
        out,
    )
    info = read(out, "ted_stage.json")
    assert info["task"]["name"] == "rte" and info["task"]["label_list"] == ["entailment", "not_entailment"]
    assert "eval_accuracy" in read(out, "eval_results.json")
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {"0": "entailment", "1": "not_entailment"}


def test_best_epoch_is_kept_for_the_wrapped_student(bert_assets, tmp_path):
    """Stage II trains a wrapper (student + filters), not a PreTrainedModel: the best epoch must still
    be reloaded at the end, so the folder's score is the best per-epoch dev score, not the last one."""
    train, dev = bert_assets["cls"]
    labels = ["neg", "pos"]
    teacher = tiny.write_model(tmp_path / "teacher", tiny.build_tokenizer(), layers=2, seed=3, head_labels=labels)
    out = tmp_path / "kd"
    ted_cli(
        "distill",
        "--model_name_or_path",
        bert_assets["s0"],
        "--teacher_model_name_or_path",
        teacher,
        "--kl_alpha",
        1,
        "--output_dir",
        out,
        *tiny.train_flags(train, dev, num_train_epochs=3, learning_rate=0.5, per_device_train_batch_size=8),
    )
    # A learning rate this high makes dev accuracy jump between epochs (here 0.375, 0.625, 0.375 on
    # torch 2.13 CPU), so the last epoch is not the best one; the assertions hold whatever the numbers.
    per_epoch = [e["eval_accuracy"] for e in read(out, "log_history.json") if "eval_accuracy" in e]
    assert len(per_epoch) == 3  # three epochs; the kept one's score is reused, not computed again
    assert read(out, "eval_results.json")["eval_accuracy"] == max(per_epoch)
    # ... and the saved student scores that again.
    ted_cli("evaluate", "--model_name_or_path", out, "--output_dir", tmp_path / "eval", *tiny.train_flags(train, dev))
    assert read(tmp_path / "eval", "eval_results.json")["eval_accuracy"] == max(per_epoch)
