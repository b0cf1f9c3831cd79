"""What Stage II loads before it trains (tokenizer, task data, teacher and student, the method's layer pairs and
filters or projector, the loss weights), in one place shared by `ted distill` and `ted doctor`, so the doctor
checks exactly what distill would train."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

from transformers import set_seed

from ted.errors import TedInputError
from ted.method.filters import (
    TaskAwareFilters,
    check_filters_match,
    has_filters,
    match_layers,
    new_filters,
    select_layers,
)
from ted.method.objectives import DistillStudent, DistillWeights, Teacher
from ted.method.recipes import FILTERS, HIDDEN
from ted.stages.common import dropout_overrides, load_training_task
from ted.stages.gguf_files import check_gguf_option, gguf_for
from ted.stages.models import (
    check_same_vocabulary,
    check_sequence_length,
    has_trained_head,
    load_config,
    load_task_model,
    load_tokenizer,
    num_layers,
)
from ted.tasks import Task

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from ted.settings.options import DataArguments, DistillArguments, FilterArguments, ModelArguments
    from ted.tasks.base import TaskData


@dataclass
class DistillSetup:
    """Everything loaded for one Stage II run. `layers` is what the method's layer term compares (recipes)."""

    method: str
    layers: Optional[str]
    task: Task
    data: TaskData
    tokenizer: PreTrainedTokenizerBase
    teacher_model: Optional[PreTrainedModel]  # distill drops it (None) once the teacher seam is ready
    student: PreTrainedModel
    teacher: Optional[Teacher]  # likewise
    module: DistillStudent
    student_filters: Optional[TaskAwareFilters]  # TED's filters or LWD's projector
    pairs: list[tuple[int, int]]
    teacher_path: str
    student_path: str
    # Causal LMs whose LM heads are padded to different sizes: the KD term compares this many entries (the
    # tokenizer's); None when the heads have one size.
    kd_vocab: Optional[int] = None


def distill_weights(distill_args: DistillArguments) -> DistillWeights:
    """DistillWeights from the distill options: the alphas, or --balance_losses and its ratios."""
    return DistillWeights(
        distill_args.kl_alpha,
        distill_args.mse_alpha,
        distill_args.temperature,
        distill_args.paper_compat,
        balance=distill_args.balance_losses,
        kl_ratio=distill_args.balance_kl_ratio,
        mse_ratio=distill_args.balance_mse_ratio,
        every_step=distill_args.balance_every_step,
        balance_batches=distill_args.balance_batches,
    )


def check_model_paths(
    model_args: ModelArguments,
    data_args: DataArguments,
    filter_args: FilterArguments,
    distill_args: DistillArguments,
    layers: Optional[str],
) -> tuple[str, str]:
    """(student, teacher) paths, checked before anything loads: the teacher is given, both read the sequence
    length, and LWD's projector can be as wide as the teacher."""
    student_path, teacher_path = model_args.model_name_or_path, distill_args.teacher_model_name_or_path
    if not teacher_path:
        raise TedInputError("Stage II needs --teacher_model_name_or_path (the fine-tuned teacher).")
    check_gguf_option(model_args.gguf_file, (student_path, teacher_path))
    for path in (student_path, teacher_path):
        check_sequence_length(path, data_args, model_args.cache_dir, gguf_for(path, model_args.gguf_file))
    if layers == HIDDEN:
        gguf = gguf_for(teacher_path, model_args.gguf_file)
        check_projector_width(filter_args.filter_output_dim, teacher_path, model_args.cache_dir, gguf)
    return student_path, teacher_path


def check_projector_width(
    filter_output_dim: Optional[int], teacher_path: str, cache_dir: Optional[str], gguf_file: Optional[str] = None
) -> None:
    """LWD projects the student's layers onto the teacher's raw hidden states, so the projector's width is the
    teacher's hidden size (the original code forces it); a different --filter_output_dim cannot apply."""
    hidden = load_config(teacher_path, cache_dir, gguf_file).hidden_size
    if filter_output_dim is not None and filter_output_dim != hidden:
        raise TedInputError(
            f"LWD matches the teacher's raw hidden states ({hidden} wide), so --filter_output_dim "
            f"{filter_output_dim} cannot apply. Drop --filter_output_dim (or pass {hidden})."
        )


def load_setup(
    args: tuple, method: str, layers: Optional[str], check_task: Optional[Callable[[Task], None]] = None
) -> DistillSetup:
    """Load what the run trains; `args` = (model, data, filter, distill, training) arguments. `check_task` runs on
    the task before any model is loaded."""
    model_args, data_args, filter_args, distill_args, training_args = args
    student_path, teacher_path = model_args.model_name_or_path, distill_args.teacher_model_name_or_path
    set_seed(training_args.seed)
    s_gguf, t_gguf = gguf_for(student_path, model_args.gguf_file), gguf_for(teacher_path, model_args.gguf_file)
    tokenizer_path = model_args.tokenizer_name or student_path
    tokenizer = load_tokenizer(tokenizer_path, model_args.cache_dir, gguf_for(tokenizer_path, model_args.gguf_file))
    t_tokenizer = load_tokenizer(teacher_path, model_args.cache_dir, t_gguf)
    check_same_vocabulary(t_tokenizer, tokenizer, teacher_path, student_path)
    task, data = load_training_task(data_args, tokenizer, training_args)
    if check_task is not None:
        check_task(task)
    teacher_model = load_task_model(teacher_path, task, model_args.cache_dir, t_gguf, tokenizer)
    if not has_trained_head(teacher_model.config, task):
        raise TedInputError(
            f"Teacher {teacher_path!r} has no fine-tuned task head. Fine-tune it first (`ted finetune`)."
        )
    # Label order: load_task_model has checked each fine-tuned head against the task's label list.
    student = load_task_model(
        student_path, task, model_args.cache_dir, s_gguf, tokenizer, **dropout_overrides(model_args)
    )
    kd_vocab = shared_vocabulary(teacher_model, student, len(tokenizer)) if task.kind.token_labels else None
    t_layers, pairs, teacher_filters, student_filters = _layer_terms(
        layers, filter_args, student, teacher_model, student_path, teacher_path
    )
    return DistillSetup(
        method=method,
        layers=layers,
        task=task,
        data=data,
        tokenizer=tokenizer,
        teacher_model=teacher_model,
        student=student,
        teacher=Teacher(teacher_model, teacher_filters, t_layers, task.head),
        module=DistillStudent(student, student_filters),
        student_filters=student_filters,
        pairs=pairs,
        teacher_path=teacher_path,
        student_path=student_path,
        kd_vocab=kd_vocab,
    )


def shared_vocabulary(teacher: PreTrainedModel, student: PreTrainedModel, tokens: int) -> Optional[int]:
    """None when the two LM heads have one size; the tokenizer's length when both heads cover it but one is padded
    further (Qwen2.5's 151,936 vs 152,064 rows: the extra rows are no token's); an error otherwise."""
    t_rows = teacher.get_output_embeddings().out_features
    s_rows = student.get_output_embeddings().out_features
    if t_rows == s_rows:
        return None
    if min(t_rows, s_rows) < tokens:
        raise TedInputError(
            f"The teacher's LM head has {t_rows} rows and the student's {s_rows}, but their tokenizer has {tokens} "
            "tokens: a head smaller than the tokenizer cannot be compared token for token. Use a student made from "
            "the teacher (`ted init-student`) or one with the same vocabulary."
        )
    logger.info(
        "The LM heads have %d (teacher) and %d (student) rows; the KD term compares the tokenizer's %d tokens.",
        t_rows, s_rows, tokens,
    )  # fmt: skip
    return tokens


def _layer_terms(
    layers: Optional[str],
    filter_args: FilterArguments,
    student: PreTrainedModel,
    teacher_model: PreTrainedModel,
    student_path: str,
    teacher_path: str,
) -> tuple[list[int], list[tuple[int, int]], Optional[TaskAwareFilters], Optional[TaskAwareFilters]]:
    """(teacher layers, matched pairs, teacher filters, student filters or projector) of the method."""
    s_layers = t_layers = pairs = []
    if layers is not None:  # KD pairs no layers, so the interval flags do not apply
        s_layers = select_layers(num_layers(student.config), filter_args.filter_interval)
        t_layers = select_layers(num_layers(teacher_model.config), filter_args.teacher_filter_interval)
        pairs = match_layers(s_layers, t_layers)
    teacher_filters = student_filters = None
    if layers == FILTERS:
        dim, nonlinear = filter_args.filter_output_dim, filter_args.filter_nonlinear
        teacher_filters = load_filters(teacher_path, t_layers, dim, nonlinear, "teacher")
        student_filters = load_filters(student_path, s_layers, dim, nonlinear, "student")
        if teacher_filters.config.output_dim != student_filters.config.output_dim:
            raise TedInputError(
                f"Teacher filters output {teacher_filters.config.output_dim} features but student filters output "
                f"{student_filters.config.output_dim}; run Stage I with the same --filter_output_dim for both."
            )
    elif layers == HIDDEN:
        # LWD: raw teacher layers as targets, a fresh student-side projector to the teacher's width.
        hidden = teacher_model.config.hidden_size
        student_filters = new_filters(
            student.config, s_layers, hidden, nonlinear=False, interval=filter_args.filter_interval, role="projector"
        )
    return t_layers, pairs, teacher_filters, student_filters


def load_filters(
    path: str, layers: list[int], output_dim: Optional[int], nonlinear: bool, who: str
) -> TaskAwareFilters:
    if not has_filters(path):
        raise TedInputError(
            f"TED needs the {who}'s Stage I filters, but {path!r} holds none. Run `ted learn-filters` on it first "
            "(or use --filter_disabled for the KD/LWD baselines)."
        )
    filters = TaskAwareFilters.load(path)
    check_filters_match(filters, layers, output_dim, nonlinear, path)
    return filters
