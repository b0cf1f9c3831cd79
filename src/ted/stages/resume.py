"""Resuming a cut-off run: its work folder, which checkpoints are complete, and a whole-run training loss.

Checkpoints of an unfinished run live in `<output>.incomplete/` (see `ted.stages.output`) with the run's
fingerprint; a re-run with the same fingerprint resumes from the newest checkpoint marked complete.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from transformers import TrainerCallback

from ted.artifacts import atomic_write, crash_point, remove_marked_tree
from ted.errors import TedInputError
from ted.stages.output import (
    WORK_MARKER,
    check_work_dir_owned,
    drop_leftovers,
    finished_leftover,
    run_fingerprint_of,
    work_dir,
)

if TYPE_CHECKING:
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from ted.method.trainer import TedTrainer

logger = logging.getLogger(__name__)

CHECKPOINT_MARKER = "ted_checkpoint_complete"  # written into a checkpoint after the Trainer finished it


def mark_checkpoint_complete(folder: Path) -> None:
    """Record every file of a checkpoint the Trainer finished writing (name and size), written last and
    atomically: a checkpoint counts as complete only while all of them are still there (see below)."""
    files = {str(f.relative_to(folder)): f.stat().st_size for f in sorted(folder.rglob("*")) if f.is_file()}
    atomic_write(folder / CHECKPOINT_MARKER, json.dumps(files, indent=0) + "\n")


def checkpoint_is_complete(folder: Path) -> bool:
    """Marked complete and no file lost since (a kill while the Trainer deleted an old checkpoint)."""
    try:
        files = json.loads((folder / CHECKPOINT_MARKER).read_text())
        return bool(files) and all((folder / name).stat().st_size == size for name, size in files.items())
    except (OSError, ValueError, AttributeError):
        return False


def last_complete_checkpoint(work: Path, remove_partial: bool = True) -> Optional[str]:
    """The newest checkpoint marked complete (CheckpointGuard marks it after the Trainer wrote every file).
    One cut off mid-write by a kill has no mark and is removed, so a resume never loads half a checkpoint."""
    complete = []
    for path in work.glob("checkpoint-*"):
        if not (path.is_dir() and path.name[len("checkpoint-") :].isdigit()):
            continue
        if checkpoint_is_complete(path):
            complete.append(path)
        elif remove_partial:
            logger.warning("Removing %s: it was cut off while being written.", path)
            shutil.rmtree(path, ignore_errors=True)
    return str(max(complete, key=lambda p: int(p.name[len("checkpoint-") :]))) if complete else None


def _other_run(output_dir: Path, run_fingerprint: str) -> Optional[Path]:
    """The work folder when it holds complete checkpoints of a run with other settings that did not finish."""
    work = work_dir(output_dir)
    theirs = run_fingerprint_of(work)
    if theirs is None or theirs == run_fingerprint or finished_leftover(output_dir):
        return None
    return work if last_complete_checkpoint(work, remove_partial=False) else None


def check_resumable(output_dir: Path, run_fingerprint: str, overwrite: bool) -> None:
    """Refuse (before any model loads) to throw away the checkpoints of another run unless told to.
    A work folder without a complete checkpoint holds nothing worth keeping: the run takes it over."""
    work = _other_run(output_dir, run_fingerprint)
    if work is not None and not overwrite:
        raise TedInputError(
            f"{work} holds checkpoints of an interrupted run with different settings. Re-run that command to "
            "finish it, or pass --overwrite_output_dir to start over with these settings."
        )


def prepare_work_dir(
    output_dir: Path, run_fingerprint: str, overwrite: bool, main_process: bool = True
) -> tuple[Path, Optional[str]]:
    """Checkpoint folder of this run and the checkpoint to resume from, if an identical run was cut off.

    Under torchrun / accelerate only the main process creates or clears the folder; the others (which run
    after it, see `run_trainer`) only look for the checkpoint to resume from.
    """
    work = work_dir(output_dir)
    if not main_process:
        return work, last_complete_checkpoint(work, remove_partial=False) if work.is_dir() else None
    drop_leftovers(output_dir)
    check_work_dir_owned(work)
    check_resumable(output_dir, run_fingerprint, overwrite)
    if run_fingerprint_of(work) not in (None, run_fingerprint):
        if _other_run(output_dir, run_fingerprint):
            logger.warning("Starting over: %s held checkpoints of a run with other settings.", work)
        shutil.rmtree(work)  # ted's (it has the marker), and nothing in it is resumable by this run
    work.mkdir(parents=True, exist_ok=True)
    atomic_write(work / WORK_MARKER, run_fingerprint + "\n")
    last = last_complete_checkpoint(work)
    if last:
        logger.warning("Resuming the interrupted run from %s", last)
    return work, last


class CheckpointGuard(TrainerCallback):
    """Marks each checkpoint complete after the Trainer has written all of it, and logs the loss at every
    checkpoint and at the last step, so the log history covers every step a resumed run skipped."""

    def _log_with_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl) -> None:
        if args.logging_strategy != "no" and (control.should_save or state.global_step >= state.max_steps):
            control.should_log = True

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        self._log_with_save(args, state, control)

    def on_epoch_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._log_with_save(args, state, control)

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if args.world_size > 1:  # DeepSpeed / FSDP: every process writes its shard before the checkpoint is marked
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                dist.barrier()
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if args.should_save and folder.is_dir():
            crash_point("checkpoint_unmarked")
            mark_checkpoint_complete(folder)


def whole_run_loss(log_history: list[dict], global_step: int) -> Optional[float]:
    """Mean training loss over every step from the logged interval means, or None when the log has gaps."""
    total, last = 0.0, 0
    for entry in log_history:
        if "loss" in entry and entry.get("step", 0) > last:
            total += entry["loss"] * (entry["step"] - last)
            last = entry["step"]
    return total / last if last == global_step and last > 0 else None


def resumed_train_metrics(trainer: TedTrainer, metrics: dict, resumed_at: int) -> dict:
    """After a resume the Trainer's train_loss covers only the steps after it: report the whole run's."""
    whole = whole_run_loss(trainer.state.log_history, trainer.state.global_step)
    if whole is None:  # logging off or gaps: say what the number covers instead
        metrics["train_loss_from_step"] = resumed_at + 1
        return metrics
    metrics["train_loss"] = whole
    for entry in reversed(trainer.state.log_history):  # the Trainer's final log entry carries it too
        if "train_loss" in entry:
            entry["train_loss"] = whole
            break
    return metrics


def finish(output_dir: Path) -> None:
    """The run is complete and its folder in place: its checkpoints are no longer needed."""
    remove_marked_tree(work_dir(output_dir), WORK_MARKER)
