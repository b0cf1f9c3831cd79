"""`ted export` and `ted report` write complete files or none, and never touch their inputs (issue 9).

Export runs on a fake stage folder (a tiny model saved with `save_pretrained` plus ted's files, no
training); the report on a fake pipeline run (stage descriptions, metrics and log histories only).
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import tiny
from ted import artifacts
from ted.cli.main import main
from ted.errors import TedInputError
from ted.reporting import model_card
from ted.reporting import report as reporting
from ted.stages.export import run_export


def _stage_json(folder: Path, stage: str, method=None, **extra) -> Path:
    info = {
        "stage": stage,
        "method": method,
        "task": {"name": "custom", "head": "classification", "selection_metric": "accuracy"},
        "lineage": {"student": "s0", "teacher": "t0"},
        "args": {"seed": 1},
        **extra,
    }
    (folder / artifacts.STAGE_FILE).write_text(json.dumps(info))
    return folder


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> Path:
    """A stock Hugging Face folder (tiny BERT classifier); its weights file is 0600 like transformers writes."""
    folder = tiny.write_model(tmp_path_factory.mktemp("m") / "plain", tiny.build_tokenizer(), head_labels=["n", "p"])
    os.chmod(folder / "model.safetensors", 0o600)
    return folder


def make_stage(plain: Path, folder: Path, stage: str = "distill", method="ted") -> Path:
    """A copy of `plain` with what a ted stage adds (filters, description, metrics)."""
    folder.mkdir(parents=True)
    for item in plain.iterdir():
        (folder / item.name).write_bytes(item.read_bytes())
    os.chmod(folder / "model.safetensors", 0o600)
    (folder / "filters.json").write_text("{}")
    (folder / "filters.safetensors").write_bytes(b"not read by export")
    (folder / artifacts.EVAL_RESULTS).write_text(json.dumps({"eval_accuracy": 0.75}))
    return _stage_json(folder, stage, method)


@pytest.fixture
def stage(plain, tmp_path) -> Path:
    return make_stage(plain, tmp_path / "runs" / "ted")


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(".") or p.name.endswith(".incomplete"))


def export(stage: Path, out: Path, overwrite: bool = False):
    return run_export(str(stage), str(out), overwrite, measure_speed=False)


# ------------------------------------------------------------------------------------------- export


def test_export_refuses_an_output_that_is_contains_or_is_inside_the_stage(stage, tmp_path):
    before = snapshot(stage)
    link = tmp_path / "link"
    link.symlink_to(stage, target_is_directory=True)
    for out in (stage, stage / "student", stage.parent, link):
        with pytest.raises(TedInputError, match="overlaps the input"):
            export(stage, out, overwrite=True)
    assert snapshot(stage) == before  # filters and ted_stage.json intact
    assert sorted(p.name for p in stage.parent.iterdir()) == ["ted"]


def test_export_refuses_the_local_teacher_as_output(plain, stage, tmp_path):
    teacher = make_stage(plain, tmp_path / "teacher", stage="finetune", method=None)
    _stage_json(stage, "distill", "ted", lineage={"student": "s0", "teacher": str(teacher)})
    before = snapshot(teacher)
    with pytest.raises(TedInputError, match="overlaps the input"):
        export(stage, teacher, overwrite=True)
    assert snapshot(teacher) == before


def test_export_takes_only_distilled_or_fine_tuned_stages(plain, stage, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(TedInputError, match="plain Hugging Face model folder.*stock model needs no export"):
        export(plain, out)
    _stage_json(stage, "learn_filters", lineage={"model": "runs/teacher"})
    with pytest.raises(TedInputError, match="Stage I folder.*runs/teacher.*`ted distill`"):
        export(stage, out)
    (stage / artifacts.STAGE_FILE).write_text("{broken")
    with pytest.raises(TedInputError, match="ted_stage.json is damaged"):
        export(stage, out)
    with pytest.raises(TedInputError, match="is not a folder"):
        export(tmp_path / "nope", out)
    (tmp_path / "empty").mkdir()
    with pytest.raises(TedInputError, match="not a ted stage folder"):
        export(tmp_path / "empty", out)
    assert not out.exists()


def test_cli_error_is_one_line_and_exit_code_2(plain, tmp_path, capsys):
    assert main(["export", str(plain), "--output_dir", str(tmp_path / "out"), "--no_speed"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ted export: error: ") and "\n" not in err and "Traceback" not in err


def test_card_of_a_fine_tuned_model_and_of_an_unrecorded_method(plain, tmp_path):
    teacher = make_stage(plain, tmp_path / "teacher", stage="finetune", method=None)
    card = (Path(export(teacher, tmp_path / "t_out").output_dir) / "README.md").read_text()
    assert "model fine-tuned with ted" in card and "UNKNOWN" not in card and '- "distillation"' not in card
    imported = make_stage(plain, tmp_path / "imported", method=None)  # import-original of a TED student
    card = (Path(export(imported, tmp_path / "i_out").output_dir) / "README.md").read_text()
    assert "method not recorded" in card and "UNKNOWN" not in card


def test_damaged_or_missing_weights_fail_before_timing(stage, tmp_path, monkeypatch):
    def no_timing(*_):
        raise AssertionError("speed measured before the weights were checked")

    monkeypatch.setattr(model_card, "measure_speed", no_timing)
    out = tmp_path / "out"
    weights = stage / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    with pytest.raises(TedInputError, match=r"model.safetensors is damaged \(5000 bytes"):
        run_export(str(stage), str(out))
    weights.unlink()
    with pytest.raises(TedInputError, match="no model.safetensors"):
        run_export(str(stage), str(out))
    (stage / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "model-00001.safetensors"}}))
    with pytest.raises(TedInputError, match="model-00001.safetensors is missing"):
        run_export(str(stage), str(out))
    assert not out.exists() and leftovers(tmp_path) == []


def test_a_bad_copy_leaves_nothing(stage, tmp_path, monkeypatch):
    """The copied weights are verified inside the temporary folder: a short copy is never published."""
    real_copy = artifacts.shutil.copyfile

    def short_copy(src, dst, **kwargs):
        real_copy(src, dst, **kwargs)
        if Path(dst).name == "model.safetensors":
            Path(dst).write_bytes(Path(src).read_bytes()[:-10])

    monkeypatch.setattr(artifacts.shutil, "copyfile", short_copy)
    out = tmp_path / "out"
    with pytest.raises(TedInputError, match="model.safetensors is damaged"):
        export(stage, out)
    assert not out.exists() and leftovers(tmp_path) == []


@pytest.mark.parametrize("fail_at", ["copy", "rename"])
def test_an_interrupted_export_leaves_nothing_and_keeps_the_previous_export(stage, tmp_path, monkeypatch, fail_at):
    out = tmp_path / "out"
    export(stage, out)
    before = snapshot(out)

    def interrupted(*_, **__):
        raise KeyboardInterrupt

    if fail_at == "copy":
        monkeypatch.setattr(artifacts.shutil, "copyfile", interrupted)
    else:
        monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export(stage, out, overwrite=True)
    monkeypatch.undo()
    assert snapshot(out) == before and leftovers(tmp_path) == []


def test_overwrite_replaces_only_a_previous_export_and_leaves_no_temp(stage, tmp_path):
    out = tmp_path / "out"
    export(stage, out)
    export(stage, out, overwrite=True)
    assert leftovers(tmp_path) == []
    assert "README.md" in snapshot(out) and artifacts.STAGE_FILE not in snapshot(out)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "config.json").write_text("{}")  # looks like a model, but ted export did not write it
    with pytest.raises(TedInputError, match="Pass --overwrite_output_dir"):
        export(stage, busy)
    with pytest.raises(TedInputError, match="did not write"):
        export(stage, busy, overwrite=True)
    assert snapshot(busy) == {"config.json": b"{}"}


def test_leftovers_of_a_killed_export_are_removed_on_the_next_run(stage, tmp_path):
    out = tmp_path / "out"
    export(stage, out)
    # What SIGKILL leaves mid-build (atomic_folder's temporary folder) and mid-replace (the previous export).
    building = tmp_path / ".out.k1ll3d.tmp"
    building.mkdir()
    (building / artifacts.WRITING_MARKER).touch()
    (building / "config.json").write_text("{}")
    replaced = tmp_path / ".out.old-12345"
    replaced.mkdir()
    for name, data in snapshot(out).items():
        (replaced / name).write_bytes(data)
    mine = tmp_path / ".out.notes.tmp"  # a user's folder that only looks like ours
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    export(stage, out, overwrite=True)
    assert leftovers(tmp_path) == [".out.notes.tmp"] and (mine / "notes.txt").read_text() == "keep"


@pytest.mark.slow
@pytest.mark.parametrize("point", ["before_replace", "after_rename"])
def test_a_real_kill_during_overwrite_leaves_nothing_after_the_next_run(stage, tmp_path, point):
    """SIGKILL between the renames of --overwrite_output_dir (artifacts.crash_point), then a normal run."""
    out = tmp_path / "out"
    export(stage, out)
    code = f"from ted.stages.export import run_export; run_export({str(stage)!r}, {str(out)!r}, True, False)"
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "TED_TEST_CRASH_AT": point},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -9, proc.stderr
    export(stage, out, overwrite=True)
    assert leftovers(tmp_path) == [] and "README.md" in snapshot(out)


def test_export_honours_the_umask(stage, tmp_path):
    old = os.umask(0o022)
    try:
        export(stage, tmp_path / "out")
    finally:
        os.umask(old)
    out = tmp_path / "out"
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()} == {
        p.name: 0o644 for p in out.iterdir()
    }  # the stage's model.safetensors is 0600


# ------------------------------------------------------------------------------------------- report


def fake_run(root: Path) -> Path:
    """A `ted pipeline` output with two seeds of every role: descriptions, metrics and loss histories only."""
    for seed in (1, 2):
        for i, role in enumerate(("teacher", "student", "teacher_stage1", "student_stage1", "ted", "kd", "lwd")):
            folder = root / "custom" / f"seed{seed}" / role
            folder.mkdir(parents=True)
            _stage_json(folder, "distill", role, pipeline={"role": role, "task": "custom", "seed": seed})
            (folder / artifacts.EVAL_RESULTS).write_text(json.dumps({"eval_accuracy": 0.5 + 0.01 * (i + seed)}))
            history = [
                {
                    "step": s,
                    "epoch": s / 2,
                    "loss": 1.0 / s,
                    "loss_pred": 0.5 / s,
                    "loss_kl": 0.3 / s,
                    "loss_mse": 0.2 / s,
                }
                for s in (1, 2)
            ] + [{"step": 2, "epoch": 1.0, "eval_accuracy": 0.6}]
            (folder / artifacts.LOG_HISTORY).write_text(json.dumps(history))
            (folder / artifacts.STAGE1_SCORES).write_text(json.dumps({"0": {"accuracy": 0.6}, "1": {"accuracy": 0.7}}))
    return root


def write(run: Path, out: Path):
    return reporting.write_report([run], out, speed=None)


def test_report_files_are_complete_and_a_failed_write_keeps_the_previous_ones(tmp_path, monkeypatch):
    run, out = fake_run(tmp_path / "run"), tmp_path / "report"
    write(run, out)
    html = (out / "report.html").read_text()
    pngs = sorted((out / "report_files").glob("*.png"))
    assert html.rstrip().endswith("</html>") and len(pngs) == 3
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in pngs)
    real_replace = os.replace

    def killed_at_html(src, dst):
        if Path(dst).name == "report.html":
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", killed_at_html)
    with pytest.raises(KeyboardInterrupt):
        write(run, out)
    monkeypatch.undo()
    assert (out / "report.html").read_text() == html  # the previous, complete page
    assert not [p for p in out.rglob(".*") if p.name.endswith(".tmp")]


def test_stale_temp_files_of_a_killed_report_are_removed(tmp_path):
    run, out = fake_run(tmp_path / "run"), tmp_path / "report"
    (out / "report_files").mkdir(parents=True)
    stale = [
        out / ".report.html.x1y2z3.tmp",
        out / ".report.md.a1b2c3.tmp",
        out / "report_files" / ".custom_loss_terms.png.q1w2e3.tmp",
    ]
    for path in stale:
        path.write_text("<html><body>cut")
    (out / "notes.tmp").write_text("the user's")
    write(run, out)
    assert not any(p.exists() for p in stale) and (out / "notes.tmp").exists()


def test_report_never_changes_the_matplotlib_backend(tmp_path):
    """A notebook that imports ted keeps its backend: no matplotlib.use(), no pyplot."""
    run = fake_run(tmp_path / "run")
    script = textwrap.dedent(f"""
        import sys, matplotlib
        matplotlib.use("pdf")  # stands for the notebook's own backend
        from ted.reporting import plots, report
        report.write_report([{str(run)!r}], {str(tmp_path / "out")!r}, speed=None)
        plots.plot_loss_terms({{"ted": {str(run / "custom" / "seed1" / "ted")!r}}}, {str(tmp_path / "l.png")!r})
        assert matplotlib.get_backend() == "pdf", matplotlib.get_backend()
        assert "matplotlib.pyplot" not in sys.modules
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "l.png").read_bytes().startswith(b"\x89PNG")


def test_speed_loads_each_folder_with_its_own_head(tmp_path):
    from transformers import AutoModelForQuestionAnswering

    from ted.reporting.speed import load_for_inference

    tokenizer = tiny.build_tokenizer()
    backbone = tiny.write_model(tmp_path / "backbone", tokenizer)
    classifier = tiny.write_model(tmp_path / "classifier", tokenizer, head_labels=["a", "b"])
    qa = tmp_path / "qa"
    AutoModelForQuestionAnswering.from_config(tiny.model_config("bert", len(tokenizer), 2, 0)).save_pretrained(qa)
    assert type(load_for_inference(backbone)).__name__ == "BertModel"
    assert type(load_for_inference(classifier)).__name__ == "BertForSequenceClassification"
    assert type(load_for_inference(qa)).__name__ == "BertForQuestionAnswering"
