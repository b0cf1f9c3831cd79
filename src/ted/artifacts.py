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
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from .errors import TedInputError

STAGE_FILE = "ted_stage.json"
EVAL_RESULTS = "eval_results.json"
TRAIN_RESULTS = "train_results.json"
LOG_HISTORY = "log_history.json"
STAGE1_SCORES = "stage1_layer_scores.json"
# Files `ted export` copies: what a stock model folder needs (weights, config, tokenizer), nothing of ted's.
_EXPORT_PATTERNS = ("config.json", "generation_config.json", "model*.safetensors", "model.safetensors.index.json",
                    "tokenizer*", "special_tokens_map.json", "added_tokens.json", "vocab*", "merges.txt",
                    "spm.model", "*.model", "chat_template*")


@dataclass
class StageResult:
    """What a stage returns: the folder it wrote and its dev metrics."""

    output_dir: str
    metrics: dict[str, float]
    extra: dict[str, Any] = field(default_factory=dict)


def versions() -> dict[str, str]:
    import torch
    import transformers

    from . import __version__

    return {"ted": __version__, "torch": torch.__version__, "transformers": transformers.__version__}


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def check_output_dir(output_dir: Optional[str], overwrite: bool, given: bool = True) -> Path:
    """Fail before any compute when the output folder is missing or would be clobbered."""
    if not output_dir or not given:
        raise TedInputError("--output_dir is required: the folder this stage writes.")
    path = Path(output_dir)
    if path.exists() and any(path.iterdir()) and not overwrite:
        raise TedInputError(f"{path} already exists and is not empty. Pass --overwrite_output_dir to replace it.")
    return path


def work_dir(output_dir: Path) -> Path:
    """Where checkpoints of an unfinished run live (kept for resuming, removed on success)."""
    return output_dir.with_name(output_dir.name + ".incomplete")


@contextlib.contextmanager
def atomic_folder(output_dir: Path) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces `output_dir` in one rename."""
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", suffix=".tmp", dir=output_dir.parent))
    try:
        yield tmp
        if output_dir.exists():
            old = output_dir.with_name(f".{output_dir.name}.old-{os.getpid()}")
            os.replace(output_dir, old)
            os.replace(tmp, output_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, output_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def stage_info(folder: str | Path) -> Optional[dict]:
    """The `ted_stage.json` of a stage folder, or None for a plain model folder or hub id."""
    path = Path(folder) / STAGE_FILE
    return read_json(path) if path.is_file() else None


# Extra keys for the ted_stage.json written inside `stage_extras(...)` (the pipeline's fingerprint).
_STAGE_EXTRAS: contextvars.ContextVar[dict] = contextvars.ContextVar("ted_stage_extras", default={})


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
        "task": {"name": task.name, "head": task.head, "label_list": task.label_list,
                 "selection_metric": task.selection_metric},
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


def export_student(stage_dir: str | Path, output_dir: str | Path, model_card: Optional[str] = None,
                   verify: Optional[Callable[[Path], None]] = None) -> Path:
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
