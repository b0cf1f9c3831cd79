"""Bad input fails with an actionable TedInputError before any training, and never leaves half a folder."""

from __future__ import annotations

from pathlib import Path

import pytest

import ted
import tiny
from ted.cli.main import main
from ted.errors import TedInputError
from ted.method.filters import new_filters
from ted.method.recipes import resolve_method
from tiny import one_thread  # noqa: F401  (module fixture)

pytestmark = pytest.mark.usefixtures("one_thread")
LABELS = ["neg", "pos"]  # the custom task's label list (sorted labels of the train file)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """Data, a tokenizer and tiny 'fine-tuned' folders (random weights, a sequence-classification head)."""
    root = tmp_path_factory.mktemp("checks")
    tok = tiny.build_tokenizer()
    train, dev = tiny.write_data(root / "data", n_train=16, n_dev=8)
    teacher = tiny.write_model(root / "teacher", tok, layers=4, seed=0, head_labels=LABELS)
    student = tiny.write_model(root / "student", tok, layers=2, seed=1, head_labels=LABELS)
    # Stage-I-like folders: the same models plus saved filters (teacher interval 2, student interval 1).
    from transformers import AutoConfig

    teacher_f = tiny.write_model(root / "teacher_f", tok, layers=4, seed=0, head_labels=LABELS)
    new_filters(AutoConfig.from_pretrained(teacher_f), [1, 3], 16, False, interval=2).save(teacher_f)
    student_f = tiny.write_model(root / "student_f", tok, layers=2, seed=1, head_labels=LABELS)
    new_filters(AutoConfig.from_pretrained(student_f), [0, 1], 16, False, interval=1).save(student_f)
    student_f8 = tiny.write_model(root / "student_f8", tok, layers=2, seed=1, head_labels=LABELS)
    new_filters(AutoConfig.from_pretrained(student_f8), [0, 1], 8, False, interval=1).save(student_f8)
    return {
        "root": root,
        "tok": tok,
        "train": train,
        "dev": dev,
        "teacher": teacher,
        "student": student,
        "teacher_f": teacher_f,
        "student_f": student_f,
        "student_f8": student_f8,
    }


@pytest.fixture
def no_training(monkeypatch):
    """Every check must fire before the Trainer starts."""
    from ted.method.trainer import TedTrainer

    def refuse(*args, **kwargs):
        raise AssertionError("training started although the input was bad")

    monkeypatch.setattr(TedTrainer, "train", refuse)


def _data(a, **kw) -> dict:
    out = dict(
        train_file=str(a["train"]),
        validation_file=str(a["dev"]),
        max_seq_length=32,
        per_device_train_batch_size=8,
        num_train_epochs=1,
        dataloader_pin_memory=False,
        report_to=["none"],
        disable_tqdm=True,
    )
    out.update(kw)
    return out


def _distill_error(a, tmp_path, **kw) -> str:
    args = _data(a, output_dir=str(tmp_path / "out"), **kw)
    with pytest.raises(TedInputError) as err:
        ted.distill(**args)
    assert not (tmp_path / "out").exists()  # nothing written
    return str(err.value)


@pytest.mark.usefixtures("no_training")
def test_vocabulary_mismatch(assets, tmp_path):
    other = tiny.build_tokenizer(extra=("zebra",))
    teacher = tiny.write_model(tmp_path / "teacher_other_vocab", other, layers=4, head_labels=LABELS)
    msg = _distill_error(
        assets,
        tmp_path,
        model_name_or_path=str(assets["student"]),
        teacher_model_name_or_path=str(teacher),
        kl_alpha=1.0,
    )
    assert "different vocabularies" in msg and "1 only in the teacher" in msg
    # Same tokens, different ids: also refused.
    permuted = tiny.write_model(
        tmp_path / "teacher_permuted", tiny.build_tokenizer(reverse=True), layers=4, head_labels=LABELS
    )
    msg = _distill_error(
        assets,
        tmp_path,
        model_name_or_path=str(assets["student"]),
        teacher_model_name_or_path=str(permuted),
        kl_alpha=1.0,
    )
    assert "with different ids" in msg


@pytest.mark.usefixtures("no_training")
def test_teacher_label_order_mismatch(assets, tmp_path):
    reversed_teacher = tiny.write_model(tmp_path / "teacher_rev", assets["tok"], layers=4, head_labels=LABELS[::-1])
    msg = _distill_error(
        assets,
        tmp_path,
        model_name_or_path=str(assets["student"]),
        teacher_model_name_or_path=str(reversed_teacher),
        kl_alpha=1.0,
    )
    assert "['pos', 'neg']" in msg and "['neg', 'pos']" in msg and "label order must agree" in msg


@pytest.mark.usefixtures("no_training")
def test_finetuned_head_size_mismatch(assets, tmp_path):
    three = tiny.write_model(tmp_path / "three", assets["tok"], layers=2, head_labels=["a", "b", "c"])
    with pytest.raises(TedInputError, match="trained head with 3 output.* needs 2"):
        ted.finetune(**_data(assets, model_name_or_path=str(three), output_dir=str(tmp_path / "ft")))
    msg = _distill_error(
        assets, tmp_path, model_name_or_path=str(assets["student"]), teacher_model_name_or_path=str(three), kl_alpha=1.0
    )
    assert "headless" in msg  # says what to use instead


@pytest.mark.usefixtures("no_training")
def test_teacher_without_finetuned_head(assets, tmp_path):
    bare = tiny.write_model(tmp_path / "bare", assets["tok"], layers=4)
    msg = _distill_error(
        assets, tmp_path, model_name_or_path=str(assets["student"]), teacher_model_name_or_path=str(bare), kl_alpha=1.0
    )
    assert "no fine-tuned task head" in msg and "ted finetune" in msg


@pytest.mark.usefixtures("no_training")
def test_ted_needs_filters_on_both_sides(assets, tmp_path):
    msg = _distill_error(
        assets,
        tmp_path,
        model_name_or_path=str(assets["student_f"]),
        teacher_model_name_or_path=str(assets["teacher"]),
        mse_alpha=1.0,
        teacher_filter_interval=2,
    )
    assert "teacher's Stage I filters" in msg and "ted learn-filters" in msg
    msg = _distill_error(
        assets,
        tmp_path,
        model_name_or_path=str(assets["student"]),
        teacher_model_name_or_path=str(assets["teacher_f"]),
        mse_alpha=1.0,
        teacher_filter_interval=2,
    )
    assert "student's Stage I filters" in msg and "--filter_disabled" in msg


@pytest.mark.usefixtures("no_training")
def test_filter_dims_mismatch(assets, tmp_path):
    msg = _distill_error(
        assets,
        tmp_path,
        model_name_or_path=str(assets["student_f8"]),
        teacher_model_name_or_path=str(assets["teacher_f"]),
        mse_alpha=1.0,
        teacher_filter_interval=2,
    )
    assert "output 16 features" in msg and "output 8" in msg and "--filter_output_dim" in msg
    # A width that does not match the saved filters is refused rather than re-initialised.
    msg = _distill_error(
        assets,
        tmp_path,
        model_name_or_path=str(assets["student_f"]),
        teacher_model_name_or_path=str(assets["teacher_f"]),
        mse_alpha=1.0,
        teacher_filter_interval=2,
        filter_output_dim=24,
    )
    assert "output dim 16 (requested --filter_output_dim 24)" in msg
    # Filters saved on other layers than the intervals select.
    msg = _distill_error(
        assets,
        tmp_path,
        model_name_or_path=str(assets["student_f"]),
        teacher_model_name_or_path=str(assets["teacher_f"]),
        mse_alpha=1.0,
        teacher_filter_interval=4,
        filter_interval=2,
    )
    assert "layers [1, 3] (requested [3])" in msg


@pytest.mark.usefixtures("no_training")
def test_layer_count_mismatch(assets, tmp_path):
    # 4 teacher layers at interval 1 vs 2 student layers at interval 1: 4 targets, 2 students.
    ted_pair = dict(model_name_or_path=str(assets["student_f"]), teacher_model_name_or_path=str(assets["teacher_f"]))
    lwd_pair = dict(
        model_name_or_path=str(assets["student"]),
        teacher_model_name_or_path=str(assets["teacher"]),
        filter_disabled=True,
    )
    for kwargs in (dict(ted_pair, mse_alpha=1.0), dict(lwd_pair, mse_alpha=1.0)):
        msg = _distill_error(assets, tmp_path, teacher_filter_interval=1, **kwargs)
        assert "selected layers [0, 1]" in msg and "[0, 1, 2, 3]" in msg and "--teacher_filter_interval" in msg
    # An interval that does not divide the depth.
    msg = _distill_error(
        assets,
        tmp_path,
        model_name_or_path=str(assets["student"]),
        teacher_model_name_or_path=str(assets["teacher"]),
        mse_alpha=1.0,
        filter_disabled=True,
        teacher_filter_interval=3,
    )
    assert "does not divide" in msg


def test_resolve_method():
    # Inferred from the paper's flags.
    assert resolve_method(None, False, 0.0) == "kd"
    assert resolve_method(None, True, 0.0) == "kd"
    assert resolve_method(None, True, 5.0) == "lwd"
    assert resolve_method(None, False, 5.0) == "ted"
    assert resolve_method("TED", False, 5.0) == "ted"
    assert resolve_method("kd", True, 0.0) == "kd"
    assert resolve_method("lwd", True, 5.0) == "lwd"
    bad = [
        (("kd", False, 5.0), "KD has no layer term"),
        (("ted", False, 0.0), "positive --mse_alpha"),
        (("lwd", True, 0.0), "positive --mse_alpha"),
        (("ted", True, 5.0), "remove --filter_disabled"),
        (("distil", False, 0.0), "Unknown --method 'distil'"),
    ]
    for args, fragment in bad:
        with pytest.raises(TedInputError, match=fragment):
            resolve_method(*args)


@pytest.mark.usefixtures("no_training")
def test_method_flag_inconsistent_via_cli(assets, tmp_path, capsys):
    argv = [
        "distill",
        "--model_name_or_path",
        str(assets["student"]),
        "--teacher_model_name_or_path",
        str(assets["teacher"]),
        "--method",
        "kd",
        "--mse_alpha",
        "5",
        "--output_dir",
        str(tmp_path / "out"),
        *tiny.train_flags(assets["train"], assets["dev"]),
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "ted distill: error:" in err and "KD has no layer term" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.usefixtures("no_training")
def test_missing_teacher_and_missing_output_dir(assets, tmp_path):
    msg = _distill_error(assets, tmp_path, model_name_or_path=str(assets["student"]), kl_alpha=1.0)
    assert "--teacher_model_name_or_path" in msg
    with pytest.raises(TedInputError, match="--output_dir is required"):
        ted.finetune(**_data(assets, model_name_or_path=str(assets["student"])))
    with pytest.raises(TedInputError, match="--model_name_or_path"):
        ted.finetune(**_data(assets, output_dir=str(tmp_path / "ft")))


@pytest.mark.usefixtures("no_training")
def test_output_dir_not_empty_needs_overwrite(assets, tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    common = _data(assets, output_dir=str(out))
    with pytest.raises(TedInputError, match="--overwrite_output_dir"):
        ted.finetune(model_name_or_path=str(assets["student"]), **common)
    with pytest.raises(TedInputError, match="--overwrite_output_dir"):
        ted.learn_filters(model_name_or_path=str(assets["student"]), **common)
    with pytest.raises(TedInputError, match="--overwrite_output_dir"):
        ted.distill(
            model_name_or_path=str(assets["student"]), teacher_model_name_or_path=str(assets["teacher"]), **common
        )
    with pytest.raises(TedInputError, match="stock model needs no export"):  # export takes stage folders only
        ted.export(str(assets["student"]), str(out))
    assert (out / "keep.txt").read_text() == "precious"
    # An existing but empty folder is fine (the check passes; training is what the fixture refuses).
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(AssertionError, match="training started"):
        ted.finetune(**_data(assets, model_name_or_path=str(assets["student"]), output_dir=str(empty)))


@pytest.mark.usefixtures("no_training")
def test_unknown_task_and_bad_task_sources(assets, tmp_path, capsys):
    with pytest.raises(TedInputError, match="Unknown task 'glu'.*rte"):
        ted.finetune(
            model_name_or_path=str(assets["student"]),
            task_name="glu",
            data_dir=str(tmp_path),
            output_dir=str(tmp_path / "ft"),
        )
    argv = [
        "finetune",
        "--model_name_or_path",
        str(assets["student"]),
        "--task_name",
        "rte",
        "--output_dir",
        str(tmp_path / "ft"),
        *tiny.train_flags(assets["train"], assets["dev"]),
    ]
    assert main(argv) == 2
    assert "--train_file/--validation_file are for custom data" in capsys.readouterr().err
    assert not (tmp_path / "ft").exists()


def test_unknown_api_keyword_is_input_error():
    with pytest.raises(TedInputError, match="ted.distill"):
        ted.distill(not_a_flag=1)


def _siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p.name != path.parent.name)


def test_failed_training_leaves_no_output_folder(assets, tmp_path, monkeypatch):
    from ted.method.objectives import TaskObjective

    real = TaskObjective.__call__
    calls = {"n": 0}

    def crash_on_second_step(self, model, inputs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("simulated crash mid-training")
        return real(self, model, inputs)

    monkeypatch.setattr(TaskObjective, "__call__", crash_on_second_step)
    out = tmp_path / "runs" / "ft"
    with pytest.raises(RuntimeError, match="simulated crash"):
        ted.finetune(**_data(assets, model_name_or_path=str(assets["student"]), output_dir=str(out)))
    assert calls["n"] == 2
    assert not out.exists()
    # Only the resumable checkpoint folder may remain; no half-written stage folder or temp folder.
    assert [name for name in _siblings(out) if not name.endswith(".incomplete")] == []


def test_failed_write_keeps_previous_output(assets, tmp_path, monkeypatch):
    from ted.stages import saving as stage_common

    out = tmp_path / "runs" / "ft"
    out.mkdir(parents=True)
    (out / "old.txt").write_text("previous run")
    (out / "ted_stage.json").write_text("{}")  # a folder ted wrote: the only kind --overwrite_output_dir replaces

    def broken_write(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(stage_common, "write_predictions", broken_write)  # fails inside the stage-folder write
    with pytest.raises(OSError, match="disk full"):
        ted.finetune(
            **_data(assets, model_name_or_path=str(assets["student"]), output_dir=str(out), overwrite_output_dir=True)
        )
    assert sorted(p.name for p in out.iterdir()) == ["old.txt", "ted_stage.json"]  # the old folder is untouched
    assert not any(name.endswith(".tmp") or ".old-" in name for name in _siblings(out))
