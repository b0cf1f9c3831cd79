"""`ted doctor`: minutes of checks before hours of Stage II (issue 14).

A distillation run can fail silently: a teacher barely above chance, Stage I filters that learned nothing,
or a weighted distillation term so large that the student is pulled away from the task. The doctor takes the
same options as `ted distill`, loads the same models and data, and reports

- the teacher's dev score (on at most --doctor_eval_samples examples) beside the majority-class baseline
  (mean prediction for regression), the label order of teacher, student and data, tokenizer agreement and
  the layer map;
- each Stage I filter head's dev score (stage1_layer_scores.json) beside the same baseline, flagging heads
  at chance;
- every loss term on --doctor_batches training batches at step 0, raw and weighted, and the kl_alpha /
  mse_alpha that put each weighted term at --balance_kl_ratio / --balance_mse_ratio of the task loss.

`ted distill` runs the same checks on fewer examples (`preflight`) and prints their warnings before training.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ted import artifacts
from ted.errors import TedInputError

logger = logging.getLogger(__name__)

DOMINANCE = 5.0  # a weighted term this many times the task loss at step 0 is a warning (training.GUARD_DOMINANCE)
CORRELATIONS = ("matthews_correlation", "pearson", "spearmanr", "combined_score")


@dataclass
class Findings:
    """What the doctor found; `as_json` gives the documented keys."""

    metric: Optional[str] = None
    dev_examples: int = 0
    teacher_dev: Optional[float] = None
    student_dev: Optional[float] = None
    majority_baseline: Optional[float] = None
    chance_band: Optional[float] = None
    labels: dict[str, Any] = field(default_factory=dict)
    tokenizers_agree: Optional[bool] = None
    layer_map: list[list[int]] = field(default_factory=list)
    stage1_layers: dict[str, dict[str, dict]] = field(default_factory=dict)
    initial_terms: dict[str, dict[str, float]] = field(default_factory=dict)
    suggested: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    blocking: bool = False

    def verdict(self) -> str:
        if self.blocking:
            return f"ted doctor: STOP: {self.warnings[0]}"
        if not self.warnings:
            return "ted doctor: OK: no problem found; the run looks healthy."
        return f"ted doctor: {len(self.warnings)} warning(s); read them before a long run."

    def as_json(self) -> dict:
        return {
            "metric": self.metric,
            "dev_examples": self.dev_examples,
            "teacher_dev": self.teacher_dev,
            "student_dev": self.student_dev,
            "majority_baseline": self.majority_baseline,
            "chance_band": self.chance_band,
            "labels": self.labels,
            "tokenizers_agree": self.tokenizers_agree,
            "layer_map": self.layer_map,
            "stage1_layers": self.stage1_layers,
            "initial_terms": self.initial_terms,
            "suggested": self.suggested,
            "warnings": self.warnings,
            "verdict": self.verdict(),
        }


# ----------------------------------------------------------------------------------------- baselines


def constant_predictions(task, labels: np.ndarray) -> list[np.ndarray]:
    """What models that ignore their input predict for these examples: one class everywhere (as logits, one
    array per class), or the mean score."""
    if task.kind.scores:
        return [np.full(len(labels), float(np.mean(labels)))]
    return [np.tile(np.eye(task.num_labels)[c], (len(labels), 1)) for c in range(task.num_labels)]


def majority_baseline(task, labels: np.ndarray) -> float:
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


def check_teacher(findings: Findings, who: str = "teacher") -> None:
    score, base, band = findings.teacher_dev, findings.majority_baseline, findings.chance_band
    if score is None or base is None:
        return
    metric = findings.metric
    if score < base - band:
        findings.warnings.append(
            f"The {who} scores {score:.3f} {metric} on dev, far below the majority baseline {base:.3f}: its label "
            "order may be swapped relative to the data. Check --label_list and the teacher's id2label."
        )
    elif at_chance(score, base, band):
        findings.warnings.append(
            f"The {who} scores {score:.3f} {metric} on dev, within {band:.3f} of the majority baseline {base:.3f}: "
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


def check_terms(findings: Findings, raw: dict[str, float], weights) -> None:
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


# ------------------------------------------------------------------------------------------ measuring


def first_rows(dataset, n: int):
    return dataset.select(range(min(n, len(dataset)))) if len(dataset) > n else dataset


def batches(dataset, collator, batch_size: int):
    from ted.stages.common import model_columns

    dataset = model_columns(dataset)
    for start in range(0, len(dataset), batch_size):
        yield collator([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])


def on(batch, device) -> dict:
    return {k: v.to(device) if hasattr(v, "to") else v for k, v in dict(batch).items()}


def predict(model, dataset, collator, batch_size: int, device, kind) -> np.ndarray:
    """A sequence-level model's dev predictions (`kind`: the task's head kind)."""
    import torch

    model.eval()
    out = []
    with torch.inference_mode():
        for batch in batches(dataset, collator, batch_size):
            inputs, _ = kind.split_labels(on(batch, device))
            logits = kind.predictions(model(**inputs))
            out.append(logits.float().cpu().numpy())
    return np.concatenate(out)


def selection(task, predictions: np.ndarray, labels: np.ndarray) -> float:
    return float(task.compute_metrics(predictions, labels)[task.selection_metric])


def step0_terms(objective, module, dataset, collator, batch_size: int, n_batches: int, device) -> dict[str, float]:
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
    import dataclasses

    from ted.method.objectives import DistillObjective
    from ted.stages.common import make_collator
    from ted.stages.models import has_trained_head

    task, data, args = ctx["task"], ctx["data"], ctx["training_args"]
    device = args.device
    collator = make_collator(ctx["tokenizer"], args)
    ctx["teacher"].to(device)
    ctx["module"].to(device)
    findings = Findings(metric=task.selection_metric, tokenizers_agree=True)
    findings.layer_map = [list(p) for p in ctx["pairs"]]
    findings.labels = {
        "data": task.label_list,
        "teacher": _id2label(ctx["teacher_model"].config, task),
        "student": _id2label(ctx["student"].config, task),
    }
    if task.kind.sequence_level:  # span heads have no constant-prediction baseline
        dev = first_rows(next(iter(data.eval_sets.values())), eval_samples)
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
        if ctx["method"] == "ted":
            for role, path in (("teacher", ctx["teacher_path"]), ("student", ctx["student_path"])):
                scores = stage1_scores(path)
                full_dev = len(next(iter(data.eval_sets.values())))
                check_stage1(findings, role, scores or {}, full_dev)
    else:
        findings.warnings.append("Span tasks: the teacher and Stage I heads are not scored by the doctor (yet).")
    # A fresh objective without balancing: the measurement must not fix the run's balanced weights.
    objective = DistillObjective(task.head, ctx["teacher"], dataclasses.replace(ctx["weights"], balance=False))
    batch_size = args.per_device_train_batch_size
    raw = step0_terms(objective, ctx["module"], data.train, collator, batch_size, n_batches, device)
    check_terms(findings, raw, ctx["weights"])
    return findings


def _id2label(config, task) -> Optional[list[str]]:
    if task.label_list is None:
        return None
    mapping = getattr(config, "id2label", None) or {}
    return [str(mapping.get(i, mapping.get(str(i), i))) for i in range(len(mapping))]


def preflight(ctx: dict) -> Findings:
    """The cheap part of the doctor that `ted distill` runs before training: 128 dev examples, 2 batches.
    Prints each warning; never stops the run."""
    findings = diagnose(ctx, eval_samples=128, n_batches=2)
    for message in findings.warnings:
        logger.warning("pre-flight: %s", message)
    if findings.warnings:
        logger.warning("pre-flight: run `ted doctor` with the same options for the full check.")
    return findings


# ------------------------------------------------------------------------------------------ the command


def write_findings(findings: Findings, path: Optional[str]) -> None:
    if path:
        artifacts.atomic_write(path, json.dumps(findings.as_json(), indent=2, default=float) + "\n")


def report_text(findings: Findings) -> str:
    lines = []
    if findings.teacher_dev is not None:
        lines.append(
            f"teacher dev {findings.metric}: {findings.teacher_dev:.4f} on {findings.dev_examples} examples "
            f"(majority baseline {findings.majority_baseline:.4f}, noise band +-{findings.chance_band:.3f})"
        )
    if findings.student_dev is not None:
        lines.append(f"student dev {findings.metric} before Stage II: {findings.student_dev:.4f}")
    if findings.labels.get("data"):
        lines.append(
            f"labels: data {findings.labels['data']}, teacher {findings.labels['teacher']}, "
            f"student {findings.labels['student']}"
        )
    lines.append(f"tokenizers agree: {findings.tokenizers_agree}; layer map (student, teacher): {findings.layer_map}")
    for role, layers in findings.stage1_layers.items():
        shown = ", ".join(f"{k}: {v['score']:.3f}{' (at chance)' if v['at_chance'] else ''}" for k, v in layers.items())
        lines.append(f"Stage I {role} heads by layer: {shown}")
    for name, value in findings.initial_terms.items():
        lines.append(f"step-0 {name}: raw {value['raw']:.4g}, weighted {value['weighted']:.4g}")
    if findings.suggested:
        lines.append("suggested: " + ", ".join(f"--{k} {v:.3g}" for k, v in findings.suggested.items()))
    lines += [f"WARNING: {w}" for w in findings.warnings]
    lines.append(findings.verdict())
    return "\n".join(lines)


def run_doctor(model_args, data_args, filter_args, distill_args, doctor_args, training_args) -> Findings:
    """`ted doctor` with `ted distill`'s options: load what distill loads, check, print, write --json."""
    from ted.stages.distill import check_deepspeed_stage

    check_deepspeed_stage(training_args.deepspeed)
    if doctor_args.json and Path(doctor_args.json).is_dir():
        raise TedInputError(f"--json {doctor_args.json} is a folder; give a file name such as doctor.json.")
    try:
        ctx = build_context(model_args, data_args, filter_args, distill_args, training_args)
    except TedInputError as err:  # a mismatch the doctor exists to report (labels, tokenizers, layers)
        if not _is_pairing_problem(str(err)):
            raise
        findings = Findings(warnings=[str(err)], blocking=True)
        findings.tokenizers_agree = "vocabular" not in str(err)
    else:
        findings = diagnose(ctx, doctor_args.doctor_eval_samples, doctor_args.doctor_batches)
    write_findings(findings, doctor_args.json)
    print(report_text(findings))
    return findings


def _is_pairing_problem(message: str) -> bool:
    return any(word in message for word in ("vocabular", "label", "selected layers", "filters"))


def build_context(model_args, data_args, filter_args, distill_args, training_args) -> dict:
    """What `ted distill` loads before training (stages/distill.py), without an output folder."""
    from transformers import set_seed

    from ted.method.filters import match_layers, new_filters, select_layers
    from ted.method.objectives import DistillStudent, Teacher
    from ted.stages.common import dropout_overrides, load_training_task
    from ted.stages.distill import check_projector_width, load_filters, resolve_method
    from ted.stages.models import (
        check_same_vocabulary,
        check_sequence_length,
        has_trained_head,
        load_task_model,
        load_tokenizer,
        num_layers,
    )

    method = resolve_method(distill_args.method, filter_args.filter_disabled, distill_args.mse_alpha)
    student_path, teacher_path = model_args.model_name_or_path, distill_args.teacher_model_name_or_path
    if not teacher_path:
        raise TedInputError("ted doctor needs --teacher_model_name_or_path (the teacher `ted distill` would use).")
    for path in (student_path, teacher_path):
        check_sequence_length(path, data_args, model_args.cache_dir)
    if method == "lwd":
        check_projector_width(filter_args.filter_output_dim, teacher_path, model_args.cache_dir)
    set_seed(training_args.seed)
    tokenizer = load_tokenizer(model_args.tokenizer_name or student_path, model_args.cache_dir)
    check_same_vocabulary(load_tokenizer(teacher_path, model_args.cache_dir), tokenizer, teacher_path, student_path)
    task, data = load_training_task(data_args, tokenizer, training_args)
    teacher_model = load_task_model(teacher_path, task, model_args.cache_dir)
    if not has_trained_head(teacher_model.config, task):
        raise TedInputError(f"Teacher {teacher_path!r} has no fine-tuned task head; fine-tune it first.")
    student = load_task_model(student_path, task, model_args.cache_dir, **dropout_overrides(model_args))
    s_layers = t_layers = pairs = []
    if method != "kd":
        s_layers = select_layers(num_layers(student.config), filter_args.filter_interval)
        t_layers = select_layers(num_layers(teacher_model.config), filter_args.teacher_filter_interval)
        pairs = match_layers(s_layers, t_layers)
    teacher_filters = student_filters = None
    if method == "ted":
        dim, nonlinear = filter_args.filter_output_dim, filter_args.filter_nonlinear
        teacher_filters = load_filters(teacher_path, t_layers, dim, nonlinear, "teacher")
        student_filters = load_filters(student_path, s_layers, dim, nonlinear, "student")
    elif method == "lwd":
        hidden = teacher_model.config.hidden_size
        student_filters = new_filters(
            student.config, s_layers, hidden, nonlinear=False, interval=filter_args.filter_interval, role="projector"
        )
    return {
        "task": task,
        "data": data,
        "tokenizer": tokenizer,
        "teacher_model": teacher_model,
        "student": student,
        "teacher": Teacher(teacher_model, teacher_filters, t_layers, task.head),
        "module": DistillStudent(student, student_filters),
        "weights": distill_weights(distill_args),
        "pairs": pairs,
        "method": method,
        "teacher_path": teacher_path,
        "student_path": student_path,
        "training_args": training_args,
    }


def distill_weights(distill_args):
    """DistillWeights from the distill options (also used by `ted distill`)."""
    from ted.method.objectives import DistillWeights

    return DistillWeights(
        distill_args.kl_alpha,
        distill_args.mse_alpha,
        distill_args.temperature,
        distill_args.paper_compat,
        balance=distill_args.balance_losses,
        kl_ratio=distill_args.balance_kl_ratio,
        mse_ratio=distill_args.balance_mse_ratio,
        every_step=distill_args.balance_every_step,
    )


# ------------------------------------------------------------------------------------ on a pipeline config

PIPELINE_HELP = """usage: ted doctor --pipeline_config FILE.yaml [--task T] [--seed S] [--method ted|kd|lwd]
                  [--json FILE] [--doctor_eval_samples N] [--doctor_batches N] [pipeline options]

Checks the Stage II run (default: ted) of one task and seed of a `ted pipeline` config, with the stage options
the pipeline would use; pipeline options (--output_dir, --max_train_samples, --ted.mse_alpha 20, ...) mean what
they mean to `ted pipeline`. It reads the teacher / student / Stage I folders that `ted pipeline` wrote under the
run folder: run the pipeline once up to Stage I (`--methods kd` trains teacher and student; TED also needs the
two Stage I folders), then the doctor, then the rest."""


def run_pipeline_doctor(argv: list[str]) -> Findings:
    from ted.pipelines.config import parse_overrides
    from ted.pipelines.runner import _stage_call_kwargs, plan_seed, task_configs
    from ted.settings.parse import TedArgumentParser, parse_mapping
    from ted.stages.registry import run_command

    parser = TedArgumentParser(prog="ted doctor", usage=PIPELINE_HELP)
    parser.add_argument("--pipeline_config", required=True)
    parser.add_argument("--task")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--method", default="ted", choices=["ted", "kd", "lwd"])
    parser.add_argument("--json")
    parser.add_argument("--doctor_eval_samples", type=int, default=256)
    parser.add_argument("--doctor_batches", type=int, default=4)
    args, rest = parser.parse_known_args(argv)
    _, overrides = parse_overrides(rest)  # everything else is a pipeline option
    configs = task_configs([args.pipeline_config], overrides)
    chosen = [(t, c) for t, c in configs if args.task in (None, t)]
    if not chosen:
        raise TedInputError(f"{args.pipeline_config} has no task {args.task!r}; it has {[t for t, _ in configs]}.")
    task, cfg = chosen[0]
    if not cfg.get("output_dir"):
        raise TedInputError("Give the pipeline's run folder with --output_dir (the doctor reads its stage folders).")
    seed = args.seed if args.seed is not None else int((cfg.get("seeds") or [42])[0])
    seed_dir = Path(cfg["output_dir"]) / task / f"seed{seed}"
    cfg["methods"] = [args.method]
    spec = next(s for s in plan_seed(task, cfg, seed, seed_dir) if s.role == args.method)
    for src in spec.inputs.values():
        if src.role and not (seed_dir / src.role / artifacts.STAGE_FILE).is_file():
            raise TedInputError(
                f"{seed_dir / src.role} is not there yet: the doctor checks the {args.method} stage with the models "
                f"the pipeline made. Run `ted pipeline --config {args.pipeline_config} --seeds {seed} --methods kd` "
                "(teachers and students) or the Stage I sections first."
            )
    kwargs = _stage_call_kwargs(spec, seed_dir)
    kwargs.pop("output_dir", None)
    kwargs.update(json=args.json, doctor_eval_samples=args.doctor_eval_samples, doctor_batches=args.doctor_batches)
    return run_command("doctor", parse_mapping("doctor", kwargs, where=args.pipeline_config))
