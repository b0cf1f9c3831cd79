"""Stage 0: plain fine-tuning of a teacher or a student; keeps the best epoch on dev."""

from __future__ import annotations

from .. import artifacts
from ..objectives import TaskObjective
from .common import (
    StageResult,
    args_dict,
    finish,
    run_trainer,
    start_model_stage,
    task_metrics,
    trained_state,
    write_stage,
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
    state = trained_state(trainer)
    if trainer.is_world_process_zero():  # under torchrun / accelerate one process writes, the others wait
        with artifacts.atomic_folder(output_dir) as tmp:
            model.save_pretrained(tmp, state_dict=state)
            tokenizer.save_pretrained(tmp)
            description = artifacts.describe_stage(
                "finetune", task, run_args, lineage={"model": model_args.model_name_or_path}
            )
            write_stage(
                tmp,
                stage_description=description,
                trainer=trainer,
                train_metrics=train_metrics,
                eval_metrics=eval_metrics,
            )
        finish(output_dir)
    trainer.accelerator.wait_for_everyone()
    return StageResult(str(output_dir), eval_metrics)
