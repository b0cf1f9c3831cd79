"""Stage II: TED, and the KD and LWD baselines, with one objective."""

from __future__ import annotations

import dataclasses
import json
import logging
import warnings
from pathlib import Path
from typing import Optional

from transformers import set_seed

from ted import artifacts
from ted.artifacts import StageResult
from ted.errors import TedInputError
from ted.method import teacher_cache
from ted.method.divergences import DIVERGENCES, LAYER_LOSSES
from ted.method.filters import (
    TaskAwareFilters,
    check_filters_match,
    has_filters,
    match_layers,
    new_filters,
    select_layers,
)
from ted.method.kinds import get_kind
from ted.method.objectives import DistillObjective, DistillStudent, DistillWeights, Teacher
from ted.method.recipes import FILTERS, HIDDEN, METHODS, resolve_method
from ted.stages.common import args_dict, dropout_overrides, load_training_task, make_collator, open_output
from ted.stages.doctor import distill_weights, preflight
from ted.stages.models import (
    check_same_vocabulary,
    check_sequence_length,
    has_trained_head,
    load_config,
    load_task_model,
    load_tokenizer,
    num_layers,
)
from ted.stages.saving import save_stage, sub_state
from ted.stages.scoring import task_metrics
from ted.stages.training import StageTraining, run_trainer

logger = logging.getLogger(__name__)


def warn_no_ops(method: str, head: str, weights: DistillWeights, batch_size: int) -> None:
    if weights.kl_alpha == 0 and weights.mse_alpha == 0:
        warnings.warn(
            "kl_alpha and mse_alpha are both 0: this run is plain fine-tuning of the student, no distillation.",
            stacklevel=2,
        )
    if weights.kl_alpha and get_kind(head).scores and weights.paper_compat:
        warnings.warn(
            "--paper_compat regression KL is a softmax across the examples of each batch (the original "
            "code's behaviour): it depends on batch composition.",
            stacklevel=2,
        )
        if batch_size < 2:
            warnings.warn("With batch size 1 the paper-compatible regression KL is identically 0.", stacklevel=2)


def check_deepspeed_stage(deepspeed) -> None:
    """DeepSpeed ZeRO-3 partitions every model loaded while it is active, the teacher included, and the teacher
    runs outside DeepSpeed's engine, so its weights would never be gathered: refuse it up front."""
    if not deepspeed:
        return
    config = deepspeed
    if not isinstance(config, dict):
        try:  # a path, or the config itself as JSON (a dict in a YAML config arrives that way)
            text = deepspeed if deepspeed.lstrip().startswith("{") else Path(deepspeed).read_text()
            config = json.loads(text)
        except (OSError, ValueError) as err:
            raise TedInputError(f"Cannot read the DeepSpeed config {deepspeed}: {err}") from None
    if int((config.get("zero_optimization") or {}).get("stage", 0) or 0) == 3:
        raise TedInputError(
            "Stage II does not support DeepSpeed ZeRO-3: the teacher would be partitioned and never "
            "gathered. Use ZeRO-2 (configs/deepspeed/zero2.json) or FSDP "
            "(configs/accelerate/fsdp.yaml) for Stage II."
        )


def check_projector_width(filter_output_dim: Optional[int], teacher_path: str, cache_dir: Optional[str]) -> None:
    """LWD projects the student's layers onto the teacher's raw hidden states, so the projector's width is the
    teacher's hidden size (the original code forces it); a different --filter_output_dim cannot apply."""
    hidden = load_config(teacher_path, cache_dir).hidden_size
    if filter_output_dim is not None and filter_output_dim != hidden:
        raise TedInputError(
            f"LWD matches the teacher's raw hidden states ({hidden} wide), so --filter_output_dim "
            f"{filter_output_dim} cannot apply. Drop --filter_output_dim (or pass {hidden})."
        )


def load_filters(path: str, layers: list[int], output_dim: Optional[int], nonlinear: bool, who: str):
    if not has_filters(path):
        raise TedInputError(
            f"TED needs the {who}'s Stage I filters, but {path!r} holds none. Run `ted learn-filters` on it first "
            "(or use --filter_disabled for the KD/LWD baselines)."
        )
    filters = TaskAwareFilters.load(path)
    check_filters_match(filters, layers, output_dim, nonlinear, path)
    return filters


def run_distill(model_args, data_args, filter_args, distill_args, training_args) -> StageResult:
    method = resolve_method(distill_args.method, filter_args.filter_disabled, distill_args.mse_alpha)
    recipe = METHODS.get(method)
    run_args = args_dict(model_args, data_args, filter_args, distill_args, training_args)
    run_args["method"] = method
    # The method's own divergence and layer loss unless the flags name others; a bad spec fails here.
    loss_specs = {
        "kd_loss": distill_args.kd_loss or recipe.kd_loss,
        "layer_loss": distill_args.layer_loss or recipe.layer_loss,
    }
    DIVERGENCES.resolve(loss_specs["kd_loss"])
    LAYER_LOSSES.resolve(loss_specs["layer_loss"])
    run_args.update(loss_specs)
    student_path, teacher_path = model_args.model_name_or_path, distill_args.teacher_model_name_or_path
    if not teacher_path:
        raise TedInputError("Stage II needs --teacher_model_name_or_path.")
    check_deepspeed_stage(training_args.deepspeed)
    for path in (student_path, teacher_path):
        check_sequence_length(path, data_args, model_args.cache_dir)
    if recipe.layers == HIDDEN:
        check_projector_width(filter_args.filter_output_dim, teacher_path, model_args.cache_dir)
    output_dir = open_output(training_args, run_args)
    weights = dataclasses.replace(distill_weights(distill_args), **loss_specs)  # the alphas, or --balance_losses
    set_seed(training_args.seed)
    tokenizer = load_tokenizer(model_args.tokenizer_name or student_path, model_args.cache_dir)
    check_same_vocabulary(load_tokenizer(teacher_path, model_args.cache_dir), tokenizer, teacher_path, student_path)
    task, data = load_training_task(data_args, tokenizer, training_args)
    if task.kind.scores and distill_args.kd_loss and distill_args.kl_alpha:
        raise TedInputError(
            f"--kd_loss {distill_args.kd_loss} compares class distributions, but {task.name!r} is a regression task "
            "(its KD term is the MSE between predictions, or the paper's KL with --paper_compat); remove --kd_loss."
        )
    warn_no_ops(method, task.head, weights, training_args.per_device_train_batch_size)
    teacher_cache.check_before_loading(
        distill_args.teacher_cache, task.head, distill_args.paper_compat, distill_args.kl_alpha, distill_args.mse_alpha
    )
    teacher_model = load_task_model(teacher_path, task, model_args.cache_dir)
    if not has_trained_head(teacher_model.config, task):
        raise TedInputError(
            f"Teacher {teacher_path!r} has no fine-tuned task head. Fine-tune it first (`ted finetune`)."
        )
    student = load_task_model(student_path, task, model_args.cache_dir, **dropout_overrides(model_args))
    # Label order: load_task_model has checked each fine-tuned head against the task's label list.

    s_layers = t_layers = pairs = []
    if recipe.layers is not None:  # KD pairs no layers, so the interval flags do not apply
        s_layers = select_layers(num_layers(student.config), filter_args.filter_interval)
        t_layers = select_layers(num_layers(teacher_model.config), filter_args.teacher_filter_interval)
        pairs = match_layers(s_layers, t_layers)
    teacher_filters = student_filters = None
    if recipe.layers == FILTERS:
        teacher_filters = load_filters(
            teacher_path, t_layers, filter_args.filter_output_dim, filter_args.filter_nonlinear, "teacher"
        )
        student_filters = load_filters(
            student_path, s_layers, filter_args.filter_output_dim, filter_args.filter_nonlinear, "student"
        )
        if teacher_filters.config.output_dim != student_filters.config.output_dim:
            raise TedInputError(
                f"Teacher filters output {teacher_filters.config.output_dim} features but student filters output "
                f"{student_filters.config.output_dim}; run Stage I with the same --filter_output_dim for both."
            )
    elif recipe.layers == HIDDEN:
        # LWD: raw teacher layers as targets, a fresh student-side projector to the teacher's width.
        student_filters = new_filters(
            student.config,
            s_layers,
            teacher_model.config.hidden_size,
            nonlinear=False,
            interval=filter_args.filter_interval,
            role="projector",
        )
    teacher = Teacher(teacher_model, teacher_filters, t_layers, task.head)
    module = DistillStudent(student, student_filters)
    # ted doctor's cheap checks (128 dev examples, 2 batches): warnings printed before training, never a stop.
    run = dict(
        task=task, data=data, tokenizer=tokenizer, weights=weights, pairs=pairs, method=method, layers=recipe.layers
    )
    models = dict(teacher_model=teacher_model, student=student, teacher=teacher, module=module)
    where = dict(teacher_path=teacher_path, student_path=student_path, training_args=training_args)
    checked = preflight({**run, **models, **where})
    cache = teacher_cache.prepare(
        distill_args=distill_args,
        training_args=training_args,
        teacher=teacher,
        head=task.head,
        train=data.train,
        tokenizer=tokenizer,
        collator=make_collator(tokenizer, training_args),
        output_dir=output_dir,
    )
    teacher = cache.teacher
    teacher_model = teacher_filters = None  # with a cache nothing holds the teacher's weights from here on
    cached = dataclasses.replace(data, train=cache.train)
    trained = run_trainer(
        StageTraining(output_dir, run_args, training_args, tokenizer, task, cached),
        module=module,
        objective=DistillObjective(task.head, teacher, weights),
        data_collator=cache.collator,
        compute_metrics=task_metrics(task, data, data_args),
        selection_metric=task.selection_metric,
        teacher=teacher,
    )
    trainer = trained.trainer
    lineage = {"student": student_path, "teacher": teacher_path, "layer_pairs": [list(p) for p in pairs]}
    description = artifacts.describe_stage("distill", task, run_args, lineage, method=method)
    description["teacher_cache"] = cache.record
    if distill_args.paper_compat:  # explicit flags that won over the paper's settings (config.py)
        description["paper_compat_overrides"] = getattr(distill_args, "paper_compat_overrides", {})
    description["preflight_warnings"] = checked.warnings
    description["training_guard"] = trainer.guard_report  # None: it never fired
    description["loss_balance"] = trainer.objective.balance_record()

    def extras(folder: Path, state: dict) -> None:  # DistillStudent keys: model.*, filters.*
        if student_filters is not None:
            student_filters.save(folder, sub_state(state, "filters"))

    save_stage(trained, model=student, description=description, model_prefix="model", extras=extras)
    if trainer.is_world_process_zero():
        teacher_cache.remove_root(cache.cleanup)
    return StageResult(str(output_dir), trained.eval_metrics, {"method": method, "layer_pairs": pairs})
