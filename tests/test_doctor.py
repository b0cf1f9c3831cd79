"""ted doctor, the training guard and --balance_losses (issue 14), on tiny models and constructed cases."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import ted
import tiny
from ted import artifacts
from ted.cli.main import main
from ted.errors import TedInputError
from ted.method.objectives import DistillObjective, DistillWeights, balanced_alpha
from ted.method.trainer import GUARD_DOMINANCE, TedTrainer, collapse_check
from ted.stages.doctor import Findings, check_stage1, check_teacher, check_terms, majority_baseline
from tiny import one_thread  # noqa: F401  (module fixture)

pytestmark = pytest.mark.usefixtures("one_thread")
KEYS = {"teacher_dev", "majority_baseline", "stage1_layers", "initial_terms", "suggested", "warnings", "verdict"}


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("doctor")
    tok = tiny.build_tokenizer()
    train, dev = tiny.write_data(root / "data", n_train=32, n_dev=16)
    teacher = tiny.write_stage1_model(root / "teacher", tok, layers=4, filter_layers=[1, 3], interval=2, seed=1)
    student = tiny.write_stage1_model(root / "student", tok, layers=2, filter_layers=[0, 1], interval=1, seed=2)
    swapped = tiny.write_model(root / "swapped", tok, layers=4, seed=1, head_labels=["pos", "neg"])
    return {"root": root, "train": train, "dev": dev, "teacher": teacher, "student": student, "swapped": swapped}


def doctor_kwargs(assets, **extra) -> dict:
    kwargs = dict(
        model_name_or_path=str(assets["student"]),
        teacher_model_name_or_path=str(assets["teacher"]),
        train_file=str(assets["train"]),
        validation_file=str(assets["dev"]),
        max_seq_length=tiny.MAX_LEN,
        teacher_filter_interval=2,
        filter_output_dim=16,
        kl_alpha=1.0,
        mse_alpha=1.0,
        per_device_train_batch_size=8,
        doctor_batches=2,
        dataloader_pin_memory=False,
    )
    kwargs.update(extra)
    return kwargs


def test_doctor_reports_every_documented_key(assets, tmp_path):
    out = tmp_path / "doctor.json"
    findings = ted.doctor(**doctor_kwargs(assets, json=str(out)))
    data = json.loads(out.read_text())
    assert KEYS <= set(data)
    assert data["majority_baseline"] == pytest.approx(findings.majority_baseline)
    assert set(data["initial_terms"]) == {"pred", "kl", "mse"}
    for name in ("kl", "mse"):  # weighted = alpha x raw; suggested alpha puts the weighted term at the task loss
        term = data["initial_terms"][name]
        assert term["weighted"] == pytest.approx(1.0 * term["raw"])
        assert data["suggested"][f"{name}_alpha"] * term["raw"] == pytest.approx(data["initial_terms"]["pred"]["raw"])
    assert data["layer_map"] == [[0, 1], [1, 3]]
    assert data["verdict"].startswith("ted doctor:")
    assert 0 <= data["teacher_dev"] <= 1 and 0 <= data["student_dev"] <= 1  # both tiny models have a head


def test_random_teacher_is_flagged_at_chance(assets):
    """The tiny teacher's head is random: its dev score is at (or below) the majority baseline."""
    findings = ted.doctor(**doctor_kwargs(assets))
    assert any("majority baseline" in w and "teacher" in w for w in findings.warnings)


def test_teacher_at_chance_and_below_chance():
    near = Findings(metric="accuracy", teacher_dev=0.52, majority_baseline=0.51, chance_band=0.06)
    check_teacher(near)
    assert "knows little about the task" in near.warnings[0]
    swapped = Findings(metric="accuracy", teacher_dev=0.20, majority_baseline=0.51, chance_band=0.06)
    check_teacher(swapped)
    assert "label order may be swapped" in swapped.warnings[0]
    good = Findings(metric="accuracy", teacher_dev=0.80, majority_baseline=0.51, chance_band=0.06)
    check_teacher(good)
    assert good.warnings == []


def test_filters_at_chance_are_named():
    findings = Findings(metric="accuracy", majority_baseline=0.5126)
    scores = {"1": {"accuracy": 0.5126}, "3": {"accuracy": 0.5126}, "5": {"accuracy": 0.61}}
    check_stage1(findings, "teacher", scores, dev_examples=277)
    layers = findings.stage1_layers["teacher"]
    assert [layers[k]["at_chance"] for k in ("1", "3", "5")] == [True, True, False]
    assert "layer(s) 1, 3" in findings.warnings[0] and "learned nothing" in findings.warnings[0]


def test_doctor_reads_stage1_scores_of_the_folders(assets, tmp_path):
    import shutil

    teacher = tmp_path / "teacher"
    shutil.copytree(assets["teacher"], teacher)
    artifacts.write_json(teacher / artifacts.STAGE1_SCORES, {"1": {"accuracy": 0.0}, "3": {"accuracy": 1.0}})
    findings = ted.doctor(**doctor_kwargs(assets, teacher_model_name_or_path=str(teacher)))
    assert findings.stage1_layers["teacher"]["1"]["at_chance"] is True
    assert findings.stage1_layers["teacher"]["3"]["at_chance"] is False


def test_a_term_100x_the_task_loss_is_flagged_with_an_alpha():
    findings = Findings()
    weights = DistillWeights(kl_alpha=0.0, mse_alpha=100.0)
    check_terms(findings, {"pred": 0.6, "mse": 0.6}, weights)
    assert findings.initial_terms["mse"] == {"raw": 0.6, "weighted": pytest.approx(60.0)}
    assert findings.suggested["mse_alpha"] == pytest.approx(1.0)
    assert "100x the task loss" in findings.warnings[0] and "--mse_alpha 1" in findings.warnings[0]
    quiet = Findings()
    check_terms(quiet, {"pred": 0.6, "mse": 0.6}, DistillWeights(kl_alpha=0.0, mse_alpha=2.0))
    assert quiet.warnings == []


def test_swapped_labels_stop_the_doctor_with_a_report(assets, tmp_path, capsys):
    out = tmp_path / "doctor.json"
    argv = ["doctor"]
    for key, value in doctor_kwargs(
        assets, teacher_model_name_or_path=str(assets["swapped"]), method="kd", mse_alpha=0, json=str(out)
    ).items():
        argv += [f"--{key}", str(value)]
    assert main(argv) == 0
    data = json.loads(out.read_text())
    assert data["verdict"].startswith("ted doctor: STOP") and "label order must agree" in data["warnings"][0]
    assert "STOP" in capsys.readouterr().out


def test_majority_baseline_is_the_best_constant_prediction():
    from ted.tasks.base import Task
    from ted.tasks.metrics import glue_metric_fn

    def task(name, head, labels, metric):
        return Task(name, head, labels, metric, metric_fn=glue_metric_fn(name))

    rte = task("rte", "classification", ["entailment", "not_entailment"], "accuracy")
    assert majority_baseline(rte, np.array([1, 1, 0, 1])) == pytest.approx(0.75)
    cola = task("cola", "classification", ["0", "1"], "matthews_correlation")
    assert majority_baseline(cola, np.array([1, 1, 0, 1])) == 0.0
    stsb = task("stsb", "regression", None, "spearmanr")
    assert majority_baseline(stsb, np.array([1.0, 3.0, 2.0])) == 0.0


# ------------------------------------------------------------------------------------- the guard


def guard_trainer(alpha: float = 50.0):
    weights = DistillWeights(kl_alpha=0.0, mse_alpha=alpha)
    objective = DistillObjective("classification", None, weights)
    return SimpleNamespace(
        objective=objective,
        guard_report=None,
        _guard_pred=[],
        _guard_weighted=[],
        state=SimpleNamespace(global_step=0),
        is_world_process_zero=lambda: True,
    )


def test_guard_fires_once_on_a_constructed_collapse():
    """The issue's numbers: task loss 0.62 -> 0.69 while mse_alpha x MSE ~ 9 (15x the task loss)."""
    trainer = guard_trainer()
    pred = [0.62, 0.63, 0.62, 0.66, 0.69, 0.69, 0.69]
    mse = [0.20, 0.19, 0.19, 0.18, 0.18, 0.18, 0.18]
    with pytest.warns(UserWarning, match="Training guard") as caught:
        for step, (p, m) in enumerate(zip(pred, mse), start=1):
            trainer.state.global_step = step
            TedTrainer._guard(trainer, {"pred": p, "mse": m})
    assert len([w for w in caught if "Training guard" in str(w.message)]) == 1
    report = trainer.guard_report
    assert report["term"] == "mse" and report["times_task_loss"] > GUARD_DOMINANCE
    assert "--mse_alpha" in report["message"] and "--balance_losses" in report["message"]


def test_guard_is_silent_on_a_healthy_run(recwarn):
    trainer = guard_trainer()
    for p, m in zip([0.69, 0.66, 0.6, 0.55, 0.5, 0.45, 0.4, 0.38], [0.2, 0.18, 0.15, 0.12, 0.1, 0.1, 0.09, 0.08]):
        TedTrainer._guard(trainer, {"pred": p, "mse": m})
    assert trainer.guard_report is None
    assert not [w for w in recwarn if "Training guard" in str(w.message)]


def test_guard_rule_needs_both_a_rise_and_a_dominant_term():
    rising = [0.6, 0.6, 0.6, 0.7, 0.7, 0.7]
    assert collapse_check(rising, [{"mse": 0.5}] * 6) is None  # the term is small
    assert collapse_check([0.6] * 6, [{"mse": 9.0}] * 6) is None  # the task loss does not rise
    assert collapse_check(rising, [{"mse": 9.0}] * 6)["term"] == "mse"
    assert collapse_check(rising[:3], [{"mse": 9.0}] * 3) is None  # too few logging intervals to judge


# --------------------------------------------------------------------------------- loss balancing


def test_balancing_fixes_weights_from_step_zero():
    objective = DistillObjective(
        "classification", None, DistillWeights(20.0, 50.0, balance=True, mse_ratio=0.5, balance_batches=1)
    )
    terms: dict = {}
    w_kl = objective.weight("kl", torch.tensor(0.3), torch.tensor(0.6), terms)
    w_mse = objective.weight("mse", torch.tensor(9.0), torch.tensor(0.6), terms)
    assert w_kl * 0.3 == pytest.approx(1.0 * 0.6) and w_mse * 9.0 == pytest.approx(0.5 * 0.6)
    # later batches keep the step-0 weights
    assert objective.weight("mse", torch.tensor(1.0), torch.tensor(5.0), terms) == pytest.approx(w_mse)
    record = objective.balance_record()
    assert record["mode"] == "first_batches" and record["batches"] == 1
    assert record["alphas"]["mse"] == pytest.approx(w_mse)
    assert record["mean_terms"] == {"pred": pytest.approx(0.6), "kl": pytest.approx(0.3), "mse": 9.0}
    assert balanced_alpha(1.0, 0.6, 0.0) is None  # a zero term keeps its alpha


def test_balancing_over_the_first_batches_uses_their_means():
    """An easy first batch (task loss 0.05) would make the weight ten times too small; the mean over the window
    does not, and the weight is fixed once the window is full."""
    objective = DistillObjective("classification", None, DistillWeights(1.0, 1.0, balance=True, balance_batches=4))
    task, mse = [0.05, 0.6, 0.5, 0.45], [0.2, 0.25, 0.3, 0.25]
    weights = [objective.weight("mse", torch.tensor(m), torch.tensor(t), {}) for t, m in zip(task, mse)]
    assert weights[0] == pytest.approx(0.05 / 0.2)  # in the window: the ratio of the means so far
    assert weights[1] == pytest.approx((0.05 + 0.6) / (0.2 + 0.25))
    assert weights[-1] == pytest.approx(sum(task) / sum(mse))
    assert objective.weight("mse", torch.tensor(9.0), torch.tensor(0.01), {}) == pytest.approx(weights[-1])
    record = objective.balance_record()
    assert record["batches"] == 4 and record["alphas"]["mse"] == pytest.approx(sum(task) / sum(mse))
    assert record["mean_terms"] == {"pred": pytest.approx(sum(task) / 4), "mse": pytest.approx(sum(mse) / 4)}


def test_balancing_every_step_and_off():
    every = DistillObjective("classification", None, DistillWeights(1.0, 1.0, balance=True, every_step=True))
    terms: dict = {}
    weight = every.weight("mse", torch.tensor(4.0), torch.tensor(2.0), terms)
    assert float(weight) == pytest.approx(0.5) and float(terms["weight_mse"]) == pytest.approx(0.5)
    assert every.weighted_terms({"mse": 4.0, "weight_mse": 0.5}) == {"mse": 2.0}
    off = DistillObjective("classification", None, DistillWeights(20.0, 50.0))
    assert off.weight("mse", torch.tensor(9.0), torch.tensor(0.6), {}) == 50.0 and off.balance_record() is None


def test_balance_options_are_checked_before_loading(assets):
    with pytest.raises(TedInputError, match="both 0"):
        ted.distill(**doctor_kwargs(assets, kl_alpha=0, mse_alpha=0, balance_losses=True, method=None))
    with pytest.raises(TedInputError, match="balance_mse_ratio must be positive"):
        ted.distill(**doctor_kwargs(assets, balance_losses=True, balance_mse_ratio=0))
    with pytest.raises(TedInputError, match="balance_batches must be positive"):
        ted.distill(**doctor_kwargs(assets, balance_losses=True, balance_batches=0))


def test_distill_records_balance_preflight_and_guard(assets, tmp_path):
    kwargs = doctor_kwargs(assets, balance_losses=True, output_dir=str(tmp_path / "ted"), num_train_epochs=1)
    kwargs.update(logging_steps=1, learning_rate=1e-3, disable_tqdm=True, report_to="none")
    del kwargs["doctor_batches"]
    ted.distill(**kwargs)
    info = json.loads((tmp_path / "ted" / artifacts.STAGE_FILE).read_text())
    balance = info["loss_balance"]
    assert balance["mode"] == "first_batches" and set(balance["alphas"]) == {"kl", "mse"}
    steps = sum("loss_pred" in h for h in json.loads((tmp_path / "ted" / artifacts.LOG_HISTORY).read_text()))
    assert balance["batches"] == min(8, steps)  # the default window, or every batch of a shorter run
    assert isinstance(info["preflight_warnings"], list) and "training_guard" in info
    history = json.loads((tmp_path / "ted" / artifacts.LOG_HISTORY).read_text())
    first = next(h for h in history if "loss_pred" in h)
    alphas = info["loss_balance"]["alphas"]
    # over the window each weighted term's mean equals the task loss's mean (ratio 1)
    means = balance["mean_terms"]
    assert alphas["mse"] * means["mse"] == pytest.approx(means["pred"])
    assert first["loss_pred"] > 0


def test_doctor_on_a_pipeline_config_needs_the_pipeline_folders(tmp_path):
    config = Path(__file__).resolve().parents[1] / "configs" / "minilm" / "rte.yaml"
    code = main(["doctor", "--pipeline_config", str(config), "--output_dir", str(tmp_path / "none")])
    assert code == 2


def test_doctor_on_a_pipeline_config_checks_the_ted_stage(tmp_path):
    """The pipeline's teacher, student and Stage I folders, then `ted doctor --pipeline_config` on them, with a
    pipeline override (--ted.mse_alpha) that reaches the checked stage."""
    from test_pipeline import CONFIG

    tok = tiny.build_tokenizer()
    tiny.write_data(tmp_path / "data", n_train=32, n_dev=16)
    tiny.write_model(tmp_path / "t0", tok, "bert", layers=4, seed=0)
    tiny.write_model(tmp_path / "s0", tok, "bert", layers=2, seed=1)
    (tmp_path / "cfg.yaml").write_text(CONFIG)
    out, cfg = tmp_path / "out", str(tmp_path / "cfg.yaml")
    ted.pipeline(cfg, output_dir=str(out), seeds=[1], methods=["kd"], num_train_epochs=1)  # no TED stage yet
    argv = ["doctor", "--pipeline_config", cfg, "--output_dir", str(out), "--seed", "1", "--num_train_epochs", "1"]
    assert main(argv) == 2  # the Stage I folders are missing: said, not crashed
    ted.pipeline(cfg, output_dir=str(out), seeds=[1], methods=["ted"], num_train_epochs=1)
    report = tmp_path / "doctor.json"
    assert main([*argv, "--ted.mse_alpha", "1000", "--json", str(report)]) == 0
    data = json.loads(report.read_text())
    assert data["layer_map"] == [[0, 1], [1, 3]] and set(data["stage1_layers"]) == {"teacher", "student"}
    assert data["initial_terms"]["mse"]["weighted"] == pytest.approx(1000 * data["initial_terms"]["mse"]["raw"])


def test_the_doctor_scores_a_random_sample_of_dev_not_its_first_rows():
    """A dev file ordered by label: its first rows hold one class, a fixed-seed sample holds both, in file order."""
    import datasets

    from ted.stages.doctor.measure import dev_sample

    dev = datasets.Dataset.from_dict({"labels": [0] * 600 + [1] * 400, "idx": list(range(1000))})
    sample = dev_sample(dev, 256)
    assert len(sample) == 256 and 0.3 < np.mean(sample["labels"]) < 0.5
    assert sample["idx"] == sorted(sample["idx"]) and dev_sample(dev, 256)["idx"] == sample["idx"]  # the same rows
    assert dev_sample(dev, 5000)["idx"] == dev["idx"]  # a small dev set is scored whole
