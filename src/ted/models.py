"""Load teachers, students and tokenizers, and check that they can work together."""

from __future__ import annotations

import logging
from typing import Optional

from transformers import (
    AutoConfig,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
)

from .errors import TedInputError
from .tasks.base import Task

logger = logging.getLogger(__name__)

_HEAD_CLASSES = {
    "classification": AutoModelForSequenceClassification,
    "regression": AutoModelForSequenceClassification,
    "span": AutoModelForQuestionAnswering,
}
_HEAD_SUFFIX = {"classification": "ForSequenceClassification", "regression": "ForSequenceClassification",
                "span": "ForQuestionAnswering"}


def load_tokenizer(name_or_path: str, cache_dir: Optional[str] = None):
    if not name_or_path:  # else AutoTokenizer asks the hub for a repo called "None" (retries, then a vague error)
        raise TedInputError("No model given: pass --model_name_or_path (a hub id or a local folder).")
    try:
        return AutoTokenizer.from_pretrained(name_or_path, cache_dir=cache_dir)
    except (OSError, ValueError) as err:
        raise TedInputError(f"Cannot load a tokenizer from {name_or_path!r}: {err}") from err


def load_config(name_or_path: str, cache_dir: Optional[str] = None):
    if not name_or_path:
        raise TedInputError("No model given: pass --model_name_or_path (a hub id or a local folder).")
    try:
        return AutoConfig.from_pretrained(name_or_path, cache_dir=cache_dir)
    except (OSError, ValueError) as err:
        raise TedInputError(f"Cannot load a model config from {name_or_path!r}: {err}") from err


def has_trained_head(config, task: Task) -> bool:
    return any(arch.endswith(_HEAD_SUFFIX[task.head]) for arch in (config.architectures or []))


def _default_label_names(config) -> bool:
    return all(name == f"LABEL_{i}" for i, name in sorted(config.id2label.items()))


def check_head_compatible(config, task: Task, name: str) -> None:
    """A fine-tuned head must have the task's size and label order; a fresh head is built to fit."""
    if task.head == "span" or not has_trained_head(config, task):
        return
    if config.num_labels != task.num_labels:
        raise TedInputError(
            f"{name} has a trained head with {config.num_labels} output(s) but task {task.name!r} needs "
            f"{task.num_labels}. Use a model fine-tuned on this task, or a pre-trained (headless) checkpoint."
        )
    if task.label_list and not _default_label_names(config):
        found = [config.id2label[i] for i in range(config.num_labels)]
        if found != list(task.label_list):
            raise TedInputError(
                f"{name} was trained with labels {found} (in id order) but task {task.name!r} has labels "
                f"{list(task.label_list)}. The label order must agree, otherwise its logits mean other classes."
            )


def config_for_task(name_or_path: str, task: Task, cache_dir: Optional[str] = None, **overrides):
    config = load_config(name_or_path, cache_dir)
    check_head_compatible(config, task, name_or_path)
    if task.head != "span":
        config.num_labels = task.num_labels
        labels = task.label_list or ["LABEL_0"]
        config.id2label = dict(enumerate(labels))
        config.label2id = {name: i for i, name in enumerate(labels)}
        config.problem_type = "regression" if task.is_regression else "single_label_classification"
    for key, value in overrides.items():
        if value is None:
            continue
        if key == "classifier_dropout" and hasattr(config, "cls_dropout"):
            config.cls_dropout = value  # DeBERTa's name for the head dropout
        setattr(config, key, value)
    return config


def load_task_model(name_or_path: str, task: Task, cache_dir: Optional[str] = None, **overrides) -> PreTrainedModel:
    """An `AutoModelFor...` with the task's head; a pre-trained checkpoint gets a fresh head."""
    config = config_for_task(name_or_path, task, cache_dir, **overrides)
    try:
        return _HEAD_CLASSES[task.head].from_pretrained(name_or_path, config=config, cache_dir=cache_dir)
    except (OSError, ValueError) as err:
        raise TedInputError(f"Cannot load model weights from {name_or_path!r}: {err}") from err


def check_same_vocabulary(teacher_tokenizer, student_tokenizer, teacher: str, student: str) -> None:
    """Teacher and student read the same token ids, so their vocabularies must be identical."""
    t_vocab, s_vocab = teacher_tokenizer.get_vocab(), student_tokenizer.get_vocab()
    if t_vocab == s_vocab:
        return
    only_t = len(set(t_vocab) - set(s_vocab))
    only_s = len(set(s_vocab) - set(t_vocab))
    moved = sum(1 for tok, i in s_vocab.items() if tok in t_vocab and t_vocab[tok] != i)
    raise TedInputError(
        f"Teacher {teacher!r} and student {student!r} use different vocabularies ({len(t_vocab)} vs "
        f"{len(s_vocab)} tokens; {only_t} only in the teacher, {only_s} only in the student, {moved} with "
        "different ids). Distillation feeds the same token ids to both models: pick a teacher and a student "
        "from the same tokenizer family."
    )


def num_layers(config) -> int:
    for attr in ("num_hidden_layers", "n_layer", "num_layers"):
        if getattr(config, attr, None):
            return int(getattr(config, attr))
    raise TedInputError(f"Cannot tell how many layers a {type(config).__name__} model has.")
