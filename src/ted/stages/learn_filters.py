"""Stage I: learn task-aware filters (and one head per filter) on a frozen fine-tuned model."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import torch
from transformers import default_data_collator

from ted import artifacts
from ted.artifacts import StageResult
from ted.method.feature_cache import cache_autocast_dtype, cache_bytes, cache_fits, pooled_token_features
from ted.method.filters import new_filters, select_layers
from ted.method.heads import new_heads
from ted.method.lens import LENS, NextTokenFilterLearner, NextTokenFilterObjective, new_next_token_heads
from ted.method.objectives import CachedFilterLearner, FilterLearner, FilterObjective
from ted.stages.common import args_dict, start_model_stage
from ted.stages.models import has_trained_head, num_layers
from ted.stages.saving import save_stage, sub_state
from ted.stages.scoring import per_filter_metrics
from ted.stages.training import StageTraining, run_trainer
from ted.tasks.base import TaskData

if TYPE_CHECKING:
    import datasets
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from ted.method.feature_cache import CachedFeatures
    from ted.method.filters import TaskAwareFilters
    from ted.settings.options import DataArguments, FilterArguments, ModelArguments
    from ted.settings.training_args import TedTrainingArguments

logger = logging.getLogger(__name__)

# Tokens of the first training row on which a causal LM's lens heads are checked against its own logits.
LENS_CHECK_TOKENS = 16


def layer_scores(eval_metrics: dict, layers: list[int]) -> dict[str, dict[str, float]]:
    """{layer: {metric: value}} from the flat `eval_layer{i}_{metric}` keys."""
    scores: dict[str, dict[str, float]] = {}
    for layer in layers:
        prefix = f"eval_layer{layer}_"
        scores[str(layer)] = {k[len(prefix) :]: v for k, v in eval_metrics.items() if k.startswith(prefix)}
        if "perplexity" in scores[str(layer)]:  # a causal LM's head: its dev loss (mean next-token NLL) too
            scores[str(layer)]["loss"] = math.log(scores[str(layer)]["perplexity"])
    return scores


def without_checkpointing(training_args: TedTrainingArguments) -> TedTrainingArguments:
    """Stage I ignores --gradient_checkpointing: the frozen backbone runs without gradients, so it keeps no
    activations to recompute (and the Stage I module has no layers of its own to checkpoint)."""
    # transformers >= 5.10 names it activation_checkpointing (gradient_checkpointing is its alias).
    names = [n for n in ("activation_checkpointing", "gradient_checkpointing") if getattr(training_args, n, None)]
    if not names:
        return training_args
    logger.warning(
        "--gradient_checkpointing has no effect on Stage I (the backbone runs without gradients); ignoring it."
    )
    return dataclasses.replace(training_args, **{n: False for n in names})


def cache_dtype(training_args: TedTrainingArguments) -> Optional[torch.dtype]:
    return cache_autocast_dtype(training_args.device, training_args.bf16, training_args.fp16)


def cached_data(
    model: PreTrainedModel,
    data: TaskData,
    layers: list[int],
    tokenizer: PreTrainedTokenizerBase,
    training_args: TedTrainingArguments,
) -> TaskData:
    """Token 0 of every selected layer for the train and dev rows, from one pass of the frozen backbone."""
    device = training_args.device
    dtype = cache_dtype(training_args)
    batch_size = max(training_args.per_device_eval_batch_size, 1)
    model.to(device)

    def cache(dataset: datasets.Dataset) -> CachedFeatures:
        return pooled_token_features(model, dataset, layers, tokenizer, device, batch_size, dtype)

    cached = TaskData(train=cache(data.train), eval_sets={name: cache(ds) for name, ds in data.eval_sets.items()})
    model.to("cpu")  # the backbone is not needed again until it is saved
    return cached


def cache_affordable(
    model: PreTrainedModel, data: TaskData, layers: list[int], training_args: TedTrainingArguments
) -> bool:
    rows = len(data.train) + sum(len(ds) for ds in data.eval_sets.values())
    dtype = cache_dtype(training_args)
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    fits, why = cache_fits(cache_bytes(rows, len(layers), model.config.hidden_size, dtype), local_processes)
    if not fits:
        logger.warning(
            "Not caching Stage I features: %s (more than half). The eval-mode backbone runs on every "
            "batch instead: same results, slower.",
            why,
        )
    return fits


def next_token_learner(
    model: PreTrainedModel, filters: TaskAwareFilters, data: TaskData, filter_args: FilterArguments
) -> tuple[NextTokenFilterLearner, NextTokenFilterObjective]:
    """A causal LM's Stage I: every token is a prediction, so there is nothing per example to cache and the
    backbone runs on every batch; the lens heads are checked against the model's logits on the first train row."""
    sample = torch.tensor([data.train[0]["input_ids"][:LENS_CHECK_TOKENS]])
    heads = new_next_token_heads(model, filters.layers, filters.config.output_dim, filter_args.stage1_lm_head, sample)
    if heads.config.mode == LENS and not filters.config.nonlinear:
        filters.start_as_identity()  # from the logit lens: the last layer's filter then gives the model's logits
    learner = NextTokenFilterLearner(model, filters, heads, backbone_mode=filter_args.stage1_backbone_mode)
    return learner, NextTokenFilterObjective()


def run_learn_filters(
    model_args: ModelArguments,
    data_args: DataArguments,
    filter_args: FilterArguments,
    training_args: TedTrainingArguments,
) -> StageResult:
    run_args = args_dict(model_args, data_args, filter_args, training_args)
    output_dir, tokenizer, task, data, model = start_model_stage(model_args, data_args, training_args, run_args)
    training_args = without_checkpointing(training_args)
    if not has_trained_head(model.config, task):
        logger.warning(
            "%s has no fine-tuned task head; Stage I expects a model fine-tuned on the task.",
            model_args.model_name_or_path,
        )
    layers = select_layers(num_layers(model.config), filter_args.filter_interval)
    filters = new_filters(
        model.config,
        layers,
        filter_args.filter_output_dim,
        filter_args.filter_nonlinear,
        interval=filter_args.filter_interval,
    )
    # Every trainable parameter (filters, heads) feeds the loss: DDP need not search for unused ones.
    if training_args.ddp_find_unused_parameters is None:
        training_args = dataclasses.replace(training_args, ddp_find_unused_parameters=False)
    collator, use_cache = None, False
    if task.kind.token_labels:
        learner, objective = next_token_learner(model, filters, data, filter_args)
    else:
        heads = new_heads(task.head, len(layers), filters.config.output_dim, task.num_labels, model.config)
        objective = FilterObjective(task.head)
        use_cache = (
            filter_args.stage1_backbone_mode == "eval"
            and task.kind.sequence_level  # span heads read every token: nothing to cache per example
            and cache_affordable(model, data, layers, training_args)
        )
        if use_cache:
            # Eval-mode backbone + heads reading one token: compute that token of each selected layer once and train the
            # filters and heads on it (ted.method.feature_cache); same logits as the uncached eval-mode learner.
            logger.info("Stage I with cached features: one backbone pass over %d train rows", len(data.train))
            data = cached_data(model, data, layers, tokenizer, training_args)
            learner = CachedFilterLearner(filters, heads)
            collator = default_data_collator
            if training_args.train_sampling_strategy == "group_by_length":  # cached rows have no length
                training_args = dataclasses.replace(training_args, train_sampling_strategy="random")
        else:
            # The paper: the frozen backbone runs on every batch (train mode: with dropout). Span heads read every
            # token, so SQuAD always takes this path; so does an eval-mode run whose cache would not fit in memory.
            learner = FilterLearner(model, filters, heads, backbone_mode=filter_args.stage1_backbone_mode)
    # The paper keeps the last epoch (no selection); every epoch still scores each filter head on dev.
    trained = run_trainer(
        StageTraining(output_dir, run_args, training_args, tokenizer, task, data),
        module=learner,
        objective=objective,
        compute_metrics=per_filter_metrics(task, layers, data, data_args),
        selection_metric=None,
        data_collator=collator,
    )
    scores = layer_scores(trained.eval_metrics, layers)
    description = artifacts.describe_stage(
        "learn_filters", task, run_args, lineage={"model": model_args.model_name_or_path}
    )
    description["stage1_feature_cache"] = use_cache  # eval-mode runs can fall back (memory)
    if use_cache:
        description["stage1_feature_cache_dtype"] = str(cache_dtype(training_args) or torch.float32)[6:]

    def extras(folder: Path, state: dict) -> None:  # backbone.* (uncached learner only; frozen), filters.*, heads.*
        filters.save(folder, sub_state(state, "filters"))
        learner.heads.save(folder, sub_state(state, "heads"))
        artifacts.write_json(folder / artifacts.STAGE1_SCORES, scores)

    save_stage(trained, model=model, description=description, model_prefix="backbone", extras=extras)
    return StageResult(str(output_dir), trained.eval_metrics, {"layer_scores": scores})
