"""The one training engine: a thin `Trainer` subclass that owns only the loss.

Mixed precision, gradient accumulation, DDP/FSDP/DeepSpeed, checkpoints, resume, best-model
selection, progress bars and `report_to` trackers all come from the Hugging Face Trainer.
"""

from __future__ import annotations

import logging
import statistics
import warnings
from typing import TYPE_CHECKING, Any, Optional, Union

import torch
from transformers import Trainer

from ted.method.frozen_pass import autocast_dtype

if TYPE_CHECKING:
    from torch import nn

    from ted.method.modules import Teacher
    from ted.method.objectives import DistillObjective, FilterObjective, TaskObjective

    Objective = Union[TaskObjective, FilterObjective, DistillObjective]

logger = logging.getLogger(__name__)

# The training guard (issue 14): the task loss this much above its early value while a weighted distillation
# term is this many times the task loss means the student is being pulled away from the task.
GUARD_RISE = 1.10
GUARD_DOMINANCE = 5.0
GUARD_WINDOW = 3  # logging intervals averaged at the start and at the end (fewer on short runs)
FLAGS = {"kl": "--kl_alpha", "mse": "--mse_alpha"}


def collapse_check(pred: list[float], weighted: list[dict[str, float]]) -> Optional[dict]:
    """The guard's rule on per-interval means of the task loss and of the weighted distillation terms.

    Returns the numbers when the task loss has risen by GUARD_RISE while a weighted term dominates, else None.
    """
    window = min(GUARD_WINDOW, len(pred) // 2)
    if window < 2 or not weighted[-1]:
        return None
    early, recent = statistics.fmean(pred[:window]), statistics.fmean(pred[-window:])
    names = list(weighted[-1])
    term = {n: statistics.fmean(w.get(n, 0.0) for w in weighted[-window:]) for n in names}
    name = max(term, key=term.get)
    if recent <= early * GUARD_RISE or term[name] < GUARD_DOMINANCE * recent:
        return None
    return {
        "task_loss_early": early,
        "task_loss_now": recent,
        "term": name,
        "weighted_term": term[name],
        "times_task_loss": term[name] / recent,
        "logging_intervals": len(pred),
    }


def guard_message(found: dict, alpha: Optional[float]) -> str:
    flag = FLAGS.get(found["term"], found["term"])
    lower = ""
    if alpha:  # the alpha that would make the weighted term equal to the task loss now
        lower = f" (about {alpha * found['task_loss_now'] / found['weighted_term']:.3g} puts it at the task loss)"
    return (
        f"Training guard: the task loss rose from {found['task_loss_early']:.3f} (early) to "
        f"{found['task_loss_now']:.3f} while the weighted {found['term']} term ({found['weighted_term']:.3g}) is "
        f"{found['times_task_loss']:.0f}x the task loss: the student is pulled towards the teacher at the cost of "
        f"the task. Lower {flag}{lower} or pass --balance_losses; `ted doctor` checks this before training."
    )


class TedTrainer(Trainer):
    """Runs any stage: `objective(model, inputs) -> (loss, terms, predictions)`.

    Loss terms are summed on the device every step and averaged into the logs at each logging
    step, so no per-step host synchronisation is added and every term reaches the trackers.
    """

    def __init__(self, *args: Any, objective: Objective, teacher: Optional[Teacher] = None, **kwargs: Any) -> None:
        train_args = kwargs.get("args")
        if train_args is not None and train_args.dataloader_pin_memory and train_args.device.type == "cpu":
            # Pinned memory only helps copies to an accelerator; on CPU torch warns at every DataLoader.
            train_args.dataloader_pin_memory = False
        super().__init__(*args, **kwargs)
        self.objective = objective
        # The Trainer's label smoother only wraps its own loss; our objectives apply the factor themselves.
        objective.label_smoothing = self.args.label_smoothing_factor
        # Our objectives return batch means and never read `num_items_in_batch`; the wrapper modules' forward
        # takes **kwargs, which would make the Trainer skip dividing the loss by gradient_accumulation_steps.
        self.model_accepts_loss_kwargs = False
        # The teacher is held here and by the objective, never as a submodule of the trained module, so
        # accelerate/DDP never wrap it and its weights are never saved with the student. It runs under
        # inference mode, with the run's autocast (--bf16 / --fp16) applied by the Teacher itself.
        self.teacher = teacher
        if teacher is not None:
            teacher.to(self.args.device)
            teacher.autocast_dtype = autocast_dtype(self.args.device, self.args.bf16, self.args.fp16)
        self._term_sums: dict[str, torch.Tensor] = {}
        self._term_steps = 0
        self._checked_terms = False
        # Training guard: per-interval task loss and weighted distillation terms; its finding, once.
        self._guard_pred: list[float] = []
        self._guard_weighted: list[dict[str, float]] = []
        self.guard_report: Optional[dict] = None

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Optional[torch.Tensor] = None,
    ) -> Union[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        loss, terms, predictions = self.objective(model, inputs)
        if model.training and terms:
            self._accumulate(terms)
        return (loss, predictions) if return_outputs else loss

    def _accumulate(self, terms: dict[str, torch.Tensor]) -> None:
        for name, value in terms.items():
            value = value.detach().float()
            self._term_sums[name] = self._term_sums[name] + value if name in self._term_sums else value
        self._term_steps += 1

    def prediction_step(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        prediction_loss_only: bool,
        ignore_keys: Optional[list[str]] = None,
    ) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor], Optional[torch.Tensor]]:
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss, _, predictions = self.objective(model, inputs)
        loss = loss.detach() if loss is not None else None
        if prediction_loss_only:
            return loss, None, None
        labels = self.objective_labels(inputs)
        return loss, predictions.detach(), labels

    def objective_labels(self, inputs: dict[str, Any]) -> Optional[torch.Tensor]:
        return self.objective.kind.trainer_labels(inputs)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self._term_steps and "loss" in logs:
            names = list(self._term_sums)  # the same order in every process (the objective builds it)
            means = torch.stack([self._term_sums[name] for name in names]) / self._term_steps
            if self.args.world_size > 1:  # every process logs at the same steps: average the terms over them
                means = self.accelerator.reduce(means, reduction="mean")
            averages = dict(zip(names, means.tolist()))
            logs.update({f"loss_{name}": value for name, value in averages.items()})
            self._warn_degenerate(averages)
            self._guard(averages)
            self._term_sums, self._term_steps = {}, 0
        super().log(logs, start_time)

    def _guard(self, averages: dict[str, float]) -> None:
        weigh = getattr(self.objective, "weighted_terms", None)
        if self.guard_report is not None or weigh is None or "pred" not in averages:
            return
        self._guard_pred.append(averages["pred"])
        self._guard_weighted.append(weigh(averages))
        found = collapse_check(self._guard_pred, self._guard_weighted)
        if found is None:
            return
        weights = getattr(self.objective, "w", None)
        alpha = weights.alpha(found["term"]) if weights is not None and not weights.balance else None
        message = guard_message(found, alpha)
        self.guard_report = {**found, "step": self.state.global_step, "message": message}
        if self.is_world_process_zero():
            warnings.warn(message, stacklevel=2)

    def _warn_degenerate(self, averages: dict[str, float]) -> None:
        # A weighted term that is exactly zero teaches nothing: say so once instead of staying silent.
        if self._checked_terms:
            return
        self._checked_terms = True
        for name in ("kl", "mse"):
            if name in averages and averages[name] == 0.0:
                warnings.warn(
                    f"The {name} loss term was exactly 0 over the first logging interval although its weight is "
                    "non-zero; it gives no training signal. Check the teacher, the filters and the batch size.",
                    stacklevel=2,
                )
