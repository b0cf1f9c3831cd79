"""The start every stage shares: its arguments, the checked output folder, the task data, the model and collator."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Protocol, Union

from transformers import DataCollatorWithPadding, set_seed

from ted.errors import TedInputError
from ted.stages.fingerprint import DATA_PATH_ARGS, MODEL_PATH_ARGS, fingerprint
from ted.stages.gguf_files import gguf_for
from ted.stages.models import check_sequence_length, load_task_model, load_tokenizer
from ted.stages.output import check_output_dir
from ted.stages.resume import check_resumable
from ted.tasks import load_task

if TYPE_CHECKING:
    import datasets
    import torch.utils.data
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from ted.method.kinds import HeadKind
    from ted.settings.options import DataArguments, ModelArguments
    from ted.settings.training_args import TedTrainingArguments
    from ted.tasks.base import Task, TaskData

    # Rows a stage trains or scores on: tokenized rows, or a torch Dataset the stage built (cached Stage I features).
    Rows = Union[datasets.Dataset, torch.utils.data.Dataset]
    Collator = Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]]

MODEL_INPUTS = (
    "input_ids",
    "attention_mask",
    "token_type_ids",
    "labels",
    "start_positions",
    "end_positions",
    "feature_index",
    "ted_example_index",  # teacher_cache.EXAMPLE_INDEX: which cached teacher rows a training row reads
)


def model_columns(dataset: Rows) -> Rows:
    """Only model inputs and labels reach the Trainer (hub GLUE carries an `idx` column, SQuAD offsets)."""
    if not hasattr(dataset, "column_names"):  # a torch Dataset built by the stage (cached Stage I features)
        return dataset
    drop = [c for c in dataset.column_names if c not in MODEL_INPUTS]
    return dataset.remove_columns(drop) if drop else dataset


def dropout_overrides(model_args: ModelArguments) -> dict[str, Optional[float]]:
    return {
        "hidden_dropout_prob": model_args.hidden_dropout_prob,
        "attention_probs_dropout_prob": model_args.attention_probs_dropout_prob,
        "classifier_dropout": model_args.classifier_dropout,
    }


def load_training_task(
    data_args: DataArguments, tokenizer: PreTrainedTokenizerBase, training_args: TedTrainingArguments
) -> tuple[Task, TaskData]:
    """`load_task` for a stage that trains: it needs training rows (custom data without --train_file has none)."""
    task, data = load_task(data_args, tokenizer)
    if len(data.train) == 0:
        raise TedInputError(
            "No training examples: this stage trains, so pass --train_file (custom data) or a "
            "task whose training split is not empty."
        )
    if training_args.label_smoothing_factor and task.is_regression:
        raise TedInputError(
            f"--label_smoothing_factor {training_args.label_smoothing_factor} has no meaning for "
            f"the regression task {task.name!r} (there are no classes to smooth over); remove it."
        )
    return task, data


def start_model_stage(
    model_args: ModelArguments, data_args: DataArguments, training_args: TedTrainingArguments, run_args: dict[str, Any]
) -> tuple[Path, PreTrainedTokenizerBase, Task, TaskData, PreTrainedModel]:
    """The start of a stage that trains one model (finetune, learn-filters): the checked output folder, the
    tokenizer, the task and its data, and the model with the dropout overrides."""
    path, gguf = model_args.model_name_or_path, model_args.gguf_file
    fitted = check_sequence_length(path, data_args, model_args.cache_dir, gguf)
    # What the task resolved for this model (causal_lm: --block_size) is recorded and fingerprinted as given.
    run_args.update({k: v for k, v in args_dict(fitted).items() if k in run_args and run_args[k] != v})
    data_args = fitted
    output_dir = open_output(training_args, run_args)
    set_seed(training_args.seed)
    tokenizer_path = model_args.tokenizer_name or path
    tokenizer = load_tokenizer(tokenizer_path, model_args.cache_dir, gguf_for(tokenizer_path, gguf))
    task, data = load_training_task(data_args, tokenizer, training_args)
    model = load_task_model(path, task, model_args.cache_dir, gguf, tokenizer, **dropout_overrides(model_args))
    return output_dir, tokenizer, task, data, model


def open_output(training_args: TedTrainingArguments, run_args: dict[str, Any]) -> Path:
    """Every check of the output folder and of a cut-off run's checkpoints, before any model loads."""
    inputs = tuple(run_args.get(k) for k in (*MODEL_PATH_ARGS, *DATA_PATH_ARGS))
    output_dir = check_output_dir(
        training_args.output_dir, training_args.overwrite_output_dir, training_args.output_dir_given, inputs=inputs
    )
    check_resumable(output_dir, fingerprint(run_args), training_args.overwrite_output_dir)
    return output_dir


def args_dict(*groups: Any) -> dict[str, Any]:
    """The resolved arguments of a stage as one flat dict (what ted_stage.json records and fingerprints hold)."""
    out: dict[str, Any] = {}
    for group in groups:
        if group is None:
            continue
        data = group.to_dict() if hasattr(group, "to_dict") else dataclasses.asdict(group)
        out.update({k: v for k, v in data.items() if not k.startswith("_")})
    return out


class MixedPrecisionFlags(Protocol):
    """What `make_collator` reads of the run's arguments (TrainingArguments, or a stand-in with both off)."""

    fp16: bool
    bf16: bool


def make_collator(
    tokenizer: PreTrainedTokenizerBase, training_args: MixedPrecisionFlags, kind: Optional[HeadKind] = None
) -> Collator:
    """Dynamic padding of tokenized rows (to a multiple of 8 under mixed precision, for tensor cores); a kind with
    one label per token (causal LM) gets its labels padded with -100, on the right."""
    multiple = 8 if (training_args.fp16 or training_args.bf16) else None
    if kind is not None and kind.token_labels:
        from ted.tasks.causal_lm import token_rows_collator

        return token_rows_collator(tokenizer, multiple)
    return DataCollatorWithPadding(tokenizer, pad_to_multiple_of=multiple)
