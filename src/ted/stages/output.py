"""Output safety: check a stage's output folder before any compute, and clear what a killed run left behind.

A stage replaces its output folder as a whole and keeps the checkpoints of an unfinished run in a sibling
`<output>.incomplete/` work folder; ted only ever replaces or removes folders that carry its own markers.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Optional

from ted.artifacts import STAGE_FILE, WRITING_MARKER, is_stage_folder, remove_marked_tree, stage_info
from ted.errors import TedInputError

WORK_MARKER = "ted_fingerprint.txt"  # in `<output>.incomplete/`: the fingerprint of the run it holds


def is_main_launch_process() -> bool:
    """False in every process but the first under torchrun / accelerate launch (they set RANK)."""
    return os.environ.get("RANK", "0") == "0"


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
    """Refuse to keep checkpoints in a folder of that name that ted did not make."""
    if work.exists() and not (work.is_dir() and is_work_dir(work)):
        raise TedInputError(
            f"{work} exists but was not made by ted (no {WORK_MARKER}); ted keeps checkpoints "
            "there. Move it away or choose another --output_dir."
        )


def run_fingerprint_of(work: Path) -> Optional[str]:
    """The fingerprint of the run whose checkpoints a work folder holds (None: no marker)."""
    try:
        return (work / WORK_MARKER).read_text().strip()
    except OSError:
        return None


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
