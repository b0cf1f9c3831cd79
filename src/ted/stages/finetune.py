"""Stage 0: plain fine-tuning of a teacher or a student; keeps the best epoch on dev."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ted import artifacts
from ted.artifacts import StageResult
from ted.method.objectives import TaskObjective
from ted.stages.common import args_dict, start_model_stage
from ted.stages.saving import save_stage
from ted.stages.scoring import task_metrics
from ted.stages.training import StageTraining, run_trainer

if TYPE_CHECKING:
    from ted.settings.options import DataArguments, ModelArguments
    from ted.settings.training_args import TedTrainingArguments


def run_finetune(
    model_args: ModelArguments, data_args: DataArguments, training_args: TedTrainingArguments
) -> StageResult:
    run_args = args_dict(model_args, data_args, training_args)
    output_dir, tokenizer, task, data, model = start_model_stage(model_args, data_args, training_args, run_args)
    trained = run_trainer(
        StageTraining(output_dir, run_args, training_args, tokenizer, task, data),
        module=model,
        objective=TaskObjective(task.head),
        compute_metrics=task_metrics(task, data, data_args),
        selection_metric=task.selection_metric,
    )
    description = artifacts.describe_stage("finetune", task, run_args, lineage={"model": model_args.model_name_or_path})
    save_stage(trained, model=model, description=description)
    return StageResult(str(output_dir), trained.eval_metrics)
