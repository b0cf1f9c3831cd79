"""Stage II (TED) with 2 CPU processes (torchrun, gloo) against 1 process with the same global batch.

1 process x batch 8 and 2 processes x batch 4 see the same 8 examples per optimizer step (accelerate splits
each global batch of the same seeded permutation between the processes) and DDP averages the gradients.
Dropout is 0, so the two runs differ only by: the layer MSE being normalised by the real-token count of each
half batch before the average over processes (instead of over all 8 examples), dynamic padding to each half's
length, and float summation order. That moves the dev loss by ~1e-6 here; we allow 1e-3, and the dev accuracy
may differ by at most one of the 32 dev examples. The teacher must never be wrapped for DDP.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import tiny
from ted.cli.main import main

HERE = Path(__file__).resolve().parent
N_DEV = 32
FLAGS = [
    "distill",
    "--teacher_filter_interval",
    "2",
    "--filter_output_dim",
    "16",
    "--kl_alpha",
    "1",
    "--mse_alpha",
    "10",
    "--num_train_epochs",
    "2",
    "--learning_rate",
    "5e-3",
    "--logging_steps",
    "2",
    "--disable_tqdm",
    "true",
    "--seed",
    "0",
    "--max_seq_length",
    str(tiny.MAX_LEN),
    "--classifier_dropout",
    "0",
    "--dataloader_pin_memory",
    "false",
    "--report_to",
    "none",
]


@pytest.mark.slow
def test_ted_two_processes_match_one(tmp_path, monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    tok = tiny.build_tokenizer()
    train, dev = tiny.write_data(tmp_path / "data", n_train=64, n_dev=N_DEV)
    teacher = tiny.write_stage1_model(tmp_path / "t", tok, 4, [1, 3], 2, seed=0)
    student = tiny.write_stage1_model(tmp_path / "s", tok, 2, [0, 1], 1, seed=1)
    common = FLAGS + [
        "--teacher_model_name_or_path",
        str(teacher),
        "--model_name_or_path",
        str(student),
        "--train_file",
        str(train),
        "--validation_file",
        str(dev),
    ]

    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "TOKENIZERS_PARALLELISM": "false"}
    two, report = tmp_path / "two", tmp_path / "report"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(HERE / "ddp_driver.py"),
        str(report),
        *common,
        "--per_device_train_batch_size",
        "4",
        "--output_dir",
        str(two),
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    one = tmp_path / "one"  # meanwhile, the 1-process reference in this process
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(common + ["--per_device_train_batch_size", "8", "--output_dir", str(one)]) == 0
    finally:
        torch.set_num_threads(threads)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-4000:]
    assert out.count('"output_dir"') == 1, out[-4000:]  # one process prints the result

    for rank in (0, 1):
        seen = json.loads((report / f"rank{rank}.json").read_text())
        assert seen["world_size"] == 2
        assert seen["wrapper"] == "DistributedDataParallel"
        assert not seen["teacher_in_trained_module"]
        assert not seen["teacher_requires_grad"] and not seen["teacher_training"]

    m1 = json.loads((one / "eval_results.json").read_text())
    m2 = json.loads((two / "eval_results.json").read_text())
    assert abs(m1["eval_loss"] - m2["eval_loss"]) <= 1e-3, (m1, m2)
    assert abs(m1["eval_accuracy"] - m2["eval_accuracy"]) <= 1 / N_DEV + 1e-9, (m1, m2)
    # Same number of optimizer steps: 2 epochs x 64 / 8.
    h1 = json.loads((one / "log_history.json").read_text())
    h2 = json.loads((two / "log_history.json").read_text())
    assert h1[-1]["step"] == h2[-1]["step"] == 16
    # The logged loss terms are averaged over both processes: they track the 1-process run closely.
    first1 = next(e for e in h1 if "loss_mse" in e)
    first2 = next(e for e in h2 if "loss_mse" in e)
    assert first2["loss_pred"] == pytest.approx(first1["loss_pred"], rel=1e-3)
    assert first2["loss_mse"] == pytest.approx(first1["loss_mse"], rel=5e-2)
    # The comparison is not vacuous: training moved the dev loss away from where it started.
    assert len({round(e["eval_loss"], 4) for e in h1 if "eval_loss" in e}) > 1
    # Only the main process wrote the stage folder, and it is complete.
    assert (two / "filters.safetensors").is_file() and not (tmp_path / "two.incomplete").exists()
