"""What a stage writes and reads.

A stage folder is self-describing: the model saved with `save_pretrained` (loadable with
`AutoModelFor...` and no `ted` import), its tokenizer, optional filters and Stage I heads in
safetensors with a JSON description, `ted_stage.json` (stage, method, resolved arguments,
lineage, versions) and the metrics. Folders are written under a temporary name and renamed into
place, so a crash never leaves a half-written artifact.
"""

from __future__ import annotations

import contextlib
import contextvars
import fnmatch
import functools
import hashlib
import json
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ted.errors import TedInputError

STAGE_FILE = "ted_stage.json"
EVAL_RESULTS = "eval_results.json"
TRAIN_RESULTS = "train_results.json"
LOG_HISTORY = "log_history.json"
STAGE1_SCORES = "stage1_layer_scores.json"
# Files `ted export` copies: what a stock model folder needs (weights, config, tokenizer), nothing of ted's.
_EXPORT_PATTERNS = (
    "config.json",
    "generation_config.json",
    "model*.safetensors",
    "model.safetensors.index.json",
    "tokenizer*",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab*",
    "merges.txt",
    "spm.model",
    "*.model",
    "chat_template*",
)


@dataclass
class StageResult:
    """What a stage returns: the folder it wrote and its dev metrics."""

    output_dir: str
    metrics: dict[str, float]
    extra: dict[str, Any] = field(default_factory=dict)


def versions() -> dict[str, str]:
    import torch
    import transformers

    from ted import __version__

    return {"ted": __version__, "torch": torch.__version__, "transformers": transformers.__version__}


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


# Markers that say a folder is ted's, so ted may replace or remove it (and never anything else).
WORK_MARKER = "ted_fingerprint.txt"  # in `<output>.incomplete/`: the fingerprint of the run it holds
WRITING_MARKER = ".ted_writing"  # in a folder atomic_folder is still writing; removed before the rename
CHECKPOINT_MARKER = "ted_checkpoint_complete"  # written into a checkpoint after the Trainer finished it


def is_stage_folder(path: Path) -> bool:
    return (Path(path) / STAGE_FILE).is_file()


def check_output_dir(
    output_dir: Optional[str],
    overwrite: bool,
    given: bool = True,
    inputs: tuple = (),
    replaceable: Callable[[Path], bool] = is_stage_folder,
) -> Path:
    """Fail before any compute when the output folder is missing, unusable, or would clobber something.

    `inputs`: paths the command reads (an output that is, contains or is inside one is refused).
    `replaceable`: which existing folders --overwrite_output_dir may replace (default: ted stage folders).
    """
    if not output_dir or not given:
        raise TedInputError("--output_dir is required: the folder this stage writes.")
    path = Path(output_dir)
    if path.exists() and not path.is_dir():
        raise TedInputError(f"--output_dir {path} is a file, not a folder. Pass a folder path.")
    _check_no_overlap(path, inputs)
    if is_main_launch_process():
        drop_leftovers(path)  # of a killed run, even when this command is refused below
    if path.exists() and any(path.iterdir()):
        if not overwrite:
            raise TedInputError(f"{path} already exists and is not empty. Pass --overwrite_output_dir to replace it.")
        if not replaceable(path):
            raise TedInputError(
                f"{path} is not a folder ted wrote (no {STAGE_FILE}), so --overwrite_output_dir "
                "will not replace it. Choose another --output_dir, or move its files away yourself."
            )
    check_work_dir_owned(work_dir(path))
    check_writable(path)
    return path


def _check_no_overlap(path: Path, inputs: tuple) -> None:
    """The output folder is replaced as a whole: it must not be the current folder or hold / be held by an input."""
    out = path.resolve()
    cwd = Path.cwd().resolve()
    if out == cwd or out in cwd.parents:
        raise TedInputError(
            f"--output_dir {path} is the current folder or one above it; a command replaces its "
            "output folder as a whole. Pass a new subfolder, e.g. --output_dir runs/out."
        )
    for item in inputs:
        if not item or not Path(item).exists():
            continue  # a hub id, or a missing path the command reports itself
        inp = Path(item).resolve()
        if out == inp or out in inp.parents or inp in out.parents:
            raise TedInputError(
                f"--output_dir {path} overlaps the input {item} (is, contains or is inside it); "
                "writing there could destroy the input. Choose a separate --output_dir."
            )


def check_writable(path: Path) -> None:
    """Probe (create and remove a temporary file) where the folder will be written, before any compute."""
    probe = path.resolve().parent
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise TedInputError(f"Cannot create --output_dir {path}: {probe} is a file, not a folder.")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as err:
        raise TedInputError(
            f"Cannot write --output_dir {path}: {probe} is not writable ({err.strerror}). "
            "Choose a folder on a writable disk."
        ) from None


def work_dir(output_dir: Path) -> Path:
    """Where checkpoints of an unfinished run live (kept for resuming, removed on success)."""
    return output_dir.with_name(output_dir.name + ".incomplete")


def is_work_dir(work: Path) -> bool:
    """A work folder ted made: it holds the run's fingerprint (or is empty: cut off before writing it)."""
    return (work / WORK_MARKER).is_file() or (work.is_dir() and not any(work.iterdir()))


def check_work_dir_owned(work: Path) -> None:
    if work.exists() and not (work.is_dir() and is_work_dir(work)):
        raise TedInputError(
            f"{work} exists but was not made by ted (no {WORK_MARKER}); ted keeps checkpoints "
            "there. Move it away or choose another --output_dir."
        )


def run_fingerprint_of(work: Path) -> Optional[str]:
    try:
        return (work / WORK_MARKER).read_text().strip()
    except OSError:
        return None


def crash_point(name: str) -> None:
    """Test hook for the kill sweep (benchmarks/kill_sweep.py): `TED_TEST_CRASH_AT=name[:n]` kills this process
    with SIGKILL the n-th time (default 1st) it passes `name`. Unset (always, outside tests) it does nothing."""
    want = os.environ.get("TED_TEST_CRASH_AT")
    if not want:
        return
    point, _, nth = want.partition(":")
    if point != name:
        return
    _CRASH_COUNTS[name] = _CRASH_COUNTS.get(name, 0) + 1
    if _CRASH_COUNTS[name] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)


_CRASH_COUNTS: dict[str, int] = {}


def mark_checkpoint_complete(folder: Path) -> None:
    """Record every file of a checkpoint the Trainer finished writing (name and size), written last and
    atomically: a checkpoint counts as complete only while all of them are still there (see below)."""
    files = {str(f.relative_to(folder)): f.stat().st_size for f in sorted(folder.rglob("*")) if f.is_file()}
    tmp = folder / f".{CHECKPOINT_MARKER}.tmp"
    tmp.write_text(json.dumps(files, indent=0) + "\n")
    os.replace(tmp, folder / CHECKPOINT_MARKER)


def checkpoint_is_complete(folder: Path) -> bool:
    """Marked complete and no file lost since (a kill while the Trainer deleted an old checkpoint)."""
    try:
        files = json.loads((folder / CHECKPOINT_MARKER).read_text())
        return bool(files) and all((folder / name).stat().st_size == size for name, size in files.items())
    except (OSError, ValueError, AttributeError):
        return False


def remove_marked_tree(path: Path, marker: str) -> None:
    """rmtree that removes `marker` last, so a kill midway leaves a folder still recognisable as ted's."""
    if not path.is_dir():
        return
    for child in path.iterdir():
        if child.name == marker:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                child.unlink()
    with contextlib.suppress(OSError):
        (path / marker).unlink()
    with contextlib.suppress(OSError):
        path.rmdir()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _apply_umask(folder: Path) -> None:
    """Files written through temporary files (safetensors shards, mkstemp) are 0600: give them the umask's mode."""
    mode = 0o666 & ~_umask()
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            path.chmod(mode)


@contextlib.contextmanager
def atomic_folder(output_dir: Path) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces `output_dir` in one rename.

    A kill can leave `.NAME.*.tmp` (marked as ted's by WRITING_MARKER) or `.NAME.old-*` behind; the next run
    removes them (`drop_leftovers`). The folder is made with the user's umask, like any other tool's.
    """
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", suffix=".tmp", dir=output_dir.parent))
    tmp.chmod(0o777 & ~_umask())  # mkdtemp makes 0700
    (tmp / WRITING_MARKER).touch()
    try:
        yield tmp
        (tmp / WRITING_MARKER).unlink()
        _apply_umask(tmp)
        if output_dir.exists():
            old = output_dir.with_name(f".{output_dir.name}.old-{os.getpid()}")
            os.replace(output_dir, old)
            crash_point("before_replace")
            os.replace(tmp, output_dir)
            crash_point("after_rename")
            remove_marked_tree(old, STAGE_FILE)
        else:
            os.replace(tmp, output_dir)
            crash_point("after_rename")
    finally:
        if tmp.exists():  # the block failed: drop the partial copy (its marker last)
            (tmp / WRITING_MARKER).touch()
            remove_marked_tree(tmp, WRITING_MARKER)


def drop_leftovers(output_dir: Path) -> None:
    """Remove what a killed run of `output_dir` left behind, only where name and content say ted made it:
    `.NAME.*.tmp` (being written), `.NAME.old-*` (the replaced folder) and `NAME.incomplete/` whose run
    finished (its fingerprint is the one in NAME/ted_stage.json)."""
    output_dir = Path(output_dir)
    for path in output_dir.parent.glob(f".{output_dir.name}.*"):
        if not path.is_dir() or path.is_symlink():
            continue
        writing = path.name.endswith(".tmp") and ((path / WRITING_MARKER).is_file() or is_stage_folder(path))
        replaced = ".old-" in path.name and is_stage_folder(path)
        if writing or replaced or (path.name.endswith(".tmp") or ".old-" in path.name) and not any(path.iterdir()):
            remove_marked_tree(path, WRITING_MARKER if writing else STAGE_FILE)
    if finished_leftover(output_dir):
        remove_marked_tree(work_dir(output_dir), WORK_MARKER)


def finished_leftover(output_dir: Path) -> bool:
    """`NAME.incomplete/` of the run that wrote NAME (killed between the rename and the clean-up)."""
    done = (stage_info(output_dir) or {}).get("run_fingerprint") if Path(output_dir).is_dir() else None
    return bool(done) and run_fingerprint_of(work_dir(Path(output_dir))) == done


def file_digest(path: Path) -> str:
    """Content identity of a file that survives a copy or move: sha256 of the whole file up to 256 MiB; above,
    of its size and 16 evenly spread 1 MiB blocks (weights of big models: cheap, and any retraining changes them)."""
    st = path.stat()
    return _digest(str(path.resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=4096)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    block = 1 << 20
    with open(path, "rb") as f:
        if size <= 256 * block:
            for chunk in iter(lambda: f.read(block), b""):
                h.update(chunk)
        else:
            h.update(str(size).encode())
            for i in range(16):
                f.seek((size - block) * i // 15)
                h.update(f.read(block))
    return h.hexdigest()[:24]


def data_identity(args: dict) -> list:
    """Content identity of the data files a run reads (--train_file, --validation_file, the GLUE task folder
    of --data_dir), in a fixed order; a path that does not exist is kept as given."""
    files: list[Path] = [Path(args[k]) for k in ("train_file", "validation_file") if args.get(k)]
    if args.get("data_dir"):
        from ted.tasks.glue import GLUE_TASKS, canonical_glue_name

        root = Path(args["data_dir"])
        glue = canonical_glue_name(args.get("task_name"))
        folder = root / GLUE_TASKS[glue].folder if glue and (root / GLUE_TASKS[glue].folder).is_dir() else root
        files += sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else [folder]
    return [[p.name, file_digest(p)] if p.is_file() else [str(p), "missing"] for p in files]


# Left out of every fingerprint (a stage's run and the pipeline's reuse): where things go and how they are
# watched, not what is computed.
UNFINGERPRINTED = frozenset(
    {"output_dir", "logging_dir", "overwrite_output_dir", "report_to", "disable_tqdm", "run_name", "cache_dir"}
)


def path_identity(value: Any) -> Any:
    """What a path argument means for a fingerprint: a file by its content, a folder by the content of its
    files (not recursive); anything else (a hub id, a missing path) as given."""
    if not isinstance(value, str) or not value:
        return value
    path = Path(value)
    if path.is_file():
        return {"file": file_digest(path)}
    if path.is_dir():
        return {
            "folder": {
                p.name: file_digest(p) for p in sorted(path.iterdir()) if p.is_file() and not p.name.startswith(".")
            }
        }
    return value


def stage_info(folder: str | Path) -> Optional[dict]:
    """The `ted_stage.json` of a stage folder, or None for a plain model folder or hub id."""
    path = Path(folder) / STAGE_FILE
    return read_json(path) if path.is_file() else None


# Extra keys for the ted_stage.json written inside `stage_extras(...)` (the pipeline's fingerprint).
# The default is never mutated: stage_extras() sets a new dict.
_STAGE_EXTRAS: contextvars.ContextVar[dict] = contextvars.ContextVar("ted_stage_extras", default={})  # noqa: B039


@contextlib.contextmanager
def stage_extras(**extra: Any) -> Iterator[None]:
    """Every stage described inside this block records `extra` in its ted_stage.json (atomically, with it)."""
    token = _STAGE_EXTRAS.set({**_STAGE_EXTRAS.get(), **extra})
    try:
        yield
    finally:
        _STAGE_EXTRAS.reset(token)


def is_main_launch_process() -> bool:
    """False in every process but the first under torchrun / accelerate launch (they set RANK)."""
    return os.environ.get("RANK", "0") == "0"


def describe_stage(stage: str, task, args: dict, lineage: dict, method: Optional[str] = None) -> dict:
    return {
        **_STAGE_EXTRAS.get(),
        "stage": stage,
        "method": method,
        "task": {
            "name": task.name,
            "head": task.head,
            "label_list": task.label_list,
            "selection_metric": task.selection_metric,
        },
        "lineage": lineage,
        "args": args,
        "versions": versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def atomic_write(path: str | Path, data: str | bytes) -> Path:
    """Write a file complete or not at all: a temporary sibling `.NAME.*.tmp`, then one rename over `path`."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)  # mkstemp creates 0600; the file should look like any other the user writes
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def export_student(
    stage_dir: str | Path,
    output_dir: str | Path,
    model_card: Optional[str] = None,
    verify: Optional[Callable[[Path], None]] = None,
) -> Path:
    """Copy the stock Hugging Face model and tokenizer of a stage folder, without filters or heads.

    The caller checks `output_dir` first (`ted.stages.export.run_export`). The copy is built in a temporary
    sibling folder and renamed into place only after `verify(folder)` passes: a complete export or nothing."""
    src, dst = Path(stage_dir), Path(output_dir)
    if not (src / "config.json").is_file():
        raise TedInputError(f"{src} is not a model folder (no config.json). Pass a ted stage folder.")
    with atomic_folder(dst) as tmp:
        for item in sorted(src.iterdir()):
            if item.is_file() and any(fnmatch.fnmatch(item.name, p) for p in _EXPORT_PATTERNS):
                shutil.copyfile(item, tmp / item.name)  # a new file takes the umask (copy2 would keep a 0600 mode)
        if model_card:
            (tmp / "README.md").write_text(model_card)
        if verify is not None:
            verify(tmp)
    return dst
