"""`ted report`: the significance table over seeds and dev examples, per-example predictions written by the
stages, the constant-prediction baseline and the layer CKA plot (issue 14)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import ted
import tiny
from ted import artifacts
from ted.reporting import collect, plots, report, tables
from ted.reporting.similarity import linear_cka
from tiny import one_thread  # noqa: F401  (module fixture)

pytestmark = pytest.mark.usefixtures("one_thread")
ROLES = ("teacher", "student", "teacher_stage1", "student_stage1", "ted", "kd", "lwd")


def stage(folder: Path, role: str, seed: int, score: float, predictions=None, labels=None, **extra) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    info = {
        "stage": "distill",
        "method": role,
        "task": {
            "name": "custom",
            "head": "classification",
            "label_list": ["neg", "pos"],
            "selection_metric": "accuracy",
        },
        "pipeline": {"role": role, "task": "custom", "seed": seed},
        "lineage": {},
        "args": {"seed": seed},
        **extra,
    }
    (folder / artifacts.STAGE_FILE).write_text(json.dumps(info))
    (folder / artifacts.EVAL_RESULTS).write_text(json.dumps({"eval_accuracy": score}))
    (folder / artifacts.LOG_HISTORY).write_text("[]")
    if predictions is not None:
        logits = np.eye(2)[predictions]
        np.savez_compressed(folder / "eval_predictions.npz", predictions=logits, labels=labels)


def fake_run(root: Path, ted_better: bool) -> Path:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    for seed in (1, 2, 3):
        for role in ROLES:
            right = 0.85 if (role == "ted" and ted_better) else 0.6
            preds = np.where(rng.random(200) < right, labels, 1 - labels)
            score = float((preds == labels).mean())
            stage(root / "custom" / f"seed{seed}" / role, role, seed, score, preds, labels)
    return root


def table_of(root: Path) -> dict[str, list[str]]:
    runs = collect.find_runs([root])["custom"]
    header, rows = tables.significance_table(runs)
    assert header[0] == "pair"
    return {row[0]: row for row in rows}


def test_significance_table_names_each_pair_and_says_not_significant(tmp_path):
    rows = table_of(fake_run(tmp_path / "same", ted_better=False))
    assert set(rows) == {"TED − KD", "TED − LWD", "TED − student", "KD − student"}
    assert all(r[1] == "3" for r in rows.values())
    assert rows["KD − student"][5] == "not significant" or rows["KD − student"][5].startswith("significant: ")
    assert "n.s." in rows["KD − student"][6]  # both ~60%: the per-seed bootstrap shows no difference


def test_a_real_difference_is_significant(tmp_path):
    rows = table_of(fake_run(tmp_path / "better", ted_better=True))
    assert rows["TED − KD"][5] == "significant: TED higher acc" and float(rows["TED − KD"][2]) > 15
    assert "n.s." not in rows["TED − KD"][6] and rows["TED − KD"][6].count("seed") == 3


def test_report_has_the_table_and_the_stage1_baseline(tmp_path):
    run = fake_run(tmp_path / "run", ted_better=True)
    md, _ = report.write_report([run], tmp_path / "out", speed=None, cka=False)
    text = md.read_text()
    assert "TED − KD" in text and "paired permutation" in text
    runs = collect.find_runs([run])["custom"]
    labels = np.load(run / "custom" / "seed1" / "teacher" / "eval_predictions.npz")["labels"]
    assert collect.constant_baseline(runs) == pytest.approx(max(labels.mean(), 1 - labels.mean()))


def test_linear_cka_properties():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8))
    rotation, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    assert linear_cka(x, x) == pytest.approx(1.0)
    assert linear_cka(x, 3.0 * x @ rotation + 1.0) == pytest.approx(1.0)  # rotation, scale and shift
    assert linear_cka(x, rng.normal(size=(64, 5))) < 0.3
    # The definition with centred Gram matrices (Kornblith et al. 2019, eq. 2 with linear kernels).
    y = x[:, :4] + 0.5 * rng.normal(size=(64, 4))
    h = np.eye(64) - 1 / 64
    k, m = h @ x @ x.T @ h, h @ y @ y.T @ h
    assert linear_cka(x, y) == pytest.approx(np.sum(k * m) / np.sqrt(np.sum(k * k) * np.sum(m * m)))


def test_stages_save_per_example_predictions_and_the_cka_plot(tmp_path):
    """A tiny real chain: finetune writes eval_predictions.npz of the kept model; the report draws CKA."""
    tok = tiny.build_tokenizer()
    train, dev = tiny.write_data(tmp_path / "data", n_train=32, n_dev=16)
    teacher = tiny.write_stage1_model(tmp_path / "t", tok, layers=4, filter_layers=[1, 3], interval=2, seed=1)
    base = tiny.write_model(tmp_path / "s0", tok, layers=2, seed=2)
    flags = dict(train_file=str(train), validation_file=str(dev), max_seq_length=tiny.MAX_LEN, seed=1)
    flags.update(num_train_epochs=2, per_device_train_batch_size=16, learning_rate=1e-3, report_to="none")
    flags.update(dataloader_pin_memory=False, disable_tqdm=True)
    result = ted.finetune(model_name_or_path=str(base), output_dir=str(tmp_path / "student"), **flags)
    saved = np.load(Path(result.output_dir) / "eval_predictions.npz")
    assert saved["predictions"].shape == (16, 2) and len(saved["labels"]) == 16
    accuracy = float((saved["predictions"].argmax(1) == saved["labels"]).mean())
    assert accuracy == pytest.approx(result.metrics["eval_accuracy"])  # the kept model's predictions
    run = tmp_path / "run" / "custom" / "seed1"
    for role, source in (
        ("teacher_stage1", teacher),
        ("student_stage1", result.output_dir),
        ("ted", result.output_dir),
    ):
        shutil.copytree(source, run / role)
        args = {"train_file": str(train), "validation_file": str(dev), "max_seq_length": tiny.MAX_LEN}
        info = {
            "stage": role,
            "task": {"name": "custom", "head": "classification", "label_list": ["neg", "pos"]},
            "pipeline": {"role": role, "task": "custom", "seed": 1},
            "lineage": {"layer_pairs": [[0, 1], [1, 3]]},
            "args": args,
        }
        (run / role / artifacts.STAGE_FILE).write_text(json.dumps(info))
    runs = collect.find_runs([tmp_path / "run"])["custom"]
    png = plots.plot_layer_cka(runs, tmp_path / "cka.png")
    assert png is not None and png.read_bytes().startswith(b"\x89PNG")
