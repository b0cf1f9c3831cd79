"""Stage 0: plain fine-tuning of a teacher or a student; keeps the best epoch on dev."""

from __future__ import annotations

from ted import artifacts
from ted.method.objectives import TaskObjective
from ted.stages.common import (
    StageResult,
    args_dict,
    run_trainer,
    save_stage,
    start_model_stage,
    task_metrics,
)


def run_finetune(model_args, data_args, training_args) -> StageResult:
    run_args = args_dict(model_args, data_args, training_args)
    output_dir, tokenizer, task, data, model = start_model_stage(model_args, data_args, training_args, run_args)
    trainer, train_metrics, eval_metrics = run_trainer(
        module=model,
        objective=TaskObjective(task.head),
        tokenizer=tokenizer,
        task=task,
        data=data,
        training_args=training_args,
        output_dir=output_dir,
        run_args=run_args,
        compute_metrics=task_metrics(task, data, data_args),
        selection_metric=task.selection_metric,
    )
    description = artifacts.describe_stage("finetune", task, run_args, lineage={"model": model_args.model_name_or_path})
    save_stage(
        trainer,
        output_dir,
        model=model,
        tokenizer=tokenizer,
        description=description,
        train_metrics=train_metrics,
        eval_metrics=eval_metrics,
    )
    return StageResult(str(output_dir), eval_metrics)
