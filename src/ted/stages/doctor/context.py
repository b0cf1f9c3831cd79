"""What `ted distill` loads before training, built for the doctor without an output folder."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from ted.method.recipes import METHODS, resolve_method

if TYPE_CHECKING:
    from ted.settings.options import DataArguments, DistillArguments, FilterArguments, ModelArguments
    from ted.settings.training_args import TedTrainingArguments


def build_context(
    model_args: ModelArguments,
    data_args: DataArguments,
    filter_args: FilterArguments,
    distill_args: DistillArguments,
    training_args: TedTrainingArguments,
) -> dict[str, Any]:
    """The same `DistillSetup` as `ted distill` (stages/distill_setup.py), with the loss weights, as a dict."""
    from ted.stages.distill_setup import check_model_paths, distill_weights, load_setup

    method = resolve_method(distill_args.method, filter_args.filter_disabled, distill_args.mse_alpha)
    layers = METHODS.get(method).layers  # what the method's layer term compares (a registered method too)
    check_model_paths(model_args, data_args, filter_args, distill_args, layers)
    setup = load_setup((model_args, data_args, filter_args, distill_args, training_args), method, layers)
    weights = dataclasses.replace(distill_weights(distill_args), vocab_size=setup.kd_vocab)
    return {**vars(setup), "weights": weights, "training_args": training_args}
