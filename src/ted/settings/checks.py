"""The checks of option values that need neither the model nor the data: one clear message per bad value,
before any model is loaded (and, for ted's own options, before torch is imported)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

from ted.errors import TedInputError
from ted.method.recipes import import_plugins, resolve_method

TRAINING_COMMANDS = ("finetune", "learn-filters", "distill")
SQUAD_TASKS = ("squad", "squad_v2")

# The shortest input window that can hold anything: up to 4 special tokens (a RoBERTa sentence pair is
# `<s> A </s></s> B </s>`) plus at least 4 tokens of text.
MIN_SEQ_LENGTH = 8
# Defaults the tasks use when --max_seq_length is not given (tasks/glue.py, custom.py, squad.py).
DEFAULT_SEQ_LENGTH, DEFAULT_SQUAD_SEQ_LENGTH = 128, 384


# Why a value must be positive / non-negative, added to the message.
HINTS = {
    "max_train_samples": "leave it out to use every example",
    "max_eval_samples": "leave it out to use every example",
    "kl_alpha": "it weights the KL term; 0 turns the term off",
    "mse_alpha": "it weights the layer MSE term; 0 turns the term off (KD)",
    "learning_rate": "",
    "filter_interval": "1 puts a filter on every layer, 2 on every second one",
    "teacher_filter_interval": "1 puts a filter on every layer, 2 on every second one",
    "filter_output_dim": "leave it out to use the model's hidden size",
    "balance_kl_ratio": "1 makes the weighted KL term equal to the task loss at step 0",
    "balance_mse_ratio": "1 makes the weighted layer term equal to the task loss at step 0",
}
AT_LEAST_ONE = {
    "all": (
        "per_device_eval_batch_size",
        "max_eval_samples",
        "filter_interval",
        "teacher_filter_interval",
        "filter_output_dim",
        "doc_stride",
        "n_best_size",
        "max_answer_length",
        "doctor_eval_samples",
        "doctor_batches",
    ),
    "train": ("per_device_train_batch_size", "gradient_accumulation_steps", "max_train_samples"),
}
NOT_NEGATIVE = ("kl_alpha", "mse_alpha", "learning_rate")
PROBABILITIES = ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout")
# Options that take one of a few words.
CHOICES = {"stage1_backbone_mode": ("eval", "train"), "stage1_lm_head": ("lens", "fresh")}


def _fail(name: str, rule: str, value: Any) -> None:
    hint = HINTS.get(name)
    raise TedInputError(f"--{name} must be {rule}, got {value}" + (f" ({hint})." if hint else "."))


def validate(command: str, groups: Iterable) -> None:
    """`check_values` on a stage's argument groups."""
    values: dict[str, Any] = {}
    for group in groups:
        values.update(vars(group))
    check_values(command, values)


def check_values(command: str, values: Mapping[str, Any]) -> None:
    """Every check of option values that needs neither the model nor the data: one message each."""
    at_least_one = AT_LEAST_ONE["all"] + (AT_LEAST_ONE["train"] if command in TRAINING_COMMANDS else ())
    for name in at_least_one:
        if values.get(name) is not None and values[name] < 1:
            _fail(name, "at least 1", values[name])
    for name in NOT_NEGATIVE:
        if values.get(name) is not None and values[name] < 0:
            _fail(name, "0 or more", values[name])
    for name in PROBABILITIES:
        if values.get(name) is not None and not 0 <= values[name] < 1:
            _fail(name, "a probability in [0, 1)", values[name])
    for name, allowed in CHOICES.items():
        if values.get(name) is not None and values[name] not in allowed:
            _fail(name, " or ".join(allowed), repr(values[name]))
    if values.get("temperature") is not None and values["temperature"] <= 0:
        _fail("temperature", "positive (the paper uses 2)", values["temperature"])
    _check_balance(values)
    # max_steps is a Trainer option, so precheck cannot see it: this rule waits for the full parse.
    epochs, steps = values.get("num_train_epochs"), values.get("max_steps")
    if command in TRAINING_COMMANDS and epochs is not None and steps is not None and epochs <= 0 and steps <= 0:
        raise TedInputError(
            f"--num_train_epochs is {values['num_train_epochs']}, so nothing would be trained: give "
            "a positive --num_train_epochs (or a positive --max_steps)."
        )
    _check_seq_length(command, values)
    _check_label_list(values.get("label_list"))
    if "method" in values:  # distill, and the commands that take its options (doctor)
        _check_distill(values)
    _check_teacher_cache(values)


def _check_distill(values: Mapping[str, Any]) -> None:
    """--plugins import (they may register methods), then --method must agree with the paper's flags."""
    import_plugins(values.get("plugins"))
    if "mse_alpha" in values:
        resolve_method(values.get("method"), bool(values.get("filter_disabled")), values["mse_alpha"])


def _check_balance(values: Mapping[str, Any]) -> None:
    """--balance_losses ratios, and a balance with nothing to balance."""
    for name in ("balance_kl_ratio", "balance_mse_ratio", "balance_batches"):
        if values.get(name) is not None and not values[name] > 0:
            _fail(name, "positive", values[name])
    if values.get("balance_losses") and not (values.get("kl_alpha") or values.get("mse_alpha")):
        raise TedInputError(
            "--balance_losses scales the distillation terms that are on, but --kl_alpha and --mse_alpha are both 0. "
            "Give a positive --kl_alpha and/or --mse_alpha (their values are then replaced), or drop --balance_losses."
        )


TEACHER_CACHE_DTYPES = ("auto", "float32", "float16", "bfloat16")  # ted.method.teacher_cache stores these


def _check_teacher_cache(values: Mapping[str, Any]) -> None:
    """--teacher_cache auto|off|DIR and its settings (docs/teacher-cache.md)."""
    option, dtype = values.get("teacher_cache"), values.get("teacher_cache_dtype")
    if option is not None and not str(option).strip():
        _fail("teacher_cache", "auto, off or a folder", option)
    if dtype is not None and dtype not in TEACHER_CACHE_DTYPES:
        _fail("teacher_cache_dtype", "one of " + ", ".join(TEACHER_CACHE_DTYPES), dtype)
    if values.get("teacher_cache_max_gb") is not None and not values["teacher_cache_max_gb"] > 0:
        _fail("teacher_cache_max_gb", "a positive number of GB", values["teacher_cache_max_gb"])
    topk = values.get("teacher_cache_topk")
    if topk is not None and (isinstance(topk, bool) or not isinstance(topk, int) or topk < 1):
        _fail("teacher_cache_topk", "a positive whole number of tokens", topk)
    if option in (None, "auto", "off"):
        return
    folder = Path(str(option)).expanduser()
    if folder.exists() and not folder.is_dir():
        raise TedInputError(f"--teacher_cache {option} is a file; pass a folder (or auto / off).")
    out = values.get("output_dir")
    if out and (folder.resolve() == Path(out).resolve() or Path(out).resolve() in folder.resolve().parents):
        raise TedInputError(
            f"--teacher_cache {option} is inside --output_dir {out}, which is replaced when the stage is written; "
            "pass a folder outside it."
        )


def _check_seq_length(command: str, values: Mapping[str, Any]) -> None:
    squad = str(values.get("task_name") or "").strip().lower() in SQUAD_TASKS
    given = values.get("max_seq_length")
    if given is not None and given < MIN_SEQ_LENGTH:
        raise TedInputError(
            f"--max_seq_length {given} cannot hold an input: it needs room for up to 4 special "
            f"tokens and some text; use at least {MIN_SEQ_LENGTH} (default "
            f"{DEFAULT_SQUAD_SEQ_LENGTH if squad else DEFAULT_SEQ_LENGTH})."
        )
    # `ted evaluate` without --max_seq_length takes the window of the stage it scores (not known here).
    if squad and values.get("doc_stride") is not None and (given or command != "evaluate"):
        length = given or DEFAULT_SQUAD_SEQ_LENGTH
        if values["doc_stride"] > length - MIN_SEQ_LENGTH:
            raise TedInputError(
                f"--doc_stride {values['doc_stride']} leaves no room in a --max_seq_length {length} window: a "
                f"window holds special tokens, the question and context that overlaps the previous window by "
                f"doc_stride tokens, so doc_stride must be at most max_seq_length - {MIN_SEQ_LENGTH} (the paper: "
                f"384 and 128)."
            )


def _check_label_list(labels: Optional[Sequence[str]]) -> None:
    if not labels:
        return
    seen = set()
    for label in labels:
        if label in seen:
            raise TedInputError(f"--label_list names {label!r} twice; give each label once, in id order.")
        seen.add(label)
