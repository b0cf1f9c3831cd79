"""Stage I: learn task-aware filters (and one head per filter) on a frozen fine-tuned model."""

from __future__ import annotations

import logging

from transformers import set_seed

from .. import artifacts
from ..filters import new_filters, select_layers
from ..heads import new_heads
from ..models import has_trained_head, load_task_model, load_tokenizer, num_layers
from ..objectives import FilterLearner, FilterObjective
from ..tasks import load_task
from .common import StageResult, args_dict, finish, per_filter_metrics, run_trainer, write_stage
from .finetune import dropout_overrides

logger = logging.getLogger(__name__)


def layer_scores(eval_metrics: dict, layers: list[int]) -> dict[str, dict[str, float]]:
    """{layer: {metric: value}} from the flat `eval_layer{i}_{metric}` keys."""
    scores: dict[str, dict[str, float]] = {}
    for layer in layers:
        prefix = f"eval_layer{layer}_"
        scores[str(layer)] = {k[len(prefix):]: v for k, v in eval_metrics.items() if k.startswith(prefix)}
    return scores


def run_learn_filters(model_args, data_args, filter_args, training_args) -> StageResult:
    output_dir = artifacts.check_output_dir(training_args.output_dir, training_args.overwrite_output_dir,
                                            training_args.output_dir_given)
    set_seed(training_args.seed)
    tokenizer = load_tokenizer(model_args.tokenizer_name or model_args.model_name_or_path, model_args.cache_dir)
    task, data = load_task(data_args, tokenizer)
    model = load_task_model(model_args.model_name_or_path, task, model_args.cache_dir, **dropout_overrides(model_args))
    if not has_trained_head(model.config, task):
        logger.warning("%s has no fine-tuned task head; Stage I expects a model fine-tuned on the task.",
                       model_args.model_name_or_path)
    layers = select_layers(num_layers(model.config), filter_args.filter_interval)
    filters = new_filters(model.config, layers, filter_args.filter_output_dim, filter_args.filter_nonlinear,
                          interval=filter_args.filter_interval)
    heads = new_heads(task.head, len(layers), filters.config.output_dim, task.num_labels, model.config)
    learner = FilterLearner(model, filters, heads, backbone_mode=filter_args.stage1_backbone_mode)
    run_args = args_dict(model_args, data_args, filter_args, training_args)
    # The paper keeps the last epoch (no selection); every epoch still scores each filter head on dev.
    trainer, train_metrics, eval_metrics = run_trainer(
        module=learner, objective=FilterObjective(task.head), tokenizer=tokenizer, task=task, data=data,
        training_args=training_args, output_dir=output_dir, run_args=run_args,
        compute_metrics=per_filter_metrics(task, layers, data, data_args), selection_metric=None,
    )
    scores = layer_scores(eval_metrics, layers)
    with artifacts.atomic_folder(output_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        filters.save(tmp)
        heads.save(tmp)
        artifacts.write_json(tmp / artifacts.STAGE1_SCORES, scores)
        description = artifacts.describe_stage(
            "learn_filters", task, run_args, lineage={"model": model_args.model_name_or_path}
        )
        write_stage(tmp, stage_description=description, trainer=trainer, train_metrics=train_metrics,
                    eval_metrics=eval_metrics)
    finish(output_dir)
    return StageResult(str(output_dir), eval_metrics, {"layer_scores": scores})
