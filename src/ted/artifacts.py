"""What a stage writes and reads, and writing it all-or-nothing.

A stage folder is self-describing: the model saved with `save_pretrained` (loadable with
`AutoModelFor...` and no `ted` import), its tokenizer, optional filters and Stage I heads in
safetensors with a JSON description, `ted_stage.json` (stage, method, resolved arguments,
lineage, versions) and the metrics. Folders are written under a temporary name and renamed into
place, so a crash never leaves a half-written artifact. Checking a stage's output folder and its
leftovers is `ted.stages.output`; fingerprints are `ted.stages.fingerprint`.
"""

from __future__ import annotations

import contextlib
import contextvars
import fnmatch
import json
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    from types import SimpleNamespace

    from ted.tasks.base import Task

STAGE_FILE = "ted_stage.json"
EVAL_RESULTS = "eval_results.json"
TRAIN_RESULTS = "train_results.json"
LOG_HISTORY = "log_history.json"
STAGE1_SCORES = "stage1_layer_scores.json"
WRITING_MARKER = ".ted_writing"  # in a folder atomic_folder is still writing; removed before the rename
# The files of a stock Hugging Face model folder, nothing of ted's: `ted export` copies them all, `ted
# import-original` the tokenizer's.
TOKENIZER_PATTERNS = (
    "tokenizer*",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab*",
    "merges.txt",
    "spm.model",
    "*.model",
    "chat_template*",
)
STOCK_MODEL_PATTERNS = (
    "config.json",
    "generation_config.json",
    "model*.safetensors",
    "model.safetensors.index.json",
    *TOKENIZER_PATTERNS,
)


@dataclass
class StageResult:
    """What a stage returns: the folder it wrote and its dev metrics."""

    output_dir: str
    metrics: dict[str, float]
    extra: dict[str, Any] = field(default_factory=dict)


def versions() -> dict[str, str]:
    """The versions recorded with every artifact (torch and transformers are imported only here, when asked)."""
    import torch
    import transformers

    from ted import __version__

    return {"ted": __version__, "torch": torch.__version__, "transformers": transformers.__version__}


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def is_stage_folder(path: Path) -> bool:
    return (Path(path) / STAGE_FILE).is_file()


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


def describe_stage(
    stage: str, task: Task | SimpleNamespace, args: dict, lineage: dict, method: Optional[str] = None
) -> dict:
    """The content of a stage's ted_stage.json (plus the keys of any enclosing `stage_extras`)."""
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
    """The process's umask (reading it means setting it: set it straight back)."""
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
    removes them (`ted.stages.output.drop_leftovers`). The folder is made with the user's umask, like any other tool's.
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


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """A file complete or not at all: the block writes the temporary sibling `.NAME.*.tmp` it is given, which
    is renamed over `path` when the block ends and removed when it fails."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; the file should look like any other the user writes
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write(path: str | Path, data: str | bytes) -> Path:
    """Write `data` to a file complete or not at all (see atomic_file), synced to disk before the rename."""
    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())
    return Path(path)


@contextlib.contextmanager
def stage_folder(output_dir: Path, description: dict) -> Iterator[Path]:
    """Write a stage folder all-or-nothing: yield a temporary folder to fill; its ted_stage.json (`description`)
    is added last and the whole folder renamed into place (`atomic_folder`)."""
    with atomic_folder(output_dir) as tmp:
        yield tmp
        write_json(tmp / STAGE_FILE, description)


def matches(name: str, patterns: tuple[str, ...]) -> bool:
    """Whether a file name matches one of the shell-style `patterns` (e.g. STOCK_MODEL_PATTERNS)."""
    return any(fnmatch.fnmatch(name, pattern) for pattern in patterns)


def copy_matching(src: Path, dst: Path, patterns: tuple[str, ...]) -> None:
    """Copy the plain files of `src` whose names match `patterns` into `dst`, as new files (they take the
    umask; copy2 would keep a 0600 mode)."""
    for item in sorted(Path(src).iterdir()):
        if item.is_file() and matches(item.name, patterns):
            shutil.copyfile(item, Path(dst) / item.name)
