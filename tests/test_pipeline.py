"""`ted pipeline`, `ted report` and the model card of `ted export`, on tiny BERT models built offline.

One module-level run (2 seeds, every stage and method) is shared by the tests; the tests that must
change a run (baseline choice, interruption) work on a copy of one seed, which is also what shows that
fingerprints do not depend on where a run folder lives.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml
from transformers import AutoModelForSequenceClassification, TrainerCallback

import ted
import ted.pipelines.runner as pipeline_module
import ted.stages.resume as stage_resume
import ted.stages.training as stage_training
import tiny
from helpers import SHARED
from ted.cli.main import main
from ted.errors import TedInputError
from ted.pipelines import plan
from ted.pipelines.config import load_file
from tiny import one_thread  # noqa: F401  (module fixture)

pytestmark = pytest.mark.usefixtures("one_thread")
ROLES = ("teacher", "student", "teacher_stage1", "student_stage1", "ted", "kd", "lwd")
REPO = Path(__file__).resolve().parents[1]

CONFIG = """
task: custom
seeds: [7]
teacher: ./t0
student: ./s0
common:
  train_file: ./data/train.csv
  validation_file: ./data/dev.csv
  max_seq_length: 32
  num_train_epochs: 1
  per_device_train_batch_size: 16
  per_device_eval_batch_size: 16
  dataloader_pin_memory: false
  logging_steps: 1
  learning_rate: 1.0e-3
teacher_stage1: {filter_interval: 2}
student_stage1: {filter_interval: 1}
ted: {kl_alpha: 1, mse_alpha: 10}
kd: {kl_alpha: 1}
lwd: {kl_alpha: 1, mse_alpha: 5}
"""


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")


def read(folder: Path, name: str = "ted_stage.json"):
    return json.loads((Path(folder) / name).read_text())


def snapshot(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")}


@pytest.fixture(scope="module")
def run(tmp_path_factory, one_thread):  # noqa: F811
    """Two seeds of the whole comparison through the CLI (relative paths resolved against the file)."""
    os.environ["TQDM_DISABLE"] = "1"
    root = tmp_path_factory.mktemp("pipe")
    tok = tiny.build_tokenizer()
    tiny.write_data(root / "data", n_train=32, n_dev=16)
    tiny.write_model(root / "t0", tok, "bert", layers=4, seed=0)
    tiny.write_model(root / "s0", tok, "bert", layers=2, seed=1)
    (root / "cfg.yaml").write_text(CONFIG)
    out = root / "out"
    argv = ["pipeline", "--config", str(root / "cfg.yaml"), "--seeds", "1", "2", "--output_dir", str(out)]
    assert main(argv) == 0
    return {"root": root, "out": out, "argv": argv}


def test_layout_fingerprints_and_lineage(run):
    task_dir = run["out"] / "custom"
    fingerprints = set()
    for seed in (1, 2):
        for role in ROLES:
            folder = task_dir / f"seed{seed}" / role
            info = read(folder)
            assert info["pipeline"] == {"task": "custom", "seed": seed, "role": role}
            assert info["args"]["seed"] == seed
            fingerprints.add(info["fingerprint"])
            assert not folder.with_name(role + ".incomplete").exists()
    assert len(fingerprints) == 14  # the seed is part of every fingerprint
    seed1 = task_dir / "seed1"
    # The paper's default: KD/LWD from the pre-trained student, TED from the fine-tuned one + Stage I.
    assert read(seed1 / "kd")["lineage"]["student"] == str(run["root"] / "s0")
    assert read(seed1 / "lwd")["lineage"]["teacher"] == str(seed1 / "teacher")
    assert read(seed1 / "ted")["lineage"]["student"] == str(seed1 / "student_stage1")
    assert read(seed1 / "ted")["lineage"]["teacher"] == str(seed1 / "teacher_stage1")
    assert read(seed1 / "teacher_stage1", "filters.json")["layers"] == [1, 3]
    assert read(seed1 / "ted")["lineage"]["layer_pairs"] == [[0, 1], [1, 3]]
    assert read(task_dir, "pipeline.json")["seeds"] == [1, 2]


def test_rerun_trains_nothing(run, monkeypatch):
    def refuse(**kwargs):
        raise AssertionError(f"a finished stage was run again: {kwargs['output_dir']}")

    monkeypatch.setattr(pipeline_module, "RUNNERS", {k: refuse for k in pipeline_module.RUNNERS})
    before = snapshot(run["out"])
    assert main(run["argv"]) == 0  # `refuse` above fails the run if any stage trains again
    assert snapshot(run["out"]) == before  # no new checkpoint, log or file, nothing rewritten


def test_baseline_init_finetuned_and_relocated_run(run, tmp_path):
    out = tmp_path / "moved"
    shutil.copytree(run["out"] / "custom" / "seed1", out / "custom" / "seed1")
    runs = ted.pipeline(
        str(run["root"] / "cfg.yaml"), output_dir=str(out), seeds=[1], methods=["kd"], baseline_init="finetuned"
    )
    status = {r.role: r.status for r in runs}
    assert status == {"teacher": "reused", "student": "reused", "kd": "trained"}
    seed1 = out / "custom" / "seed1"
    assert read(seed1 / "kd")["lineage"]["student"] == str(seed1 / "student")
    assert read(out / "custom", "pipeline.json")["baseline_init"] == "finetuned"


class SimulatedKill(Exception):
    pass


class Interrupt(TrainerCallback):
    """Stands in for a kill: stops Stage II right after its first checkpoint was written."""

    def on_save(self, args, state, control, **kwargs):
        if args.output_dir.endswith("ted.incomplete"):
            raise SimulatedKill("simulated kill during Stage II")


class CountSteps(TrainerCallback):
    steps: list[int] = []

    def on_step_end(self, args, state, control, **kwargs):
        if args.output_dir.endswith("ted.incomplete"):
            CountSteps.steps.append(state.global_step)


BASE_TRAINER = stage_training.TedTrainer


def with_callback(callback):
    class Trainer(BASE_TRAINER):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.add_callback(callback)

    return Trainer


def test_interrupted_stage_two_resumes(run, tmp_path, monkeypatch):
    out = tmp_path / "cut"
    shutil.copytree(run["out"] / "custom" / "seed1", out / "custom" / "seed1")
    shutil.rmtree(out / "custom" / "seed1" / "ted")
    argv = [
        "pipeline",
        "--config",
        str(run["root"] / "cfg.yaml"),
        "--seeds",
        "1",
        "--output_dir",
        str(out),
        "--ted.num_train_epochs",
        "2",
    ]  # 2 steps per epoch: a checkpoint after step 2, 4 steps in all
    monkeypatch.setattr(stage_training, "TedTrainer", with_callback(Interrupt()))
    with pytest.raises(SimulatedKill):
        main(argv)
    ted_dir = out / "custom" / "seed1" / "ted"
    assert not ted_dir.exists() and (ted_dir.with_name("ted.incomplete") / "checkpoint-2").is_dir()

    CountSteps.steps = []
    monkeypatch.setattr(stage_training, "TedTrainer", with_callback(CountSteps()))
    runs = ted.pipeline(str(run["root"] / "cfg.yaml"), output_dir=str(out), seeds=[1], ted={"num_train_epochs": 2})
    assert {r.role: r.status for r in runs}["ted"] == "trained"
    assert {r.status for r in runs if r.role != "ted"} == {"reused"}
    assert CountSteps.steps == [3, 4]  # resumed after the checkpoint, did not start over
    assert not ted_dir.with_name("ted.incomplete").exists()
    history = read(ted_dir, "log_history.json")
    assert [h["step"] for h in history if "loss" in h] == [1, 2, 3, 4]
    assert read(ted_dir)["fingerprint"] and read(ted_dir, "eval_results.json")["eval_accuracy"] >= 0
    assert {"model.safetensors", "filters.safetensors", "tokenizer.json"} <= {p.name for p in ted_dir.iterdir()}
    AutoModelForSequenceClassification.from_pretrained(ted_dir)


def test_report_has_table_over_seeds_and_plots(run, tmp_path):
    assert main(["report", str(run["out"]), "--output", str(tmp_path), "--speed_iterations", "2"]) == 0
    md, html = (tmp_path / "report.md").read_text(), (tmp_path / "report.html").read_text()
    for row in ("teacher (fine-tuned)", "student (fine-tuned)", "student + KD", "student + LWD", "student + TED"):
        assert f"| {row} | 2 | " in md, row  # two seeds each
    ted_row = next(line for line in md.splitlines() if line.startswith("| student + TED | 2 | "))
    assert " ± " in ted_row  # mean ± std over the two seeds
    assert html.count("data:image/png;base64,") >= 3
    assert len(list((tmp_path / "report_files").glob("*.png"))) >= 3
    assert "latency" in md and "CPU" in md and "8 × 64" in md  # batch 8; 128 tokens capped at the tiny models' 64


def test_model_card_of_exported_student(run, tmp_path):
    out = tmp_path / "student"
    assert main(["export", str(run["out"] / "custom" / "seed1" / "ted"), "--output_dir", str(out)]) == 0
    card = (out / "README.md").read_text()
    header = yaml.safe_load(card.split("---")[1])  # the metadata block the Hub reads
    assert header["library_name"] == "transformers"
    assert str(run["root"] / "s0") in header["base_model"]
    assert "ted" in header["tags"] and "accuracy" in header["metrics"]
    assert header["pipeline_tag"] == "text-classification"
    assert "over 2 seeds (1, 2)" in card and " ± " in card
    assert "| kl_alpha | 1.0 |" in card and "| mse_alpha | 10.0 |" in card
    assert "faster on cpu" in card and "of the teacher's parameters" in card
    AutoModelForSequenceClassification.from_pretrained(out)


def test_bad_configs_fail_before_training(run, tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline_module, "RUNNERS", {})  # any training attempt would be a KeyError
    cfg = str(run["root"] / "cfg.yaml")
    out = str(tmp_path / "o")
    with pytest.raises(TedInputError, match="does not take"):
        ted.pipeline(cfg, output_dir=out, ted={"learning_rat": 1})
    with pytest.raises(TedInputError, match="no stage takes"):
        ted.pipeline(cfg, output_dir=out, max_train_sample=3)
    with pytest.raises(TedInputError, match="set by the pipeline"):
        ted.pipeline(cfg, output_dir=out, kd={"model_name_or_path": "x"})
    with pytest.raises(TedInputError, match="baseline_init"):
        ted.pipeline(cfg, output_dir=out, baseline_init="random")
    with pytest.raises(TedInputError, match="not a valid"):
        ted.pipeline(cfg, output_dir=out, num_train_epochs="many")
    with pytest.raises(TedInputError, match="does not exist"):
        ted.pipeline(cfg, output_dir=out, teacher=str(tmp_path / "nope"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: rte\nteacher: ${NOT_SET_ANYWHERE}\nstudent: x\n")
    with pytest.raises(TedInputError, match="is not set"):
        ted.pipeline(str(bad), output_dir=out)
    assert main(["pipeline", "--config", str(bad), "--output_dir", out]) == 2
    assert not Path(out).exists()


def test_presets_resolve(monkeypatch, tmp_path):
    """MiniLM presets find ../shared (or $TED_SHARED_DIR); paper presets hold section 4's exact settings."""
    monkeypatch.delenv("TED_SHARED_DIR", raising=False)
    cfg = load_file(REPO / "configs" / "minilm" / "rte.yaml")
    assert cfg["teacher"] == os.path.normpath(REPO.parent / "shared" / "models" / "all-MiniLM-L6-v2")
    monkeypatch.setenv("TED_SHARED_DIR", str(tmp_path))
    assert load_file(REPO / "configs" / "minilm" / "rte.yaml")["common"]["data_dir"] == str(tmp_path / "data" / "glue")
    assert (
        load_file(REPO / "configs" / "minilm" / "rte.yaml", {"shared_dir": "/x"})["student"]
        == "/x/models/paraphrase-MiniLM-L3-v2"
    )
    plans = {}
    for path in sorted((REPO / "configs" / "paper").glob("*.yaml")):
        if path.stem == "gpt2_openwebtext":  # the causal-LM preset: tests/test_pipeline_lm.py
            continue
        [(task, c)] = plan.task_configs([str(path)], {"output_dir": str(tmp_path)})
        specs = {s.role: s.kwargs for s in plan.plan_seed(task, c, 42, tmp_path)}
        plan.validate(plan.plan_seed(task, c, 42, tmp_path))
        assert set(c["paper_results"]) == {"metrics", "teacher", "student", "kd", "lwd", "ted"}
        assert all(s["fp16"] and s["per_device_eval_batch_size"] == 8 for s in specs.values())
        assert specs["student_stage1"]["filter_output_dim"] == specs["ted"]["filter_output_dim"] == 768
        # ted's default Stage I is the cached eval-mode one; the paper presets keep the paper's train mode.
        assert (
            specs["student_stage1"]["stage1_backbone_mode"]
            == specs["teacher_stage1"]["stage1_backbone_mode"]
            == "train"
        )
        plans[task] = specs
    assert len(plans) == 9
    rte = plans["rte"]
    assert rte["student_stage1"]["per_device_train_batch_size"] == 32  # the RTE exception
    assert rte["student"]["per_device_train_batch_size"] == rte["ted"]["per_device_train_batch_size"] == 16
    assert (rte["ted"]["kl_alpha"], rte["ted"]["mse_alpha"], rte["lwd"]["mse_alpha"]) == (20, 50, 20)
    assert rte["teacher"]["hidden_dropout_prob"] == rte["ted"]["attention_probs_dropout_prob"] == 0.0
    assert (plans["mnli"]["ted"]["mse_alpha"], plans["mnli"]["teacher"]["warmup_steps"]) == (7500, 1500)
    assert plans["cola"]["ted"]["kl_alpha"] == 0 and plans["cola"]["student"]["classifier_dropout"] == 0.0
    assert plans["cola"]["teacher"]["classifier_dropout"] == 0.1  # the scripts' default; only the student's is 0
    assert plans["stsb"]["ted"]["max_seq_length"] == 128 and plans["stsb"]["ted"]["paper_compat"]
    squad = plans["squad_v2"]
    assert squad["teacher"]["gradient_accumulation_steps"] == 2 and squad["ted"]["mse_alpha"] == 5000
    assert (squad["kd"]["method"], squad["kd"]["filter_disabled"], squad["kd"]["mse_alpha"]) == ("kd", True, 0.0)


@pytest.mark.skipif(not (SHARED / "models").is_dir(), reason=f"shared models not found at {SHARED}")
def test_minilm_presets_plan(tmp_path):
    for path in sorted((REPO / "configs" / "minilm").glob("*.yaml")):
        [(task, c)] = plan.task_configs([str(path)], {"output_dir": str(tmp_path)})
        plan.check_models(c)
        specs = {s.role: s for s in plan.plan_seed(task, c, 1, tmp_path)}
        plan.validate(list(specs.values()))
        assert specs["ted"].kwargs["teacher_filter_interval"] == 2 and specs["lwd"].kwargs["filter_interval"] == 1
        assert Path(specs["teacher"].kwargs["data_dir"]).is_dir()


def test_checkpoint_cut_off_mid_write_is_not_resumed(tmp_path):
    """A checkpoint counts only once CheckpointGuard marked it, after the Trainer wrote every file."""
    (tmp_path / "checkpoint-2").mkdir()
    (tmp_path / "checkpoint-2" / "trainer_state.json").write_text("{}")
    stage_resume.mark_checkpoint_complete(tmp_path / "checkpoint-2")
    (tmp_path / "checkpoint-4").mkdir()
    (tmp_path / "checkpoint-4" / "trainer_state.json").write_text("{}")  # no mark: cut off before it
    assert stage_resume.last_complete_checkpoint(tmp_path, remove_partial=False) == str(tmp_path / "checkpoint-2")
    assert (tmp_path / "checkpoint-4").exists()
    assert stage_resume.last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-2")
    assert not (tmp_path / "checkpoint-4").exists()


def test_checkpoints_of_other_settings_are_dropped(tmp_path):
    """The pipeline passes --overwrite_output_dir: checkpoints of other settings go, the stage starts over;
    those of the same settings are resumed. Without it, other settings' checkpoints are refused."""
    out = tmp_path / "ted"
    work = tmp_path / "ted.incomplete"
    (work / "checkpoint-2").mkdir(parents=True)
    (work / "checkpoint-2" / "trainer_state.json").write_text("{}")
    stage_resume.mark_checkpoint_complete(work / "checkpoint-2")
    (work / "ted_fingerprint.txt").write_text("samesettings\n")
    assert stage_resume.prepare_work_dir(out, "samesettings", overwrite=True)[1] == str(work / "checkpoint-2")
    with pytest.raises(TedInputError, match="different settings"):
        stage_resume.prepare_work_dir(out, "newsettings", overwrite=False)
    assert stage_resume.prepare_work_dir(out, "newsettings", overwrite=True) == (work, None)
    assert not (work / "checkpoint-2").exists()


def test_pipeline_clears_leftovers_of_a_finished_stage(run, tmp_path, monkeypatch):
    """Killed between the rename and the clean-up: the next pipeline run reuses the stage and removes the rest."""
    out = tmp_path / "left"
    shutil.copytree(run["out"] / "custom" / "seed1", out / "custom" / "seed1")
    seed1 = out / "custom" / "seed1"
    done = read(seed1 / "kd")["run_fingerprint"]
    (seed1 / "kd.incomplete" / "checkpoint-2").mkdir(parents=True)
    (seed1 / "kd.incomplete" / "ted_fingerprint.txt").write_text(done + "\n")
    shutil.copytree(seed1 / "kd", seed1 / ".kd.old-99")
    monkeypatch.setattr(pipeline_module, "RUNNERS", {})  # nothing may train
    runs = ted.pipeline(str(run["root"] / "cfg.yaml"), output_dir=str(out), seeds=[1])
    assert {r.status for r in runs} == {"reused"}
    assert sorted(p.name for p in seed1.iterdir()) == sorted(ROLES)
