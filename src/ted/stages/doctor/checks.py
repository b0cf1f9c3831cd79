"""The doctor's judgements: constant-prediction baselines, the noise band, and the checks that turn scores and
step-0 loss terms into findings and warnings (numbers in, no models)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from ted.stages.doctor.findings import Findings

if TYPE_CHECKING:
    from ted.method.objectives import DistillWeights
    from ted.tasks.base import Task

DOMINANCE = 5.0  # a weighted term this many times the task loss at step 0 is a warning (training.GUARD_DOMINANCE)
CORRELATIONS = ("matthews_correlation", "pearson", "spearmanr", "combined_score")


# ----------------------------------------------------------------------------------------- baselines


def selection(task: Task, predictions: np.ndarray, labels: np.ndarray) -> float:
    return float(task.compute_metrics(predictions, labels)[task.selection_metric])


def constant_predictions(task: Task, labels: np.ndarray) -> list[np.ndarray]:
    """What models that ignore their input predict for these examples: one class everywhere (as logits, one
    array per class), or the mean score."""
    if task.kind.scores:
        return [np.full(len(labels), float(np.mean(labels)))]
    return [np.tile(np.eye(task.num_labels)[c], (len(labels), 1)) for c in range(task.num_labels)]


def majority_baseline(task: Task, labels: np.ndarray) -> float:
    """The best selection score of a constant prediction on these dev examples (accuracy: the majority class's
    share; correlations and MCC: 0). A model that does not beat it learned nothing about the task."""
    return max(selection(task, preds, labels) for preds in constant_predictions(task, labels))


def chance_band(metric: str, n: int) -> float:
    """How far above the baseline a score must be to be more than sampling noise on n dev examples (about two
    standard errors: a proportion's is at most 0.5 / sqrt(n), a correlation's about 1 / sqrt(n))."""
    return (2.0 if metric in CORRELATIONS else 1.0) / math.sqrt(max(n, 1))


def at_chance(score: float, baseline: float, band: float) -> bool:
    return score <= baseline + band


# ------------------------------------------------------------------------------------------ the checks


def check_teacher(findings: Findings) -> None:
    score, base, band = findings.teacher_dev, findings.majority_baseline, findings.chance_band
    if score is None or base is None:
        return
    metric = findings.metric
    if score < base - band:
        findings.warnings.append(
            f"The teacher scores {score:.3f} {metric} on dev, far below the majority baseline {base:.3f}: its label "
            "order may be swapped relative to the data. Check --label_list and the teacher's id2label."
        )
    elif at_chance(score, base, band):
        findings.warnings.append(
            f"The teacher scores {score:.3f} {metric} on dev, within {band:.3f} of the majority baseline {base:.3f}: "
            "it knows little about the task, so there is little to distill. Fine-tune it longer or on more data."
        )


def check_stage1(findings: Findings, role: str, scores: dict, dev_examples: int) -> None:
    """Each filter head's dev score against the baseline (scores: stage1_layer_scores.json)."""
    metric, base = findings.metric, findings.majority_baseline
    if base is None or not scores:
        return
    band = chance_band(metric, dev_examples)
    layers = {}
    for layer, values in sorted(scores.items(), key=lambda kv: int(kv[0])):
        if metric not in values:
            continue
        score = float(values[metric])
        layers[str(layer)] = {"score": score, "at_chance": at_chance(score, base, band)}
    findings.stage1_layers[role] = layers
    dead = [int(layer) for layer, v in layers.items() if v["at_chance"]]
    if dead:
        which = ", ".join(str(x) for x in dead)
        findings.warnings.append(
            f"The {role}'s Stage I filter head(s) on layer(s) {which} (0-based) score at the majority baseline "
            f"{base:.3f} ({metric}): those filters learned nothing about the task, and TED would pull the student "
            "onto them. Train Stage I longer (more epochs, a larger learning rate) or use --filter_interval to "
            "skip those layers."
        )


def check_terms(findings: Findings, raw: dict[str, float], weights: DistillWeights) -> None:
    """Step-0 terms: weighted = alpha x raw; suggested alpha = ratio x task loss / raw."""
    task_loss = raw.get("pred")
    if task_loss is None:
        return
    findings.initial_terms["pred"] = {"raw": task_loss, "weighted": task_loss}
    for name in ("kl", "mse"):
        if name not in raw:
            continue
        alpha = weights.alpha(name)
        findings.initial_terms[name] = {"raw": raw[name], "weighted": alpha * raw[name]}
        if raw[name] > 0:
            findings.suggested[f"{name}_alpha"] = weights.ratio(name) * task_loss / raw[name]
        times = alpha * raw[name] / task_loss if task_loss > 0 else math.inf
        if times >= DOMINANCE and not weights.balance:
            findings.warnings.append(
                f"At step 0 the weighted {name} term ({name}_alpha {alpha:g} x {raw[name]:.4g} = "
                f"{alpha * raw[name]:.4g}) is {times:.0f}x the task loss ({task_loss:.4g}): the student may be "
                f"pulled away from the task. Try --{name}_alpha {findings.suggested.get(f'{name}_alpha', 0):.3g} "
                f"(weighted term = {weights.ratio(name):g}x the task loss) or pass --balance_losses."
            )
