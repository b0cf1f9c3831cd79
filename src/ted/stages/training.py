"""Training one stage: the Trainer pointed at the run's work folder, resumed, and the kept model scored."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

from ted.method.kinds import get_kind
from ted.method.trainer import TedTrainer
from ted.stages.common import make_collator, model_columns
from ted.stages.fingerprint import fingerprint
from ted.stages.resume import CheckpointGuard, prepare_work_dir, resumed_train_metrics
from ted.tasks.base import Task, TaskData

if TYPE_CHECKING:
    from torch import nn
    from transformers import PreTrainedTokenizerBase

    from ted.method.modules import Teacher
    from ted.method.teacher_cache.collate import CachedTeacher, Collator
    from ted.method.trainer import Objective
    from ted.settings.training_args import TedTrainingArguments
    from ted.stages.scoring import MetricsFn

logger = logging.getLogger(__name__)


def training_arguments(
    training_args: TedTrainingArguments, work: Path, selection_metric: Optional[str], head: str
) -> TedTrainingArguments:
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
        greater_is_better=get_kind(head).greater_is_better if keep_best else None,
        # SQuAD streams each batch's logits into post-processing instead of gathering them all.
        batch_eval_metrics=get_kind(head).streams_eval,
    )


@dataclasses.dataclass
class StageTraining:
    """What a training stage hands to the Trainer: where it writes, its resolved arguments, tokenizer, task, data."""

    output_dir: Path
    run_args: dict[str, Any]
    training_args: TedTrainingArguments
    tokenizer: PreTrainedTokenizerBase
    task: Task
    data: TaskData


@dataclasses.dataclass
class Trained:
    """A finished training: the Trainer (its state and log) and the metrics of the model the stage keeps."""

    stage: StageTraining
    trainer: TedTrainer
    train_metrics: dict[str, float]
    eval_metrics: dict[str, float]


def run_trainer(
    stage: StageTraining,
    *,
    module: nn.Module,
    objective: Objective,
    compute_metrics: MetricsFn,
    selection_metric: Optional[str],
    teacher: Optional[Union[Teacher, CachedTeacher]] = None,
    data_collator: Optional[Collator] = None,
) -> Trained:
    """Train `module` with `objective`, keep the best epoch, score every eval set.

    `data_collator` defaults to dynamic padding of tokenized rows (cached Stage I passes its own).
    """
    training_args = stage.training_args
    with training_args.main_process_first(local=False, desc="preparing the checkpoint folder"):
        run_fingerprint = fingerprint(stage.run_args)
        work, resume = prepare_work_dir(
            stage.output_dir,
            run_fingerprint,
            training_args.overwrite_output_dir,
            main_process=training_args.process_index == 0,
        )
    args = training_arguments(training_args, work, selection_metric, stage.task.head)
    eval_sets = {name: model_columns(ds) for name, ds in stage.data.eval_sets.items()}
    first_eval = next(iter(eval_sets.values())) if eval_sets else None
    trainer = TedTrainer(
        model=module,
        args=args,
        objective=objective,
        teacher=teacher,
        data_collator=data_collator or make_collator(stage.tokenizer, training_args, stage.task.kind),
        train_dataset=model_columns(stage.data.train),
        eval_dataset=first_eval,
        processing_class=stage.tokenizer,
        compute_metrics=compute_metrics,
        callbacks=[CheckpointGuard()],
    )
    trainer.ted_run_fingerprint = run_fingerprint  # recorded in ted_stage.json (a finished run's leftovers)
    train_output = trainer.train(resume_from_checkpoint=resume)
    train_metrics = dict(train_output.metrics)
    if resume:
        train_metrics = resumed_train_metrics(trainer, train_metrics, int(Path(resume).name.split("-")[-1]))
    return Trained(stage, trainer, train_metrics, score_kept_model(trainer, eval_sets))


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
    seen = getattr(trainer.compute_metrics, "evaluations", None)
    if seen is not None and not any(metrics_match(metrics, scores) for metrics, *_ in seen):
        return None  # scored before a resume, by another process: score again so its predictions are kept
    scores["epoch"] = state.epoch  # what a final evaluate() reports: the epochs trained
    return scores


def metrics_match(metrics: dict[str, float], eval_metrics: dict[str, Any]) -> bool:
    """Whether an in-process evaluation (`compute_metrics` keys) gave these `eval_*` scores."""
    return bool(metrics) and all(eval_metrics.get(f"eval_{k}") == v for k, v in metrics.items())
