"""Score any model folder (a ted stage, an exported student, a hub model) on a task's dev sets."""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from transformers import set_seed

from ted import artifacts
from ted.artifacts import StageResult
from ted.method.kinds import get_kind
from ted.method.objectives import TaskObjective
from ted.method.trainer import TedTrainer
from ted.settings.training_args import DataArguments
from ted.stages.common import make_collator, model_columns
from ted.stages.models import fit_data_to_model, load_config, load_task_model, load_tokenizer
from ted.stages.saving import write_predictions
from ted.stages.scoring import task_metrics
from ted.tasks import GLUE_TASKS, is_custom, load_task, with_model_labels

if TYPE_CHECKING:
    from ted.settings.options import ModelArguments
    from ted.settings.training_args import TedTrainingArguments

logger = logging.getLogger(__name__)

# Data settings a stage folder remembers (the "args" of its ted_stage.json). Scoring it reuses them, so the
# columns, sequence length and SQuAD windows match training; the data files themselves are the user's choice.
REMEMBERED_SETTINGS = (
    "text_columns",
    "label_column",
    "label_list",
    "task_type",
    "max_seq_length",
    "pad_to_max_length",
    "doc_stride",
    "n_best_size",
    "max_answer_length",
    "null_score_diff_threshold",
    "block_size",
    "line_by_line",
    "text_column",
    "prompt_column",
    "completion_column",
    "messages_column",
)
# The hub dataset a stage trained on is remembered as a whole, and only when the user names no other data (their
# --validation_file, --data_dir or another --dataset_name wins without a conflict).
HUB_SETTINGS = ("dataset_name", "dataset_config_name", "validation_split_percentage")


def _stage_task_name(info: dict, data_args: DataArguments) -> str | None:
    """The stage's task, when the user's data fits it (a GLUE stage scored on the user's files is custom data)."""
    name = (info.get("task") or {}).get("name") or (info.get("args") or {}).get("task_name")
    if not name or name == "custom":
        return None
    if name in GLUE_TASKS and (data_args.train_file or data_args.validation_file):
        return None
    return name


def _stage_hub_dataset(saved: dict, data_args: DataArguments) -> dict:
    """The stage's hub dataset settings that `data_args` leave open (none when the user names other data)."""
    if not saved.get("dataset_name") or data_args.train_file or data_args.validation_file or data_args.data_dir:
        return {}
    if data_args.dataset_name not in (None, saved["dataset_name"]):
        return {}
    open_settings = [name for name in HUB_SETTINGS if getattr(data_args, name) is None]
    return {name: saved[name] for name in open_settings if saved.get(name) is not None}


def with_stage_settings(data_args: DataArguments, model_path: str | None) -> DataArguments:
    """`data_args` completed from the stage folder at `model_path`: its task and data settings, wherever the
    user left a setting at its default (an explicit flag that differs from the default always wins)."""
    try:
        info = artifacts.stage_info(model_path) if model_path else None
    except (OSError, ValueError):
        info = None  # not readable as a stage: scored like any model folder
    if not info:
        return data_args
    saved = info.get("args") or {}
    defaults = {f.name: f.default for f in dataclasses.fields(DataArguments)}
    changes = {
        name: saved[name]
        for name in REMEMBERED_SETTINGS
        if saved.get(name) is not None and getattr(data_args, name) == defaults[name] and saved[name] != defaults[name]
    }
    changes.update(_stage_hub_dataset(saved, data_args))
    if not data_args.task_name and _stage_task_name(info, data_args):
        changes["task_name"] = _stage_task_name(info, data_args)
    if get_kind((info.get("task") or {}).get("head") or "classification").scores and not data_args.task_type:
        changes["task_type"] = "regression"  # whole-number dev scores must not be read as classes
    if changes:
        logger.info(
            "Settings taken from %s: %s (flags override them)", Path(model_path) / artifacts.STAGE_FILE, changes
        )
    return dataclasses.replace(data_args, **changes)


def run_evaluate(
    model_args: ModelArguments, data_args: DataArguments, training_args: TedTrainingArguments
) -> StageResult:
    set_seed(training_args.seed)
    data_args = with_stage_settings(data_args, model_args.model_name_or_path)
    path, gguf, tokenizer_path = model_args.model_name_or_path, model_args.gguf_file, model_args.tokenizer_name
    tokenizer = load_tokenizer(tokenizer_path or path, model_args.cache_dir, None if tokenizer_path else gguf)
    if is_custom(data_args):  # a dev file alone is enough: the labels come from the model
        data_args = with_model_labels(data_args, load_config(path, model_args.cache_dir, gguf))
    data_args = fit_data_to_model(path, data_args, model_args.cache_dir, gguf)
    # Scoring needs no training rows: every task keeps none, and causal_lm does not even read its train split.
    task, data = load_task(dataclasses.replace(data_args, max_train_samples=0), tokenizer)
    model = load_task_model(path, task, model_args.cache_dir, gguf, tokenizer)
    with tempfile.TemporaryDirectory() as scratch:
        # SQuAD streams each batch's logits into post-processing (as the stages do) instead of gathering them all.
        args = dataclasses.replace(
            training_args,
            output_dir=scratch,
            remove_unused_columns=False,
            eval_strategy="no",
            load_best_model_at_end=False,
            report_to=[],
            batch_eval_metrics=task.kind.streams_eval,
        )
        trainer = TedTrainer(
            model=model,
            args=args,
            objective=TaskObjective(task.head),
            data_collator=make_collator(tokenizer, training_args, task.kind),
            processing_class=tokenizer,
            compute_metrics=task_metrics(task, data, data_args),
        )
        metrics: dict[str, float] = {}
        for i, (name, dataset) in enumerate(data.eval_sets.items()):
            prefix = "eval" if i == 0 else f"eval_{name}"
            metrics.update(trainer.evaluate(eval_dataset=model_columns(dataset), metric_key_prefix=prefix))
    if training_args.output_dir_given and trainer.is_world_process_zero():
        out = Path(training_args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        artifacts.write_json(out / artifacts.EVAL_RESULTS, metrics)
        write_predictions(out, trainer.compute_metrics)
    return StageResult(training_args.output_dir if training_args.output_dir_given else "", metrics)
