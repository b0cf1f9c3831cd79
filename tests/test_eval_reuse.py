"""A stage scores the model it keeps once: the in-training evaluation of the kept weights is reused instead
of a second pass over the dev set (stages.training.score_kept_model), with the same metrics as before."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

import ted
import tiny
from ted.method.trainer import TedTrainer
from ted.stages import training as common
from tiny import one_thread  # noqa: F401  (module fixture)

pytestmark = pytest.mark.usefixtures("one_thread")
TIMING = ("eval_runtime", "eval_samples_per_second", "eval_steps_per_second")


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("reuse")
    tok = tiny.build_tokenizer()
    train, dev = tiny.write_data(root / "cls", n_train=32, n_dev=16)
    return {"s0": tiny.write_model(root / "s0", tok, "bert", layers=2, seed=1), "train": train, "dev": dev}


def finetune(assets, out: Path, monkeypatch, reuse: bool, learning_rate: float) -> int:
    """A 2-epoch tiny fine-tune; returns how many times the dev set was evaluated."""
    calls = []
    evaluate = TedTrainer.evaluate

    def counting(self, *args, **kwargs):
        calls.append(kwargs.get("metric_key_prefix", "eval"))
        return evaluate(self, *args, **kwargs)

    monkeypatch.setattr(TedTrainer, "evaluate", counting)
    if not reuse:  # the behaviour before: always a final evaluate()
        monkeypatch.setattr(common, "logged_score_of_kept_model", lambda trainer: None)
    flags = dict(
        model_name_or_path=str(assets["s0"]),
        train_file=str(assets["train"]),
        validation_file=str(assets["dev"]),
        output_dir=str(out),
        max_seq_length=tiny.MAX_LEN,
        num_train_epochs=2,
        per_device_train_batch_size=8,
        per_device_eval_batch_size=16,
        dataloader_pin_memory=False,
        learning_rate=learning_rate,
        seed=0,
        disable_tqdm=True,
        report_to="none",
    )
    ted.finetune(**flags)
    monkeypatch.undo()
    return len(calls)


def without_timing(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k not in TIMING}


# Dev accuracy per epoch on torch 2.13 CPU: lr 0.05 -> 0.375, 0.625 (the last epoch is kept); lr 0.5 ->
# 0.625, 0.375 (the first is kept and reloaded). The assertions hold whatever the numbers.
@pytest.mark.parametrize("lr", [0.05, 0.5], ids=["best-is-last", "best-is-earlier"])
def test_kept_checkpoint_is_scored_once(assets, tmp_path, monkeypatch, lr):
    before = finetune(assets, tmp_path / "before", monkeypatch, reuse=False, learning_rate=lr)
    after = finetune(assets, tmp_path / "after", monkeypatch, reuse=True, learning_rate=lr)
    assert (before, after) == (3, 2)  # two epochs (+ the final pass before)
    old = json.loads((tmp_path / "before" / "eval_results.json").read_text())
    new = json.loads((tmp_path / "after" / "eval_results.json").read_text())
    assert without_timing(new) == without_timing(old)
    assert set(new) == set(old)
    epochs = [e for e in json.loads((tmp_path / "after" / "log_history.json").read_text()) if "eval_runtime" in e]
    assert new["eval_accuracy"] == max(e["eval_accuracy"] for e in epochs)  # the best epoch's score
    assert (tmp_path / "after" / "model.safetensors").read_bytes() == (
        tmp_path / "before" / "model.safetensors"
    ).read_bytes()


# ------------------------------------------------------------------------ when the score is not reused


def fake_trainer(log_history, best=None, global_step=20, load_best=True, predictions="absent"):
    metrics = SimpleNamespace() if predictions == "absent" else SimpleNamespace(last_predictions=predictions)
    state = SimpleNamespace(
        log_history=log_history, best_model_checkpoint=best, best_global_step=None, global_step=global_step, epoch=2.0
    )
    calls = []

    def evaluate(eval_dataset=None, metric_key_prefix="eval"):
        calls.append(metric_key_prefix)
        return {f"{metric_key_prefix}_accuracy": 0.5}

    trainer = SimpleNamespace(
        args=SimpleNamespace(load_best_model_at_end=load_best), state=state, compute_metrics=metrics, evaluate=evaluate
    )
    return trainer, calls


def evals(*steps):
    return [{"loss": 1.0, "step": 1}] + [
        {"eval_accuracy": 0.1 * s, "eval_runtime": 1.0, "epoch": s / 10, "step": s} for s in steps
    ]


def test_second_eval_set_is_scored_on_the_kept_model(tmp_path):
    (tmp_path / "checkpoint-10").mkdir()
    trainer, calls = fake_trainer(evals(10, 20), best=str(tmp_path / "checkpoint-10"))
    metrics = common.score_kept_model(trainer, {"validation_matched": [], "validation_mismatched": []})
    assert calls == ["eval_validation_mismatched"]  # MNLI: only the matched set is scored during training
    assert metrics["eval_accuracy"] == 1.0 and metrics["epoch"] == 2.0 and "step" not in metrics


def test_no_reuse_without_an_evaluation_of_the_kept_weights(tmp_path):
    (tmp_path / "checkpoint-10").mkdir()
    best = str(tmp_path / "checkpoint-10")
    # Without selection the last step is kept: no evaluation at step 25 (eval every 10 steps).
    trainer, calls = fake_trainer(evals(10, 20), global_step=25, load_best=False)
    assert common.logged_score_of_kept_model(trainer) is None
    # The best checkpoint's folder is gone: the Trainer could not reload it.
    trainer, _ = fake_trainer(evals(10, 20), best=str(tmp_path / "checkpoint-99"))
    assert common.logged_score_of_kept_model(trainer) is None
    # SQuAD writes the latest evaluation's predictions: reuse only when that evaluation is the kept one ...
    trainer, _ = fake_trainer(evals(10, 20), best=best, predictions=("p", "n", "o"))
    assert common.logged_score_of_kept_model(trainer) is None
    trainer, _ = fake_trainer(evals(10), best=best, predictions=("p", "n", "o"))
    assert common.logged_score_of_kept_model(trainer)["eval_accuracy"] == 1.0
    # ... and it happened in this process (a run resumed after its last evaluation holds no predictions).
    trainer, _ = fake_trainer(evals(10), best=best, predictions=None)
    assert common.logged_score_of_kept_model(trainer) is None
