"""What every stage shares: data, Trainer set-up, resume, evaluation and writing the folder."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import numpy as np
from transformers import DataCollatorWithPadding, TrainerCallback, set_seed

from ted import artifacts
from ted.artifacts import StageResult  # noqa: F401  (re-exported for the stages)
from ted.errors import TedInputError
from ted.method.kinds import get_kind
from ted.method.trainer import TedTrainer
from ted.squad.evaluator import SquadEvaluator
from ted.squad.postprocess import write_prediction_files
from ted.stages.models import check_sequence_length, load_task_model, load_tokenizer
from ted.tasks import load_task
from ted.tasks.base import Task, TaskData
from ted.tasks.squad import version_2

logger = logging.getLogger(__name__)

MODEL_INPUTS = (
    "input_ids",
    "attention_mask",
    "token_type_ids",
    "labels",
    "start_positions",
    "end_positions",
    "feature_index",
    "ted_example_index",  # teacher_cache.EXAMPLE_INDEX: which cached teacher rows a training row reads
)


def model_columns(dataset):
    """Only model inputs and labels reach the Trainer (hub GLUE carries an `idx` column, SQuAD offsets)."""
    if not hasattr(dataset, "column_names"):  # a torch Dataset built by the stage (cached Stage I features)
        return dataset
    drop = [c for c in dataset.column_names if c not in MODEL_INPUTS]
    return dataset.remove_columns(drop) if drop else dataset


def dropout_overrides(model_args) -> dict:
    return {
        "hidden_dropout_prob": model_args.hidden_dropout_prob,
        "attention_probs_dropout_prob": model_args.attention_probs_dropout_prob,
        "classifier_dropout": model_args.classifier_dropout,
    }


def load_training_task(data_args, tokenizer, training_args):
    """`load_task` for a stage that trains: it needs training rows (custom data without --train_file has none)."""
    task, data = load_task(data_args, tokenizer)
    if len(data.train) == 0:
        raise TedInputError(
            "No training examples: this stage trains, so pass --train_file (custom data) or a "
            "task whose training split is not empty."
        )
    if training_args.label_smoothing_factor and task.is_regression:
        raise TedInputError(
            f"--label_smoothing_factor {training_args.label_smoothing_factor} has no meaning for "
            f"the regression task {task.name!r} (there are no classes to smooth over); remove it."
        )
    return task, data


def start_model_stage(model_args, data_args, training_args, run_args: dict[str, Any]):
    """The start of a stage that trains one model (finetune, learn-filters): the checked output folder, the
    tokenizer, the task and its data, and the model with the dropout overrides."""
    check_sequence_length(model_args.model_name_or_path, data_args, model_args.cache_dir)
    output_dir = open_output(training_args, run_args)
    set_seed(training_args.seed)
    tokenizer = load_tokenizer(model_args.tokenizer_name or model_args.model_name_or_path, model_args.cache_dir)
    task, data = load_training_task(data_args, tokenizer, training_args)
    model = load_task_model(model_args.model_name_or_path, task, model_args.cache_dir, **dropout_overrides(model_args))
    return output_dir, tokenizer, task, data, model


def open_output(training_args, run_args: dict[str, Any]) -> Path:
    """Every check of the output folder and of a cut-off run's checkpoints, before any model loads."""
    inputs = tuple(run_args.get(k) for k in (*MODEL_PATH_ARGS, *DATA_PATH_ARGS))
    output_dir = artifacts.check_output_dir(
        training_args.output_dir, training_args.overwrite_output_dir, training_args.output_dir_given, inputs=inputs
    )
    check_resumable(output_dir, fingerprint(run_args), training_args.overwrite_output_dir)
    return output_dir


def args_dict(*groups) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for group in groups:
        if group is None:
            continue
        data = group.to_dict() if hasattr(group, "to_dict") else dataclasses.asdict(group)
        out.update({k: v for k, v in data.items() if not k.startswith("_")})
    return out


# Arguments that name inputs: a fingerprint holds what they contain, not where they are, so a run folder that
# is moved or copied (with its inputs) still resumes. Data files are identified together (artifacts.data_identity).
MODEL_PATH_ARGS = ("model_name_or_path", "teacher_model_name_or_path", "tokenizer_name")
DATA_PATH_ARGS = ("train_file", "validation_file", "data_dir")


def fingerprint(args: dict[str, Any]) -> str:
    """Identity of a run: its settings, its input models and its data, by content (see artifacts.path_identity)."""
    stable = {k: v for k, v in sorted(args.items()) if k not in artifacts.UNFINGERPRINTED and k not in DATA_PATH_ARGS}
    for key in MODEL_PATH_ARGS:
        if key in stable:
            stable[key] = artifacts.path_identity(stable[key])
    stable["data"] = artifacts.data_identity(args)
    return hashlib.sha256(json.dumps(stable, sort_keys=True, default=str).encode()).hexdigest()[:16]


def last_complete_checkpoint(work: Path, remove_partial: bool = True) -> Optional[str]:
    """The newest checkpoint marked complete (CheckpointGuard marks it after the Trainer wrote every file).
    One cut off mid-write by a kill has no mark and is removed, so a resume never loads half a checkpoint."""
    complete = []
    for path in work.glob("checkpoint-*"):
        if not (path.is_dir() and path.name[len("checkpoint-") :].isdigit()):
            continue
        if artifacts.checkpoint_is_complete(path):
            complete.append(path)
        elif remove_partial:
            logger.warning("Removing %s: it was cut off while being written.", path)
            shutil.rmtree(path, ignore_errors=True)
    return str(max(complete, key=lambda p: int(p.name[len("checkpoint-") :]))) if complete else None


def _other_run(output_dir: Path, run_fingerprint: str) -> Optional[Path]:
    """The work folder when it holds complete checkpoints of a run with other settings that did not finish."""
    work = artifacts.work_dir(output_dir)
    theirs = artifacts.run_fingerprint_of(work)
    if theirs is None or theirs == run_fingerprint or artifacts.finished_leftover(output_dir):
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
    work = artifacts.work_dir(output_dir)
    if not main_process:
        return work, last_complete_checkpoint(work, remove_partial=False) if work.is_dir() else None
    artifacts.drop_leftovers(output_dir)
    artifacts.check_work_dir_owned(work)
    check_resumable(output_dir, run_fingerprint, overwrite)
    if artifacts.run_fingerprint_of(work) not in (None, run_fingerprint):
        if _other_run(output_dir, run_fingerprint):
            logger.warning("Starting over: %s held checkpoints of a run with other settings.", work)
        shutil.rmtree(work)  # ted's (it has the marker), and nothing in it is resumable by this run
    work.mkdir(parents=True, exist_ok=True)
    marker = work / artifacts.WORK_MARKER
    tmp = work / f".{artifacts.WORK_MARKER}.tmp"
    tmp.write_text(run_fingerprint + "\n")
    os.replace(tmp, marker)
    last = last_complete_checkpoint(work)
    if last:
        logger.warning("Resuming the interrupted run from %s", last)
    return work, last


class CheckpointGuard(TrainerCallback):
    """Marks each checkpoint complete after the Trainer has written all of it, and logs the loss at every
    checkpoint and at the last step, so the log history covers every step a resumed run skipped."""

    def _log_with_save(self, args, state, control):
        if args.logging_strategy != "no" and (control.should_save or state.global_step >= state.max_steps):
            control.should_log = True

    def on_step_end(self, args, state, control, **kwargs):
        self._log_with_save(args, state, control)

    def on_epoch_end(self, args, state, control, **kwargs):
        self._log_with_save(args, state, control)

    def on_save(self, args, state, control, **kwargs):
        if args.world_size > 1:  # DeepSpeed / FSDP: every process writes its shard before the checkpoint is marked
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                dist.barrier()
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if args.should_save and folder.is_dir():
            artifacts.crash_point("checkpoint_unmarked")
            artifacts.mark_checkpoint_complete(folder)


def whole_run_loss(log_history: list[dict], global_step: int) -> Optional[float]:
    """Mean training loss over every step from the logged interval means, or None when the log has gaps."""
    total, last = 0.0, 0
    for entry in log_history:
        if "loss" in entry and entry.get("step", 0) > last:
            total += entry["loss"] * (entry["step"] - last)
            last = entry["step"]
    return total / last if last == global_step and last > 0 else None


def resumed_train_metrics(trainer, metrics: dict, resumed_at: int) -> dict:
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


def training_arguments(training_args, work: Path, selection_metric: Optional[str], head: str):
    """The user's TrainingArguments pointed at the work folder, with best-model selection wired in."""
    evaluating = str(training_args.eval_strategy) not in ("no", "IntervalStrategy.NO")
    saving = str(training_args.save_strategy) not in ("no", "SaveStrategy.NO")
    # Keeping the best epoch needs both its evaluation and its checkpoint; without either the last one is kept.
    keep_best = selection_metric is not None and evaluating and saving
    if selection_metric is not None and evaluating and not saving:
        logger.warning("--save_strategy no: the last epoch is kept, not the best one on dev.")
    # save_total_limit 1 with best-model selection deletes the last checkpoint when training ends, before the
    # stage folder is written: a kill then would redo the tail of training. 2 keeps best + last until `finish`.
    limit = training_args.save_total_limit
    if keep_best and limit == 1:
        limit = 2
    return dataclasses.replace(
        training_args,
        output_dir=str(work),
        save_total_limit=limit,
        remove_unused_columns=False,
        load_best_model_at_end=keep_best,
        metric_for_best_model=f"eval_{selection_metric}" if keep_best else None,
        greater_is_better=True if keep_best else None,
        # SQuAD streams each batch's logits into post-processing instead of gathering them all.
        batch_eval_metrics=get_kind(head).streams_eval,
    )


def make_collator(tokenizer, training_args):
    multiple = 8 if (training_args.fp16 or training_args.bf16) else None
    return DataCollatorWithPadding(tokenizer, pad_to_multiple_of=multiple)


def run_trainer(
    *,
    module,
    objective,
    tokenizer,
    task: Task,
    data: TaskData,
    training_args,
    output_dir: Path,
    run_args: dict[str, Any],
    compute_metrics: Callable,
    selection_metric: Optional[str],
    teacher=None,
    data_collator=None,
) -> tuple[TedTrainer, dict[str, float], dict[str, float]]:
    """Train `module` with `objective`, keep the best epoch, score every eval set.

    `data_collator` defaults to dynamic padding of tokenized rows (cached Stage I passes its own).
    """
    with training_args.main_process_first(local=False, desc="preparing the checkpoint folder"):
        run_fingerprint = fingerprint(run_args)
        work, resume = prepare_work_dir(
            output_dir,
            run_fingerprint,
            training_args.overwrite_output_dir,
            main_process=training_args.process_index == 0,
        )
    args = training_arguments(training_args, work, selection_metric, task.head)
    eval_sets = {name: model_columns(ds) for name, ds in data.eval_sets.items()}
    first_eval = next(iter(eval_sets.values())) if eval_sets else None
    trainer = TedTrainer(
        model=module,
        args=args,
        objective=objective,
        teacher=teacher,
        data_collator=data_collator or make_collator(tokenizer, training_args),
        train_dataset=model_columns(data.train),
        eval_dataset=first_eval,
        processing_class=tokenizer,
        compute_metrics=compute_metrics,
        callbacks=[CheckpointGuard()],
    )
    trainer.ted_run_fingerprint = run_fingerprint  # recorded in ted_stage.json (a finished run's leftovers)
    train_output = trainer.train(resume_from_checkpoint=resume)
    train_metrics = dict(train_output.metrics)
    if resume:
        train_metrics = resumed_train_metrics(trainer, train_metrics, int(Path(resume).name.split("-")[-1]))
    return trainer, train_metrics, score_kept_model(trainer, eval_sets)


def score_kept_model(trainer: TedTrainer, eval_sets: dict) -> dict[str, float]:
    """Every eval set's metrics for the model the stage keeps. The first set was scored during training:
    when the kept weights are exactly the ones such an evaluation saw, its logged score is reused instead of
    a second pass over the data (the others, e.g. MNLI mismatched, are only scored here)."""
    metrics: dict[str, float] = {}
    for i, (name, dataset) in enumerate(eval_sets.items()):
        logged = logged_score_of_kept_model(trainer) if i == 0 else None
        if logged is not None:
            metrics.update(logged)
        else:
            prefix = "eval" if i == 0 else f"eval_{name}"
            metrics.update(trainer.evaluate(eval_dataset=dataset, metric_key_prefix=prefix))
    return metrics


def logged_score_of_kept_model(trainer: TedTrainer) -> Optional[dict[str, float]]:
    """The in-training evaluation of the kept weights, as `trainer.evaluate` would return it, or None.

    Kept: the best checkpoint (reloaded from the files written right after its evaluation) or, without
    selection, the last step's weights. SQuAD writes its prediction files from the latest evaluation of
    this process, so there the kept checkpoint must also be the latest evaluation.
    """
    state = trainer.state
    if trainer.args.load_best_model_at_end:
        best = state.best_model_checkpoint
        if not best or not Path(best).is_dir():  # nothing was reloaded: the weights are the last step's
            return None
        step = getattr(state, "best_global_step", None) or int(Path(best).name.rsplit("-", 1)[-1])
    else:
        step = state.global_step
    evaluations = [entry for entry in state.log_history if "eval_runtime" in entry]
    kept = [entry for entry in evaluations if entry.get("step") == step]
    if not kept:
        return None
    if hasattr(trainer.compute_metrics, "last_predictions") and (
        trainer.compute_metrics.last_predictions is None or evaluations[-1] is not kept[-1]
    ):
        return None
    scores = {k: v for k, v in kept[-1].items() if k != "step"}
    scores["epoch"] = state.epoch  # what a final evaluate() reports: the epochs trained
    return scores


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
    trainer: TedTrainer,
    output_dir: Path,
    *,
    model,
    tokenizer,
    description: dict,
    train_metrics: dict,
    eval_metrics: dict,
    model_prefix: Optional[str] = None,
    extras: Optional[Callable[[Path, dict], None]] = None,
) -> None:
    """Write a trained stage's folder: the one path every training stage takes.

    The model (its weights under `model_prefix.` of the trained module's state) and tokenizer, whatever
    `extras(folder, state)` adds (filters, Stage I heads, scores), the description, metrics and log, in a
    temporary folder renamed into place by the main process; then the run's checkpoints go. Every process
    calls it: under FSDP / ZeRO-3 gathering the weights is a collective.
    """
    state = trained_state(trainer)
    if trainer.is_world_process_zero():  # under torchrun / accelerate one process writes, the others wait
        with artifacts.atomic_folder(output_dir) as tmp:
            model.save_pretrained(tmp, state_dict=sub_state(state, model_prefix) if model_prefix else state)
            tokenizer.save_pretrained(tmp)
            if extras is not None:
                extras(tmp, state)
            write_predictions(tmp, trainer.compute_metrics)
            write_eval_predictions(tmp, trainer.compute_metrics, eval_metrics)
            record = {**description, "run_fingerprint": getattr(trainer, "ted_run_fingerprint", None)}
            artifacts.write_json(tmp / artifacts.STAGE_FILE, record)
            artifacts.write_json(tmp / artifacts.EVAL_RESULTS, eval_metrics)
            artifacts.write_json(tmp / artifacts.TRAIN_RESULTS, train_metrics)
            artifacts.write_json(tmp / artifacts.LOG_HISTORY, trainer.state.log_history)
        finish(output_dir)
    trainer.accelerator.wait_for_everyone()


def finish(output_dir: Path) -> None:
    """The run is complete and its folder in place: its checkpoints are no longer needed."""
    artifacts.remove_marked_tree(artifacts.work_dir(output_dir), artifacts.WORK_MARKER)


def write_predictions(folder: Path, compute_metrics) -> None:
    """SQuAD: the last evaluation's predictions.json, nbest_predictions.json and null_odds.json."""
    last = getattr(compute_metrics, "last_predictions", None)
    if last is not None:
        write_prediction_files(str(folder), *last)


EVAL_PREDICTIONS = "eval_predictions.npz"


def write_eval_predictions(folder: Path, compute_metrics, eval_metrics: dict) -> None:
    """Classification / regression: the kept model's per-example predictions on the first dev set (raw outputs
    and labels), for the paired tests of `ted report`. It is the latest evaluation that gave the stage's scores
    (the kept checkpoint's, logged during training or scored at the end)."""
    for metrics, predictions, labels in reversed(getattr(compute_metrics, "evaluations", [])):
        if metrics and all(eval_metrics.get(f"eval_{k}") == v for k, v in metrics.items()):
            buffer = io.BytesIO()
            np.savez_compressed(buffer, predictions=predictions, labels=labels)
            artifacts.atomic_write(folder / EVAL_PREDICTIONS, buffer.getvalue())
            return


def squad_evaluator(task: Task, data: TaskData, data_args, layers: Optional[list[int]] = None) -> SquadEvaluator:
    name = next(iter(data.eval_sets))
    return SquadEvaluator(
        data.eval_examples[name],
        data.eval_sets[name],
        version_2(task),
        n_best_size=data_args.n_best_size,
        max_answer_length=data_args.max_answer_length,
        null_score_diff_threshold=data_args.null_score_diff_threshold,
        layers=layers,
    )


def task_metrics(task: Task, data: TaskData, data_args) -> Callable:
    if task.kind.streams_eval:
        return squad_evaluator(task, data, data_args)

    def compute(prediction) -> dict[str, float]:
        predictions, labels = np.asarray(prediction.predictions), np.asarray(prediction.label_ids)
        metrics = task.compute_metrics(predictions, labels)
        compute.evaluations.append((metrics, predictions, labels))  # see write_eval_predictions
        return metrics

    compute.evaluations = []
    return compute


def per_filter_metrics(task: Task, layers: list[int], data: TaskData, data_args) -> Callable:
    """Stage I diagnostics: each filter head scored on its own, keyed `layer{i}_{metric}`."""
    if task.kind.streams_eval:
        return squad_evaluator(task, data, data_args, layers)

    def compute(prediction) -> dict[str, float]:
        preds, labels = np.asarray(prediction.predictions), np.asarray(prediction.label_ids)
        out: dict[str, float] = {}
        for k, layer in enumerate(layers):
            for name, value in task.compute_metrics(preds[:, k], labels).items():
                out[f"layer{layer}_{name}"] = value
        return out

    return compute
