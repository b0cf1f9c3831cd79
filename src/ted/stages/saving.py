"""Writing a trained stage's folder: the one path every training stage takes (`save_stage`)."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from ted import artifacts
from ted.method.trainer import TedTrainer
from ted.squad.postprocess import write_prediction_files
from ted.stages.resume import finish
from ted.stages.training import Trained, metrics_match

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from ted.stages.scoring import MetricsFn


def trained_state(trainer: TedTrainer) -> dict:
    """State dict of the trained module to write the stage folder from; call it in every process.

    Under FSDP / DeepSpeed ZeRO-3 the parameters are sharded across processes, so the modules the stage
    holds do not have the trained weights: this gathers them (a collective) onto the main process. With
    one process or DDP it is simply the module's own state dict.
    """
    state = trainer.accelerator.get_state_dict(trainer.model_wrapped)
    # --torch_compile: the compiled wrapper prefixes every key with `_orig_mod.` (possibly nested).
    return {k.replace("_orig_mod.", ""): v for k, v in state.items()}


def sub_state(state: dict, prefix: str) -> Optional[dict]:
    """The entries of `state` under `prefix.`, with the prefix removed (None when there are none)."""
    prefix = prefix + "."
    found = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    return found or None


def save_stage(
    trained: Trained,
    *,
    model: PreTrainedModel,
    description: dict,
    model_prefix: Optional[str] = None,
    extras: Optional[Callable[[Path, dict], None]] = None,
) -> None:
    """Write a trained stage's folder: the one path every training stage takes.

    The model (its weights under `model_prefix.` of the trained module's state) and tokenizer, whatever
    `extras(folder, state)` adds (filters, Stage I heads, scores), the description, metrics and log, in a
    temporary folder renamed into place by the main process; then the run's checkpoints go. Every process
    calls it: under FSDP / ZeRO-3 gathering the weights is a collective.
    """
    trainer, output_dir = trained.trainer, trained.stage.output_dir
    state = trained_state(trainer)
    if trainer.is_world_process_zero():  # under torchrun / accelerate one process writes, the others wait
        record = {**description, "run_fingerprint": getattr(trainer, "ted_run_fingerprint", None)}
        with artifacts.stage_folder(output_dir, record) as tmp:
            model.save_pretrained(tmp, state_dict=sub_state(state, model_prefix) if model_prefix else state)
            trained.stage.tokenizer.save_pretrained(tmp)
            if extras is not None:
                extras(tmp, state)
            write_predictions(tmp, trainer.compute_metrics)
            write_eval_predictions(tmp, trainer.compute_metrics, trained.eval_metrics)
            artifacts.write_json(tmp / artifacts.EVAL_RESULTS, trained.eval_metrics)
            artifacts.write_json(tmp / artifacts.TRAIN_RESULTS, trained.train_metrics)
            artifacts.write_json(tmp / artifacts.LOG_HISTORY, trainer.state.log_history)
        finish(output_dir)
    trainer.accelerator.wait_for_everyone()


def write_predictions(folder: Path, compute_metrics: Optional[MetricsFn]) -> None:
    """SQuAD: the last evaluation's predictions.json, nbest_predictions.json and null_odds.json."""
    last = getattr(compute_metrics, "last_predictions", None)
    if last is not None:
        write_prediction_files(str(folder), *last)


EVAL_PREDICTIONS = "eval_predictions.npz"


def write_eval_predictions(folder: Path, compute_metrics: Optional[MetricsFn], eval_metrics: dict[str, Any]) -> None:
    """Classification / regression: the kept model's per-example predictions on the first dev set (raw outputs
    and labels), for the paired tests of `ted report`. It is the latest evaluation that gave the stage's scores
    (the kept checkpoint's, logged during training or scored at the end)."""
    for metrics, predictions, labels in reversed(getattr(compute_metrics, "evaluations", [])):
        if metrics_match(metrics, eval_metrics):
            buffer = io.BytesIO()
            np.savez_compressed(buffer, predictions=predictions, labels=labels)
            artifacts.atomic_write(folder / EVAL_PREDICTIONS, buffer.getvalue())
            return
