"""The real pair: all-MiniLM-L6-v2 (6 layers) teaches paraphrase-MiniLM-L3-v2 (3 layers) on RTE, with TED.

Very few examples and one epoch: this checks that real checkpoints (sentence-transformers folders,
no task head, shared vocabulary) go through every stage and pair layers as in the paper's
6-vs-3 setting: teacher interval 2 -> layers 1, 3, 5; student interval 1 -> layers 0, 1, 2.
"""

from __future__ import annotations

import json

import pytest

from helpers import SHARED, requires_shared
from ted.cli.main import main
from tiny import one_thread  # noqa: F401  (module fixture)

TEACHER = SHARED / "models" / "all-MiniLM-L6-v2"
STUDENT = SHARED / "models" / "paraphrase-MiniLM-L3-v2"

pytestmark = [
    pytest.mark.slow,
    requires_shared,
    pytest.mark.skipif(
        not (TEACHER / "config.json").is_file() or not (STUDENT / "config.json").is_file(),
        reason=f"MiniLM checkpoints not found under {SHARED / 'models'}",
    ),
    pytest.mark.usefixtures("one_thread"),
]


def _run(*argv) -> None:
    assert main([str(a) for a in argv]) == 0, argv


def _read(folder, name):
    return json.loads((folder / name).read_text())


def test_minilm_ted_on_rte(tmp_path, monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    # No per-epoch checkpoints of the 22M-parameter teacher: evaluation still runs once at the end.
    data = [
        "--task_name",
        "rte",
        "--data_dir",
        SHARED / "data" / "glue",
        "--max_train_samples",
        32,
        "--max_eval_samples",
        32,
        "--max_seq_length",
        64,
        "--num_train_epochs",
        1,
        "--per_device_train_batch_size",
        16,
        "--per_device_eval_batch_size",
        32,
        "--dataloader_pin_memory",
        "False",
        "--eval_strategy",
        "no",
        "--save_strategy",
        "no",
        "--learning_rate",
        1e-4,
        "--logging_steps",
        1,
        "--disable_tqdm",
        "True",
    ]
    t, t1, s1, out = (tmp_path / n for n in ("teacher", "teacher_stage1", "student_stage1", "ted"))
    _run("finetune", "--model_name_or_path", TEACHER, "--output_dir", t, *data)
    _run("learn-filters", "--model_name_or_path", t, "--output_dir", t1, "--filter_interval", 2, *data)
    # The student's Stage I straight from the pre-trained checkpoint (a fresh head; warned, allowed).
    _run("learn-filters", "--model_name_or_path", STUDENT, "--output_dir", s1, "--filter_interval", 1, *data)
    _run(
        "distill",
        "--model_name_or_path",
        s1,
        "--teacher_model_name_or_path",
        t1,
        "--output_dir",
        out,
        "--kl_alpha",
        1,
        "--mse_alpha",
        10,
        "--teacher_filter_interval",
        2,
        "--filter_interval",
        1,
        *data,
    )

    assert sorted(_read(t1, "stage1_layer_scores.json")) == ["1", "3", "5"]
    assert sorted(_read(s1, "stage1_layer_scores.json")) == ["0", "1", "2"]
    info = _read(out, "ted_stage.json")
    assert (info["stage"], info["method"]) == ("distill", "ted")
    assert [tuple(p) for p in info["lineage"]["layer_pairs"]] == [(0, 1), (1, 3), (2, 5)]
    assert info["task"]["name"] == "rte"
    for folder in (t, t1, s1, out):
        metrics = _read(folder, "eval_results.json")
        assert metrics, folder
    assert 0.0 <= _read(out, "eval_results.json")["eval_accuracy"] <= 1.0
    assert 0.0 <= _read(t, "eval_results.json")["eval_accuracy"] <= 1.0
    logged = [e for e in _read(out, "log_history.json") if "loss_mse" in e]
    assert logged and all(f"loss_mse_layer{i}" in logged[0] for i in (0, 1, 2))
    # Filters are 384 wide on both sides (the default: the model's hidden size).
    assert _read(out, "filters.json")["output_dim"] == _read(t1, "filters.json")["output_dim"] == 384
