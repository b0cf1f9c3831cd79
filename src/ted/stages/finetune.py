"""Stage 0: plain fine-tuning of a teacher or a student; keeps the best epoch on dev."""

from __future__ import annotations

from transformers import set_seed

from .. import artifacts
from ..models import load_task_model, load_tokenizer
from ..objectives import TaskObjective
from ..tasks import load_task
from .common import StageResult, args_dict, finish, run_trainer, task_metrics, trained_state, write_stage


def dropout_overrides(model_args) -> dict:
    return {
        "hidden_dropout_prob": model_args.hidden_dropout_prob,
        "attention_probs_dropout_prob": model_args.attention_probs_dropout_prob,
        "classifier_dropout": model_args.classifier_dropout,
    }


def run_finetune(model_args, data_args, training_args) -> StageResult:
    output_dir = artifacts.check_output_dir(training_args.output_dir, training_args.overwrite_output_dir,
                                            training_args.output_dir_given)
    set_seed(training_args.seed)
    tokenizer = load_tokenizer(model_args.tokenizer_name or model_args.model_name_or_path, model_args.cache_dir)
    task, data = load_task(data_args, tokenizer)
    model = load_task_model(model_args.model_name_or_path, task, model_args.cache_dir, **dropout_overrides(model_args))
    run_args = args_dict(model_args, data_args, training_args)
    trainer, train_metrics, eval_metrics = run_trainer(
        module=model, objective=TaskObjective(task.head), tokenizer=tokenizer, task=task, data=data,
        training_args=training_args, output_dir=output_dir, run_args=run_args,
        compute_metrics=task_metrics(task, data, data_args), selection_metric=task.selection_metric,
    )
    state = trained_state(trainer)
    if trainer.is_world_process_zero():  # under torchrun / accelerate one process writes, the others wait
        with artifacts.atomic_folder(output_dir) as tmp:
            model.save_pretrained(tmp, state_dict=state)
            tokenizer.save_pretrained(tmp)
            description = artifacts.describe_stage(
                "finetune", task, run_args, lineage={"model": model_args.model_name_or_path}
            )
            write_stage(tmp, stage_description=description, trainer=trainer, train_metrics=train_metrics,
                        eval_metrics=eval_metrics)
        finish(output_dir)
    trainer.accelerator.wait_for_everyone()
    return StageResult(str(output_dir), eval_metrics)
