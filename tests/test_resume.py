"""Checkpoints and resume: a cut-off stage resumes to the result of an uninterrupted run, whatever was cut off.

Kills are simulated in-process by an exception from a callback (the checkpoint is on disk, nothing after it
runs), and for real (SIGKILL) in a subprocess through the TED_TEST_CRASH_AT hook (ted.artifacts.crash_point).
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
from transformers import TrainerCallback

import ted
import ted.stages.common as stage_common
import ted.stages.finetune as finetune_stage
import ted.stages.fingerprint as stage_fingerprint
import ted.stages.output as stage_output
import ted.stages.resume as stage_resume
import ted.stages.saving as stage_saving
import ted.stages.training as stage_training
import tiny
from ted.errors import TedInputError
from ted.method.trainer import TedTrainer
from tiny import one_thread  # noqa: F401  (module fixture)

pytestmark = pytest.mark.usefixtures("one_thread")
LABELS = ["neg", "pos"]


@pytest.fixture(scope="module")
def assets(tmp_path_factory, one_thread):  # noqa: F811
    root = tmp_path_factory.mktemp("resume")
    tok = tiny.build_tokenizer()
    train, dev = tiny.write_data(root / "data", n_train=32, n_dev=8)
    model = tiny.write_model(root / "model", tok, layers=2, seed=1, head_labels=LABELS)
    return {"root": root, "train": train, "dev": dev, "model": model}


def kwargs_for(a, out: Path, **kw) -> dict:
    """2 epochs of 2 steps: a checkpoint after step 2 and step 4."""
    args = dict(
        model_name_or_path=str(a["model"]),
        train_file=str(a["train"]),
        validation_file=str(a["dev"]),
        output_dir=str(out),
        max_seq_length=32,
        per_device_train_batch_size=16,
        num_train_epochs=2,
        learning_rate=1e-3,
        logging_steps=1,
        seed=0,
        dataloader_pin_memory=False,
        report_to=["none"],
        disable_tqdm=True,
    )
    args.update(kw)
    return args


class SimulatedKill(BaseException):
    pass


class KillAfterSave(TrainerCallback):
    def __init__(self, step: int = 2):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise SimulatedKill(f"killed after the checkpoint of step {self.step}")


class CountSteps(TrainerCallback):
    def __init__(self):
        self.steps: list[int] = []

    def on_step_end(self, args, state, control, **kwargs):
        self.steps.append(state.global_step)


def with_callback(monkeypatch, callback) -> None:
    class Trainer(TedTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.add_callback(callback)

    monkeypatch.setattr(stage_training, "TedTrainer", Trainer)


def read(folder: Path, name: str):
    return json.loads((folder / name).read_text())


@pytest.fixture(scope="module")
def uninterrupted(assets):
    out = assets["root"] / "whole"
    ted.finetune(**kwargs_for(assets, out))
    return out


def test_resume_gives_the_uninterrupted_result_and_whole_run_train_loss(assets, uninterrupted, tmp_path, monkeypatch):
    out = tmp_path / "cut"
    with_callback(monkeypatch, KillAfterSave(2))
    with pytest.raises(SimulatedKill):
        ted.finetune(**kwargs_for(assets, out))
    work = stage_output.work_dir(out)
    assert stage_resume.checkpoint_is_complete(work / "checkpoint-2")
    counter = CountSteps()
    with_callback(monkeypatch, counter)
    ted.finetune(**kwargs_for(assets, out))
    assert counter.steps == [3, 4]  # resumed, did not start over
    whole, resumed = read(uninterrupted, "train_results.json"), read(out, "train_results.json")
    assert resumed["train_loss"] == pytest.approx(whole["train_loss"], rel=1e-6)
    assert [e["train_loss"] for e in read(out, "log_history.json") if "train_loss" in e] == [
        pytest.approx(whole["train_loss"], rel=1e-6)
    ]
    a, b = tiny.state_dict_of(uninterrupted), tiny.state_dict_of(out)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not work.exists()


def test_whole_run_loss_needs_every_step_logged():
    history = [{"loss": 1.0, "step": 2}, {"loss": 0.5, "step": 3}, {"eval_accuracy": 1.0, "step": 3}]
    assert stage_resume.whole_run_loss(history, 3) == pytest.approx(2.5 / 3)
    assert stage_resume.whole_run_loss(history, 4) is None  # the last step was not logged: a gap


def test_checkpoint_missing_files_is_not_resumed(assets, uninterrupted, tmp_path, monkeypatch):
    """A checkpoint that lost files (a kill while it was written or deleted) must not break the next run."""
    out = tmp_path / "lost"
    with_callback(monkeypatch, KillAfterSave(2))
    with pytest.raises(SimulatedKill):
        ted.finetune(**kwargs_for(assets, out))
    ckpt = stage_output.work_dir(out) / "checkpoint-2"
    for f in ckpt.iterdir():
        if f.name not in ("config.json", "trainer_state.json", stage_resume.CHECKPOINT_MARKER):
            f.unlink()
    assert not stage_resume.checkpoint_is_complete(ckpt)
    counter = CountSteps()
    with_callback(monkeypatch, counter)
    ted.finetune(**kwargs_for(assets, out))
    assert counter.steps == [1, 2, 3, 4]  # started over from scratch
    a, b = tiny.state_dict_of(uninterrupted), tiny.state_dict_of(out)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_changed_settings_with_old_folder_resume_after_a_kill(assets, uninterrupted, tmp_path, monkeypatch):
    """Retraining with new settings over a finished folder, killed: the re-run resumes the new run."""
    out = tmp_path / "retrain"
    shutil.copytree(uninterrupted, out)
    new = kwargs_for(assets, out, learning_rate=5e-4, overwrite_output_dir=True)
    with_callback(monkeypatch, KillAfterSave(2))
    with pytest.raises(SimulatedKill):
        ted.finetune(**new)
    assert read(out, "ted_stage.json")["args"]["learning_rate"] == 1e-3  # the old folder is still in place
    counter = CountSteps()
    with_callback(monkeypatch, counter)
    ted.finetune(**new)
    assert counter.steps == [3, 4]
    assert read(out, "ted_stage.json")["args"]["learning_rate"] == 5e-4


def test_moved_run_folder_still_resumes(assets, tmp_path, monkeypatch):
    """The fingerprint identifies inputs by content: a cut-off run copied elsewhere (with its inputs) resumes."""
    src = tmp_path / "a"
    shutil.copytree(assets["root"] / "data", src / "data")
    shutil.copytree(assets["model"], src / "model")
    local = {"root": src, "train": src / "data" / "train.csv", "dev": src / "data" / "dev.csv", "model": src / "model"}
    with_callback(monkeypatch, KillAfterSave(2))
    with pytest.raises(SimulatedKill):
        ted.finetune(**kwargs_for(local, src / "out"))
    dst = tmp_path / "b"
    shutil.copytree(src, dst)  # copytree keeps mtimes; the identity must not depend on them or on paths anyway
    moved = {"root": dst, "train": dst / "data" / "train.csv", "dev": dst / "data" / "dev.csv", "model": dst / "model"}
    counter = CountSteps()
    with_callback(monkeypatch, counter)
    ted.finetune(**kwargs_for(moved, dst / "out"))
    assert counter.steps == [3, 4]


def test_fingerprint_follows_content_not_path(tmp_path, assets):
    args = {"model_name_or_path": str(assets["model"]), "train_file": str(assets["train"]), "learning_rate": 1.0}
    copy = tmp_path / "train.csv"
    shutil.copy(assets["train"], copy)
    os.utime(copy, (1, 1))
    assert stage_fingerprint.fingerprint(args) == stage_fingerprint.fingerprint({**args, "train_file": str(copy)})
    copy.write_text(copy.read_text().replace("pos", "neg", 1))
    assert stage_fingerprint.fingerprint(args) != stage_fingerprint.fingerprint({**args, "train_file": str(copy)})


def test_last_checkpoint_kept_until_the_stage_folder_is_written(assets, tmp_path, monkeypatch):
    """Best epoch 1, last epoch 2, killed while writing the folder: the re-run must not redo epoch 2."""
    scores = iter([1.0, 0.5, 0.5])

    def falling(task, data, data_args):
        return lambda prediction: {"accuracy": next(scores)}

    monkeypatch.setattr(finetune_stage, "task_metrics", falling)

    def killed(*args, **kwargs):
        raise SimulatedKill("killed while the stage folder was written")

    monkeypatch.setattr(stage_saving, "write_predictions", killed)  # inside the stage-folder write
    out = tmp_path / "tail"
    with pytest.raises(SimulatedKill):
        ted.finetune(**kwargs_for(assets, out))
    work = stage_output.work_dir(out)
    assert {p.name for p in work.glob("checkpoint-*")} == {"checkpoint-2", "checkpoint-4"}
    assert stage_resume.last_complete_checkpoint(work, remove_partial=False).endswith("checkpoint-4")
    assert not out.exists() and not list(tmp_path.glob(".tail.*"))  # nothing half-written left


def test_other_runs_checkpoints_refused_before_loading(assets, tmp_path, monkeypatch):
    out = tmp_path / "other"
    work = stage_output.work_dir(out)
    (work / "checkpoint-2").mkdir(parents=True)
    (work / "checkpoint-2" / "trainer_state.json").write_text("{}")
    stage_resume.mark_checkpoint_complete(work / "checkpoint-2")
    (work / stage_output.WORK_MARKER).write_text("0123456789abcdef\n")

    def no_load(*args, **kwargs):
        raise AssertionError("a model was loaded before the checks")

    monkeypatch.setattr(stage_common, "load_tokenizer", no_load)
    with pytest.raises(TedInputError, match="interrupted run with different settings"):
        ted.finetune(**kwargs_for(assets, out))
    assert (work / "checkpoint-2").is_dir()
    with pytest.raises(AssertionError, match="a model was loaded"):  # --overwrite_output_dir passes the checks
        ted.finetune(**kwargs_for(assets, out, overwrite_output_dir=True))


def test_fingerprint_only_work_dir_is_taken_over(assets, uninterrupted, tmp_path):
    """A failed run leaves `.incomplete/` with a fingerprint and no checkpoint: the corrected command runs."""
    out = tmp_path / "failed"
    work = stage_output.work_dir(out)
    work.mkdir()
    (work / stage_output.WORK_MARKER).write_text("0123456789abcdef\n")
    (work / "checkpoint-9").mkdir()  # cut off mid-write: no completion marker
    (work / "checkpoint-9" / "config.json").write_text("{}")
    ted.finetune(**kwargs_for(assets, out))
    assert not work.exists()
    assert read(out, "train_results.json")["train_loss"] == read(uninterrupted, "train_results.json")["train_loss"]


def _crash_run(assets, out: Path, point: str, **kw):
    """`ted finetune` in a subprocess, SIGKILLed by the TED_TEST_CRASH_AT hook at `point`."""
    argv = [sys.executable, "-m", "ted.cli.main", "finetune"]
    for key, value in kwargs_for(assets, out, **kw).items():
        argv += [f"--{key}", str(value[0] if isinstance(value, list) else value)]
    env = {**os.environ, "TED_TEST_CRASH_AT": point, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300), argv


@pytest.mark.slow
@pytest.mark.parametrize("point", ["after_rename", "checkpoint_unmarked:2", "before_replace"])
def test_targeted_kill_then_rerun_leaves_nothing(assets, uninterrupted, tmp_path, point):
    out = tmp_path / "killed"
    replace = point == "before_replace"
    if replace:
        shutil.copytree(uninterrupted, out)  # a finished folder for the run to replace
    proc, argv = _crash_run(assets, out, point, **({"overwrite_output_dir": True} if replace else {}))
    assert proc.returncode == -9, proc.stderr[-2000:]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    rerun = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    if point == "after_rename":  # the stage had finished: the same command says so, and clears the leftover
        assert rerun.returncode == 2 and "already exists" in rerun.stderr, rerun.stderr[-2000:]
    else:
        assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["killed"]  # no .incomplete, .tmp or .old-* left
    a, b = tiny.state_dict_of(uninterrupted), tiny.state_dict_of(out)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_resumed_run_keeps_the_predictions_of_its_kept_model(assets, tmp_path, monkeypatch):
    # The kept (best) checkpoint was scored before the kill, in another process: its per-example predictions,
    # which `ted report`'s paired tests read, must still be written (found on the issue 14 results run).
    import numpy as np

    whole = tmp_path / "whole"
    ted.finetune(**kwargs_for(assets, whole, metric_for_best_model="eval_loss", learning_rate=0.5))
    out = tmp_path / "cut"
    with_callback(monkeypatch, KillAfterSave(2))
    with pytest.raises(SimulatedKill):
        ted.finetune(**kwargs_for(assets, out, metric_for_best_model="eval_loss", learning_rate=0.5))
    with_callback(monkeypatch, CountSteps())
    ted.finetune(**kwargs_for(assets, out, metric_for_best_model="eval_loss", learning_rate=0.5))
    assert read(out, "eval_results.json")["eval_loss"] == pytest.approx(read(whole, "eval_results.json")["eval_loss"])
    expected, got = np.load(whole / "eval_predictions.npz"), np.load(out / "eval_predictions.npz")
    np.testing.assert_allclose(got["predictions"], expected["predictions"], rtol=1e-5)
    np.testing.assert_array_equal(got["labels"], expected["labels"])
