"""Stage II: TED, and the KD and LWD baselines, with one objective."""

from __future__ import annotations

import dataclasses
import json
import logging
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

from ted import artifacts
from ted.artifacts import StageResult
from ted.errors import TedInputError
from ted.method import teacher_cache
from ted.method.divergences import DIVERGENCES, LAYER_LOSSES
from ted.method.kinds import get_kind
from ted.method.objectives import DistillObjective, DistillWeights
from ted.method.recipes import METHODS, resolve_method
from ted.stages.common import args_dict, make_collator, open_output
from ted.stages.distill_setup import check_model_paths, distill_weights, load_setup
from ted.stages.doctor import preflight
from ted.stages.saving import save_stage, sub_state
from ted.stages.scoring import task_metrics
from ted.stages.training import StageTraining, run_trainer
from ted.tasks import Task

if TYPE_CHECKING:
    from ted.settings.options import DataArguments, DistillArguments, FilterArguments, ModelArguments
    from ted.settings.training_args import TedTrainingArguments

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


def check_deepspeed_stage(deepspeed: Optional[Union[str, dict[str, Any]]]) -> None:
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


def run_distill(
    model_args: ModelArguments,
    data_args: DataArguments,
    filter_args: FilterArguments,
    distill_args: DistillArguments,
    training_args: TedTrainingArguments,
) -> StageResult:
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
    check_deepspeed_stage(training_args.deepspeed)
    check_model_paths(model_args, data_args, filter_args, distill_args, recipe.layers)
    output_dir = open_output(training_args, run_args)
    weights = dataclasses.replace(distill_weights(distill_args), **loss_specs)  # the alphas, or --balance_losses

    def check_task(task: Task) -> None:
        if task.kind.scores and distill_args.kd_loss and distill_args.kl_alpha:
            raise TedInputError(
                f"--kd_loss {distill_args.kd_loss} compares class distributions, but {task.name!r} is a regression "
                "task (its KD term is the MSE between predictions, or the paper's KL with --paper_compat); remove "
                "--kd_loss."
            )
        warn_no_ops(method, task.head, weights, training_args.per_device_train_batch_size)
        teacher_cache.check_before_loading(
            distill_args.teacher_cache, task.head, distill_args.paper_compat, distill_args.kl_alpha,
            distill_args.mse_alpha, loss_specs["kd_loss"], distill_args.teacher_cache_topk, distill_args.temperature,
        )  # fmt: skip

    args = (model_args, data_args, filter_args, distill_args, training_args)
    setup = load_setup(args, method, recipe.layers, check_task)
    task, data, tokenizer, student, pairs = setup.task, setup.data, setup.tokenizer, setup.student, setup.pairs
    weights = dataclasses.replace(weights, vocab_size=setup.kd_vocab)
    # ted doctor's cheap checks (128 dev examples, 2 batches): warnings printed before training, never a stop.
    checked = preflight({**vars(setup), "weights": weights, "training_args": training_args})
    cache = teacher_cache.prepare(
        distill_args=distill_args,
        training_args=training_args,
        teacher=setup.teacher,
        head=task.head,
        train=data.train,
        tokenizer=tokenizer,
        collator=make_collator(tokenizer, training_args, task.kind),
        output_dir=output_dir,
        kd_loss=loss_specs["kd_loss"],
    )
    teacher = cache.teacher
    setup.teacher = setup.teacher_model = None  # with a cache nothing holds the teacher's weights from here on
    cached = dataclasses.replace(data, train=cache.train)
    trained = run_trainer(
        StageTraining(output_dir, run_args, training_args, tokenizer, task, cached),
        module=setup.module,
        objective=DistillObjective(task.head, teacher, weights),
        data_collator=cache.collator,
        compute_metrics=task_metrics(task, data, data_args),
        selection_metric=task.selection_metric,
        teacher=teacher,
    )
    trainer = trained.trainer
    lineage = {"student": setup.student_path, "teacher": setup.teacher_path, "layer_pairs": [list(p) for p in pairs]}
    description = artifacts.describe_stage("distill", task, run_args, lineage, method=method)
    description["teacher_cache"] = cache.record
    if distill_args.paper_compat:  # explicit flags that won over the paper's settings (config.py)
        description["paper_compat_overrides"] = getattr(distill_args, "paper_compat_overrides", {})
    description["preflight_warnings"] = checked.warnings
    description["training_guard"] = trainer.guard_report  # None: it never fired
    description["loss_balance"] = trainer.objective.balance_record()

    def extras(folder: Path, state: dict) -> None:  # DistillStudent keys: model.*, filters.*
        if setup.student_filters is not None:
            setup.student_filters.save(folder, sub_state(state, "filters"))

    save_stage(trained, model=student, description=description, model_prefix="model", extras=extras)
    if trainer.is_world_process_zero():
        teacher_cache.remove_root(cache.cleanup)
    return StageResult(str(output_dir), trained.eval_metrics, {"method": method, "layer_pairs": pairs})
