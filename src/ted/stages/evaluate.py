"""Score any model folder (a ted stage, an exported student, a hub model) on a task's dev sets."""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

from transformers import set_seed

from .. import artifacts
from ..models import load_config, load_task_model, load_tokenizer
from ..objectives import TaskObjective
from ..tasks import is_custom, load_task, with_model_labels
from ..training import TedTrainer
from .common import StageResult, make_collator, model_columns, task_metrics, write_predictions


def run_evaluate(model_args, data_args, training_args) -> StageResult:
    set_seed(training_args.seed)
    tokenizer = load_tokenizer(model_args.tokenizer_name or model_args.model_name_or_path, model_args.cache_dir)
    if is_custom(data_args):  # a dev file alone is enough: the labels come from the model
        data_args = with_model_labels(data_args, load_config(model_args.model_name_or_path, model_args.cache_dir))
    task, data = load_task(data_args, tokenizer)
    model = load_task_model(model_args.model_name_or_path, task, model_args.cache_dir)
    with tempfile.TemporaryDirectory() as scratch:
        args = dataclasses.replace(training_args, output_dir=scratch, remove_unused_columns=False, eval_strategy="no",
                                   load_best_model_at_end=False, report_to=[])
        trainer = TedTrainer(model=model, args=args, objective=TaskObjective(task.head),
                             data_collator=make_collator(tokenizer, training_args), processing_class=tokenizer,
                             compute_metrics=task_metrics(task, data, data_args))
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
