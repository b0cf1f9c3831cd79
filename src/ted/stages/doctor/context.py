"""What `ted distill` loads before training (models, data, filters, the loss weights), built for the doctor
without an output folder."""

from __future__ import annotations

from typing import Optional

from ted.errors import TedInputError
from ted.method.recipes import FILTERS, HIDDEN, METHODS, resolve_method


def build_context(model_args, data_args, filter_args, distill_args, training_args) -> dict:
    """What `ted distill` loads before training (stages/distill.py), without an output folder."""
    from transformers import set_seed

    from ted.method.objectives import DistillStudent, Teacher
    from ted.stages.common import dropout_overrides, load_training_task
    from ted.stages.distill import check_projector_width
    from ted.stages.models import (
        check_same_vocabulary,
        check_sequence_length,
        has_trained_head,
        load_task_model,
        load_tokenizer,
    )

    method = resolve_method(distill_args.method, filter_args.filter_disabled, distill_args.mse_alpha)
    student_path, teacher_path = model_args.model_name_or_path, distill_args.teacher_model_name_or_path
    if not teacher_path:
        raise TedInputError("ted doctor needs --teacher_model_name_or_path (the teacher `ted distill` would use).")
    for path in (student_path, teacher_path):
        check_sequence_length(path, data_args, model_args.cache_dir)
    layers = METHODS.get(method).layers  # what the method's layer term compares (a registered method too)
    if layers == HIDDEN:
        check_projector_width(filter_args.filter_output_dim, teacher_path, model_args.cache_dir)
    set_seed(training_args.seed)
    tokenizer = load_tokenizer(model_args.tokenizer_name or student_path, model_args.cache_dir)
    check_same_vocabulary(load_tokenizer(teacher_path, model_args.cache_dir), tokenizer, teacher_path, student_path)
    task, data = load_training_task(data_args, tokenizer, training_args)
    teacher_model = load_task_model(teacher_path, task, model_args.cache_dir)
    if not has_trained_head(teacher_model.config, task):
        raise TedInputError(f"Teacher {teacher_path!r} has no fine-tuned task head; fine-tune it first.")
    student = load_task_model(student_path, task, model_args.cache_dir, **dropout_overrides(model_args))
    t_layers, pairs, teacher_filters, student_filters = _layer_terms(
        layers, filter_args, student, teacher_model, student_path, teacher_path
    )
    return {
        "task": task,
        "data": data,
        "tokenizer": tokenizer,
        "teacher_model": teacher_model,
        "student": student,
        "teacher": Teacher(teacher_model, teacher_filters, t_layers, task.head),
        "module": DistillStudent(student, student_filters),
        "weights": distill_weights(distill_args),
        "pairs": pairs,
        "method": method,
        "layers": layers,
        "teacher_path": teacher_path,
        "student_path": student_path,
        "training_args": training_args,
    }


def _layer_terms(
    layers: Optional[str], filter_args, student, teacher_model, student_path: str, teacher_path: str
) -> tuple:
    """(teacher layers, matched pairs, teacher filters, student filters or projector) of the method."""
    from ted.method.filters import match_layers, new_filters, select_layers
    from ted.stages.distill import load_filters
    from ted.stages.models import num_layers

    s_layers = t_layers = pairs = []
    if layers is not None:
        s_layers = select_layers(num_layers(student.config), filter_args.filter_interval)
        t_layers = select_layers(num_layers(teacher_model.config), filter_args.teacher_filter_interval)
        pairs = match_layers(s_layers, t_layers)
    teacher_filters = student_filters = None
    if layers == FILTERS:
        dim, nonlinear = filter_args.filter_output_dim, filter_args.filter_nonlinear
        teacher_filters = load_filters(teacher_path, t_layers, dim, nonlinear, "teacher")
        student_filters = load_filters(student_path, s_layers, dim, nonlinear, "student")
    elif layers == HIDDEN:
        hidden = teacher_model.config.hidden_size
        student_filters = new_filters(
            student.config, s_layers, hidden, nonlinear=False, interval=filter_args.filter_interval, role="projector"
        )
    return t_layers, pairs, teacher_filters, student_filters


def distill_weights(distill_args):
    """DistillWeights from the distill options (also used by `ted distill`)."""
    from ted.method.objectives import DistillWeights

    return DistillWeights(
        distill_args.kl_alpha,
        distill_args.mse_alpha,
        distill_args.temperature,
        distill_args.paper_compat,
        balance=distill_args.balance_losses,
        kl_ratio=distill_args.balance_kl_ratio,
        mse_ratio=distill_args.balance_mse_ratio,
        every_step=distill_args.balance_every_step,
    )
