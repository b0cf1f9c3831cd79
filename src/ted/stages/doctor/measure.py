"""Measuring loaded models and data for the doctor: dev predictions and step-0 loss terms; `diagnose` runs every
check on them, and `preflight` is the cheap version that `ted distill` runs before training."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from ted import artifacts
from ted.method.recipes import FILTERS
from ted.stages.doctor.checks import (
    chance_band,
    check_lm_models,
    check_stage1,
    check_teacher,
    check_terms,
    majority_baseline,
    selection,
    unigram_perplexity,
)
from ted.stages.doctor.findings import Findings

if TYPE_CHECKING:
    import datasets
    import torch
    from transformers import PretrainedConfig, PreTrainedModel

    from ted.method.kinds import HeadKind
    from ted.method.modules import DistillStudent
    from ted.method.objectives import DistillObjective
    from ted.method.teacher_cache.collate import Collator
    from ted.tasks.base import Task

logger = logging.getLogger(__name__)


def first_rows(dataset: datasets.Dataset, n: int) -> datasets.Dataset:
    return dataset.select(range(min(n, len(dataset)))) if len(dataset) > n else dataset


def dev_sample(dataset: datasets.Dataset, n: int) -> datasets.Dataset:
    """n dev rows drawn at random (fixed seed: the same rows every run), kept in file order. Not the first n: a
    dev file can be ordered by source or label (STS-B's first pairs are far easier than the rest)."""
    if len(dataset) <= n:
        return dataset
    return dataset.select(np.sort(np.random.default_rng(0).choice(len(dataset), size=n, replace=False)))


def batches(dataset: datasets.Dataset, collator: Collator, batch_size: int) -> Iterator[dict[str, Any]]:
    from ted.stages.common import model_columns

    dataset = model_columns(dataset)
    for start in range(0, len(dataset), batch_size):
        yield collator([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])


def on(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if hasattr(v, "to") else v for k, v in dict(batch).items()}


def predict(
    model: PreTrainedModel,
    dataset: datasets.Dataset,
    collator: Collator,
    batch_size: int,
    device: torch.device,
    kind: HeadKind,
) -> np.ndarray:
    """A sequence-level model's dev predictions (`kind`: the task's head kind)."""
    import torch

    model.eval()
    out = []
    with torch.inference_mode():
        for batch in batches(dataset, collator, batch_size):
            inputs, labels = kind.split_labels(on(batch, device))
            # What the task's metric reads: logits, or a causal LM's per-row (summed NLL, scored tokens).
            rows = kind.metric_inputs(kind.predictions(model(**inputs)), labels)
            out.append(rows.float().cpu().numpy())
    return np.concatenate(out)


def step0_terms(
    objective: DistillObjective,
    module: DistillStudent,
    dataset: datasets.Dataset,
    collator: Collator,
    batch_size: int,
    n_batches: int,
    device: torch.device,
) -> dict[str, float]:
    """Mean of each loss term over the first training batches, before any update (no gradients). The CPU
    random state is restored afterwards, so the run that follows is unchanged."""
    import torch

    sums: dict[str, float] = {}
    seen = 0
    cuda = [device.index or 0] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=cuda), torch.no_grad():
        module.train()
        for batch in batches(first_rows(dataset, batch_size * n_batches), collator, batch_size):
            _, terms, _ = objective(module, on(batch, device))
            for name, value in terms.items():
                if not name.startswith("weight_"):
                    sums[name] = sums.get(name, 0.0) + float(value)
            seen += 1
    return {name: value / seen for name, value in sums.items()} if seen else {}


def stage1_scores(folder: str) -> Optional[dict]:
    path = Path(folder) / artifacts.STAGE1_SCORES
    return artifacts.read_json(path) if path.is_file() else None


def diagnose(ctx: dict, eval_samples: int, n_batches: int) -> Findings:
    """Every check on loaded models and data. `ctx` holds what `ted distill` builds: task, data, tokenizer,
    teacher_model, student, teacher, module, weights, pairs, method, teacher_path, student_path, training_args."""
    from ted.stages.common import make_collator

    task, args = ctx["task"], ctx["training_args"]
    collator = make_collator(ctx["tokenizer"], args, task.kind)
    ctx["teacher"].to(args.device)
    ctx["module"].to(args.device)
    findings = Findings(metric=task.selection_metric, tokenizers_agree=True)
    findings.layer_map = [list(p) for p in ctx["pairs"]]
    findings.labels = {
        "data": task.label_list,
        "teacher": _id2label(ctx["teacher_model"].config, task),
        "student": _id2label(ctx["student"].config, task),
    }
    if task.kind.sequence_level:  # span heads have no constant-prediction baseline
        _score_on_dev(findings, ctx, collator, eval_samples)
    elif task.kind.token_labels:  # causal LMs: perplexities against a unigram baseline
        _score_lm_on_dev(findings, ctx, collator, eval_samples)
    else:
        findings.warnings.append(
            f"{task.kind.name} tasks: the teacher and Stage I heads are not scored by the doctor (yet)."
        )
    _measure_terms(findings, ctx, collator, n_batches)
    return findings


def _score_on_dev(findings: Findings, ctx: dict, collator: Collator, eval_samples: int) -> None:
    """Teacher (and a fine-tuned student) on a sample of dev examples beside the baseline; TED's Stage I heads."""
    from ted.stages.models import has_trained_head

    task, data, args = ctx["task"], ctx["data"], ctx["training_args"]
    device = args.device
    dev = dev_sample(next(iter(data.eval_sets.values())), eval_samples)
    labels = np.asarray(dev["labels"])
    findings.dev_examples = len(dev)
    findings.majority_baseline = majority_baseline(task, labels)
    findings.chance_band = chance_band(task.selection_metric, len(dev))
    preds = predict(ctx["teacher_model"], dev, collator, args.per_device_eval_batch_size, device, task.kind)
    findings.teacher_dev = selection(task, preds, labels)
    check_teacher(findings)
    if has_trained_head(ctx["student"].config, task):  # TED's fine-tuned student (KD/LWD may start fresh)
        preds = predict(ctx["student"], dev, collator, args.per_device_eval_batch_size, device, task.kind)
        findings.student_dev = selection(task, preds, labels)
    if ctx["layers"] == FILTERS:  # Stage I heads exist only where filters are matched
        for role, path in (("teacher", ctx["teacher_path"]), ("student", ctx["student_path"])):
            scores = stage1_scores(path)
            full_dev = len(next(iter(data.eval_sets.values())))
            check_stage1(findings, role, scores or {}, full_dev)


def scored_targets(dataset: datasets.Dataset) -> np.ndarray:
    """The next tokens a causal LM is scored on, over every row (labels, else the input ids, from position 1)."""
    column = "labels" if "labels" in dataset.column_names else "input_ids"
    rows = [np.asarray(row[1:], dtype=np.int64) for row in dataset[column]]
    tokens = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
    return tokens[tokens != -100]


def _score_lm_on_dev(findings: Findings, ctx: dict, collator: Collator, eval_samples: int) -> None:
    """Teacher and student dev perplexity on a sample of dev blocks, beside the unigram baseline of the training
    text; each TED Stage I head's perplexity (stage1_layer_scores.json) against the same baseline."""
    task, data, args = ctx["task"], ctx["data"], ctx["training_args"]
    dev = dev_sample(next(iter(data.eval_sets.values())), eval_samples)
    findings.greater_is_better, findings.baseline = False, "unigram baseline"
    findings.dev_examples = len(dev)
    vocab = max(int(ctx["teacher_model"].config.vocab_size), len(ctx["tokenizer"]))
    findings.majority_baseline = unigram_perplexity(scored_targets(data.train), scored_targets(dev), vocab)
    batch_size, device = args.per_device_eval_batch_size, args.device
    for model, key in ((ctx["teacher_model"], "teacher_dev"), (ctx["student"], "student_dev")):
        rows = predict(model, dev, collator, batch_size, device, task.kind)
        setattr(findings, key, selection(task, rows, np.zeros(len(rows))))
    check_lm_models(findings)
    if ctx["layers"] == FILTERS:
        for role, path in (("teacher", ctx["teacher_path"]), ("student", ctx["student_path"])):
            check_stage1(findings, role, stage1_scores(path) or {}, len(next(iter(data.eval_sets.values()))))


def _measure_terms(findings: Findings, ctx: dict, collator: Collator, n_batches: int) -> None:
    """Every loss term at step 0, and the weights that would balance them."""
    import dataclasses

    from ted.method.objectives import DistillObjective

    task, args = ctx["task"], ctx["training_args"]
    # A fresh objective without balancing: the measurement must not fix the run's balanced weights.
    objective = DistillObjective(task.head, ctx["teacher"], dataclasses.replace(ctx["weights"], balance=False))
    batch_size = args.per_device_train_batch_size
    raw = step0_terms(objective, ctx["module"], ctx["data"].train, collator, batch_size, n_batches, args.device)
    check_terms(findings, raw, ctx["weights"])


def _id2label(config: PretrainedConfig, task: Task) -> Optional[list[str]]:
    if task.label_list is None:
        return None
    mapping = getattr(config, "id2label", None) or {}
    return [str(mapping.get(i, mapping.get(str(i), i))) for i in range(len(mapping))]


def preflight(ctx: dict) -> Findings:
    """The cheap part of the doctor that `ted distill` runs before training: 128 dev examples, 2 batches.
    Prints each warning; never stops the run."""
    # Causal LMs: 16 dev blocks (a teacher and a student pass over each; 128 would cost minutes on a CPU).
    findings = diagnose(ctx, eval_samples=16 if ctx["task"].kind.token_labels else 128, n_batches=2)
    for message in findings.warnings:
        logger.warning("pre-flight: %s", message)
    if findings.warnings:
        logger.warning("pre-flight: run `ted doctor` with the same options for the full check.")
    return findings
