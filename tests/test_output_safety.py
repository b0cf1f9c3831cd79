"""Output folders: refused up front when unusable, only ted's own folders replaced or removed, the umask honoured."""

from __future__ import annotations

import errno
import os
import stat
import tempfile

import pytest

import ted
import ted.pipelines.runner as pipeline_module
import ted.stages.common as stage_common
import ted.stages.fingerprint as stage_fingerprint
import ted.stages.output as stage_output
import tiny
from ted import artifacts
from ted.cli.main import main
from ted.errors import TedInputError
from tiny import one_thread  # noqa: F401  (module fixture)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("outsafe")
    tok = tiny.build_tokenizer()
    train, dev = tiny.write_data(root / "data", n_train=16, n_dev=8)
    model = tiny.write_model(root / "model", tok, layers=2, seed=1, head_labels=["neg", "pos"])
    return {"root": root, "train": train, "dev": dev, "model": model}


@pytest.fixture
def no_model(monkeypatch):
    """Every check here must fire before a tokenizer or model is loaded."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the output folder was checked")

    monkeypatch.setattr(stage_common, "load_tokenizer", refuse)
    import ted.stages.distill_setup as distill_setup

    monkeypatch.setattr(distill_setup, "load_tokenizer", refuse)


def run_kwargs(a, out, **kw) -> dict:
    args = dict(
        model_name_or_path=str(a["model"]),
        train_file=str(a["train"]),
        validation_file=str(a["dev"]),
        output_dir=str(out),
        max_seq_length=32,
        per_device_train_batch_size=8,
        num_train_epochs=1,
        dataloader_pin_memory=False,
        report_to=["none"],
        disable_tqdm=True,
    )
    args.update(kw)
    return args


@pytest.mark.usefixtures("no_model")
def test_overwrite_never_replaces_a_folder_ted_did_not_write(assets, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    for stage in (ted.finetune, ted.learn_filters):
        with pytest.raises(TedInputError, match="not a folder ted wrote"):
            stage(**run_kwargs(assets, out, overwrite_output_dir=True))
    with pytest.raises(TedInputError, match="not a folder ted wrote"):
        ted.distill(
            **run_kwargs(assets, out, overwrite_output_dir=True, teacher_model_name_or_path=str(assets["model"]))
        )
    assert (out / "thesis.tex").read_text() == "precious"


@pytest.mark.usefixtures("no_model")
def test_work_folder_ted_did_not_make_is_never_removed(assets, tmp_path):
    out = tmp_path / "run"
    work = stage_output.work_dir(out)
    work.mkdir()
    (work / "notes.txt").write_text("mine")
    with pytest.raises(TedInputError, match="not made by ted"):
        ted.finetune(**run_kwargs(assets, out, overwrite_output_dir=True))
    assert (work / "notes.txt").read_text() == "mine"


@pytest.mark.usefixtures("no_model")
def test_unusable_output_dirs_are_refused_up_front(assets, tmp_path, monkeypatch):
    afile = tmp_path / "afile"
    afile.write_text("x")
    cases = {
        str(afile): "is a file",
        str(afile / "sub"): "is a file",
        str(assets["model"]): "overlaps the input",  # the model folder itself
        str(assets["root"]): "overlaps the input",  # holds the inputs
        str(assets["model"] / "inner"): "overlaps the input",
    }
    for out, message in cases.items():
        with pytest.raises(TedInputError, match=message):
            ted.finetune(**run_kwargs(assets, out, overwrite_output_dir=True))
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    for out in (".", "..", str(work)):
        with pytest.raises(TedInputError, match="current folder or one above"):
            ted.finetune(**run_kwargs(assets, out, overwrite_output_dir=True))
    assert (
        main(
            [
                "finetune",
                *tiny.train_flags(assets["train"], assets["dev"]),
                "--model_name_or_path",
                str(assets["model"]),
                "--output_dir",
                str(afile),
            ]
        )
        == 2
    )


@pytest.mark.usefixtures("no_model")
def test_read_only_output_location_is_refused(assets, tmp_path, monkeypatch):
    # Tests run as root here, where chmod cannot make a folder read-only: stand in for a read-only mount.
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(tempfile, "TemporaryFile", read_only)
    with pytest.raises(TedInputError, match="not writable .*Read-only file system"):
        ted.finetune(**run_kwargs(assets, tmp_path / "new" / "out"))
    assert not (tmp_path / "new").exists()


def test_leftovers_of_ted_are_removed_and_nothing_else(tmp_path):
    out = tmp_path / "stage"
    out.mkdir()
    artifacts.write_json(out / artifacts.STAGE_FILE, {"run_fingerprint": "abc"})
    tmp = tmp_path / ".stage.x1y2.tmp"  # killed while written
    tmp.mkdir()
    (tmp / artifacts.WRITING_MARKER).touch()
    (tmp / "model.safetensors").write_text("half")
    old = tmp_path / ".stage.old-123"  # killed while the previous folder was replaced
    old.mkdir()
    artifacts.write_json(old / artifacts.STAGE_FILE, {})
    work = stage_output.work_dir(out)  # killed between the rename and the clean-up
    (work / "checkpoint-2").mkdir(parents=True)
    (work / stage_output.WORK_MARKER).write_text("abc\n")
    users = [tmp_path / ".stage.backup.tmp", tmp_path / ".stage.old-mine"]
    for folder in users:
        folder.mkdir()
        (folder / "keep.txt").write_text("mine")
    stage_output.drop_leftovers(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([".stage.backup.tmp", ".stage.old-mine", "stage"])
    # A work folder of another, unfinished run is kept for resuming.
    work.mkdir()
    (work / stage_output.WORK_MARKER).write_text("other\n")
    stage_output.drop_leftovers(out)
    assert work.is_dir()


def test_atomic_folder_honours_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        with artifacts.atomic_folder(tmp_path / "out") as tmp:
            (tmp / "a.json").write_text("{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "out" / "a.json").stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert not (tmp_path / "out" / artifacts.WRITING_MARKER).exists()


def test_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with artifacts.atomic_folder(tmp_path / "out") as tmp:
            (tmp / "a.json").write_text("{}")
            raise RuntimeError("disk full")
    assert list(tmp_path.iterdir()) == []


def test_pipeline_cleanup_runs_on_the_main_process_only(tmp_path, monkeypatch):
    """Under torchrun every process runs the pipeline: one cleans, then all meet at a barrier."""
    calls, barriers = [], []

    class FakeState:
        def wait_for_everyone(self):
            barriers.append(os.environ["RANK"])

    import accelerate

    monkeypatch.setattr(accelerate, "PartialState", FakeState)
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank in ("0", "1"):
        monkeypatch.setenv("RANK", rank)
        pipeline_module.on_main_process_then_wait(calls.append, rank)
    assert calls == ["0"] and barriers == ["0", "1"]


def test_stage_folder_modes_follow_the_umask(assets, tmp_path):
    old = os.umask(0o022)
    try:
        ted.finetune(**run_kwargs(assets, tmp_path / "ft"))
    finally:
        os.umask(old)
    folder = tmp_path / "ft"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755
    assert {stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()} == {0o644}
    assert [p.name for p in tmp_path.iterdir()] == ["ft"]


def test_paths_are_not_in_the_resume_fingerprint(assets, tmp_path):
    """Unit view of the pipeline identity: an outside model folder is identified by content, not path."""
    import shutil

    copy = tmp_path / "model"
    shutil.copytree(assets["model"], copy)
    assert stage_fingerprint.path_identity(str(copy)) == stage_fingerprint.path_identity(str(assets["model"]))
    assert stage_fingerprint.path_identity("org/some-hub-id") == "org/some-hub-id"


def test_pipeline_output_dir_that_is_a_file_fails_before_training(assets, tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline_module, "RUNNERS", {})  # any training attempt would be a KeyError
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        f"task: custom\nteacher: {assets['model']}\nstudent: {assets['model']}\nmethods: [kd]\n"
        f"common: {{train_file: {assets['train']}, validation_file: {assets['dev']}}}\n"
    )
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(TedInputError, match="is a file"):
        ted.pipeline(str(cfg), output_dir=str(afile))
    assert main(["pipeline", "--config", str(cfg), "--output_dir", str(afile)]) == 2
    assert afile.read_text() == "x"
