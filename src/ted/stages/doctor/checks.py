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


def at_chance(score: float, baseline: float, band: float, greater_is_better: bool = True) -> bool:
    """Not better than the baseline by more than the noise band (for perplexity: not lower than it)."""
    return score <= baseline + band if greater_is_better else score >= baseline - band


def unigram_perplexity(train_tokens: np.ndarray, dev_tokens: np.ndarray, vocab_size: int) -> float:
    """Perplexity on the dev tokens of the training text's token frequencies, add-one smoothed over the vocabulary:
    what a model that ignores every context scores. A causal LM that does not beat it learned nothing usable."""
    counts = np.bincount(np.asarray(train_tokens, dtype=np.int64), minlength=vocab_size).astype(np.float64)
    log_p = np.log(counts + 1.0) - math.log(counts.sum() + vocab_size)
    return float(math.exp(-log_p[np.asarray(dev_tokens, dtype=np.int64)].mean()))


def check_lm_models(findings: Findings) -> None:
    """Causal LMs: the teacher's dev perplexity against the unigram baseline and against the student's."""
    teacher, base, student = findings.teacher_dev, findings.majority_baseline, findings.student_dev
    if teacher is None or base is None:
        return
    if teacher >= base:
        findings.warnings.append(
            f"The teacher's dev perplexity {teacher:.4g} is not lower than the unigram baseline's {base:.4g}: it "
            "predicts this text no better than token frequencies do. Check that the teacher, its tokenizer and the "
            "text belong together (a GGUF file's tokenizer, --block_size), or continue its pre-training on the text."
        )
    if student is not None and student <= teacher:
        findings.warnings.append(
            f"The student's dev perplexity {student:.4g} is already as low as the teacher's {teacher:.4g}: the "
            "teacher has little to teach it on this text. Use a stronger teacher or other text."
        )


# ------------------------------------------------------------------------------------------ the checks


def check_teacher(findings: Findings) -> None:
    score, base, band = findings.teacher_dev, findings.majority_baseline, findings.chance_band
    if score is None or base is None or band is None:
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
    metric, base, higher = findings.metric, findings.majority_baseline, findings.greater_is_better
    if base is None or not scores:
        return
    band = chance_band(metric, dev_examples) if higher else 0.0  # perplexity: strictly better than the unigram
    layers = {}
    for layer, values in sorted(scores.items(), key=lambda kv: int(kv[0])):
        if metric not in values:
            continue
        score = float(values[metric])
        layers[str(layer)] = {"score": score, "at_chance": at_chance(score, base, band, higher)}
    findings.stage1_layers[role] = layers
    dead = [int(layer) for layer, v in layers.items() if v["at_chance"]]
    if dead:
        which = ", ".join(str(x) for x in dead)
        findings.warnings.append(
            f"The {role}'s Stage I filter head(s) on layer(s) {which} (0-based) score no better than the "
            f"{findings.baseline} {base:.4g} ({metric}): those filters learned nothing about the task, and TED would "
            "pull the student "
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
