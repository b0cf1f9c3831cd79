"""The model card (`README.md`) `ted export` writes next to an exported student.

Standard Hugging Face metadata header (library, base models, tags, datasets, metrics, pipeline
tag), then: the models involved, task, method and hyperparameters, dev results (mean ± std over
seeds when the stage is part of a multi-seed `ted pipeline` run), size and measured speed against
the teacher (`ted.reporting.speed`, the same helper `ted report` uses).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

from ted import artifacts
from ted.method.kinds import get_kind
from ted.reporting.collect import count_parameters
from ted.reporting.render import md_row
from ted.reporting.speed import SPEED_HEADER, compare, speed_cells
from ted.reporting.tables import mean_std

if TYPE_CHECKING:
    from huggingface_hub import ModelCardData

HYPERPARAMETERS = (
    "method",
    "kl_alpha",
    "mse_alpha",
    "temperature",
    "paper_compat",
    "filter_interval",
    "teacher_filter_interval",
    "filter_output_dim",
    "filter_nonlinear",
    "learning_rate",
    "num_train_epochs",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "warmup_steps",
    "weight_decay",
    "max_seq_length",
    "block_size",
    "max_train_samples",
    "fp16",
    "bf16",
    "seed",
)
DATASETS = {"squad_v2": "rajpurkar/squad_v2", "squad": "rajpurkar/squad"}
# Not metrics: timings, losses, counts (a causal LM's eval_tokens is how many dev tokens its perplexity scored).
HIDDEN_METRICS = ("runtime", "per_second", "_loss", "preparation_time", "_total", "_tokens")
# Every card says this: `ted export --overwrite_output_dir` replaces only a folder whose card has it.
SIGNATURE = "Made with [`ted`]("
CITATION = """@inproceedings{liang2023less,
  title={Less is More: Task-aware Layer-wise Distillation for Language Model Compression},
  author={Liang, Chen and Zuo, Simiao and Zhang, Qingru and He, Pengcheng and Chen, Weizhu and Zhao, Tuo},
  booktitle={International Conference on Machine Learning},
  year={2023}
}"""


def root_model(path: Optional[str]) -> Optional[str]:
    """Follow a stage's lineage back to the model it started from (a hub id or a plain folder)."""
    seen = set()
    while path and path not in seen:
        seen.add(path)
        info = artifacts.stage_info(path) if Path(path).is_dir() else None
        if info is None:
            return path
        lineage = info.get("lineage", {})
        path = lineage.get("student") or lineage.get("model") or lineage.get("imported_from")
    return path


def hub_dataset(name: Optional[str]) -> bool:
    """Whether a --dataset_name is a hub id (the card's metadata may list it), not a local folder."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not name or Path(name).exists():
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:  # a path such as /data/owt or ./owt
        return False
    return True


def dataset_id(stage: dict) -> Optional[str]:
    """The hub dataset the stage trained on, for the card's `datasets` metadata (None: local files)."""
    from ted.tasks.glue import canonical_glue_name

    name, args = stage.get("task", {}).get("name"), stage.get("args", {})
    if canonical_glue_name(name):
        return args.get("dataset_name") or "nyu-mll/glue"
    if name == "causal_lm":  # text from a hub dataset, or from files (then no id)
        return args["dataset_name"] if hub_dataset(args.get("dataset_name")) else None
    return DATASETS.get(name)


def data_lines(args: dict) -> list[str]:
    """The Training section's line naming a --dataset_name the stage read (configuration, how dev was cut)."""
    name, config = args.get("dataset_name"), args.get("dataset_config_name")
    if not name:
        return []
    percent = args.get("validation_split_percentage")
    text = f"Data: the {'hub dataset' if hub_dataset(name) else 'dataset folder'} `{name}`"
    text += f", configuration `{config}`" if config else ""
    if percent is not None:
        text += f"; dev set: its validation split, or (where it has none) the first {percent}% of its train rows"
    return [text + ".", ""]


def shown_metrics(metrics: dict) -> dict[str, float]:
    return {
        k: v
        for k, v in metrics.items()
        if k.startswith("eval_")
        and isinstance(v, (int, float))
        and not k.endswith(HIDDEN_METRICS)
        and not k.startswith(("eval_HasAns", "eval_NoAns", "eval_best"))
    }


def seed_folders(stage_dir: Path, stage: dict) -> list[Path]:
    """The same stage in every seed of a `ted pipeline` run (OUTPUT/<task>/seed<k>/<stage>)."""
    if not (stage.get("pipeline") or stage_dir.parent.name.startswith("seed")):
        return [stage_dir]
    found = [
        p
        for p in sorted(stage_dir.parent.parent.glob(f"seed*/{stage_dir.name}"))
        if (p / artifacts.EVAL_RESULTS).is_file()
    ]
    return found or [stage_dir]


# The card: the metadata block huggingface_hub serialises, then ted's own Markdown.
TEMPLATE = "---\n{{ card_data }}\n---\n\n{{ body }}"


def card_data(stage: dict, bases: list[str], metrics: dict) -> ModelCardData:
    """The metadata the Hub reads (library, base models, tags, datasets, metrics, pipeline tag)."""
    from huggingface_hub import ModelCardData

    task, method = stage.get("task", {}), stage.get("method") or stage.get("stage", "model")
    kind = ["fine-tuned"] if stage.get("stage") == "finetune" else ["distillation", "knowledge-distillation", method]
    head = get_kind(task["head"]) if task.get("head") else None
    return ModelCardData(
        library_name="transformers",
        base_model=bases or None,
        tags=list(dict.fromkeys(["ted", *kind, task.get("name", "task")])),
        datasets=[dataset_id(stage)] if dataset_id(stage) else None,
        metrics=[k[5:] for k in shown_metrics(metrics)] or None,
        pipeline_tag=head.pipeline_tag if head else None,
    )


def _results(stage_dir: Path, stage: dict, metrics: dict) -> list[str]:
    folders = seed_folders(stage_dir, stage)
    seed = stage.get("args", {}).get("seed")
    lines = ["## Dev results", "", f"This model (seed {seed}):", "", "| metric | value |", "|---|---:|"]
    lines += [f"| {k[5:]} | {v:.4f} |" for k, v in shown_metrics(metrics).items()]
    if isinstance(metrics.get("eval_tokens"), (int, float)):
        lines += ["", f"Scored over {int(metrics['eval_tokens']):,} dev tokens (each predicted from the ones before)."]
    if len(folders) > 1:
        seeds = ", ".join(f.parent.name.replace("seed", "") for f in folders)
        lines += [
            "",
            f"The same recipe over {len(folders)} seeds ({seeds}), mean ± sample std:",
            "",
            "| metric | mean ± std | n |",
            "|---|---:|---:|",
        ]
        for key in shown_metrics(metrics):
            values = [artifacts.read_json(f / artifacts.EVAL_RESULTS).get(key) for f in folders]
            values = [float(v) for v in values if isinstance(v, (int, float))]
            lines.append(f"| {key[5:]} | {mean_std(values, digits=4)} | {len(values)} |")
    return lines + [""]


def _speed(stage_dir: Path, teacher: Optional[str], speed_rows: Optional[list[dict]]) -> list[str]:
    lines = ["## Size and speed", "", md_row(SPEED_HEADER), "|---|---:|---|---|---:|---:|"]
    sizes = {"student": count_parameters(stage_dir)}
    if teacher and Path(teacher).is_dir():
        sizes["teacher"] = count_parameters(teacher)
    if not speed_rows:
        lines += [f"| {role} | {n:,} | — | — | — | — |" for role, n in sizes.items()]
        return lines + ["", "Speed not measured (`ted export --no_speed`, or the teacher is not a local folder).", ""]
    lines += [md_row(speed_cells(r, sizes.get(r["role"], 0))) for r in speed_rows]
    by_role = {(r["role"], r["device"]): r["latency_ms"] for r in speed_rows}
    ratios = [
        f"{by_role[('teacher', d)] / by_role[('student', d)]:.2f}× faster on {d}"
        for (role, d) in by_role
        if role == "student" and ("teacher", d) in by_role
    ]
    if "teacher" in sizes:
        ratios.insert(0, f"{sizes['student'] / max(sizes['teacher'], 1):.0%} of the teacher's parameters")
    how = (
        "Random token ids, no padding, eval mode, median of timed calls (teacher and student alternating), "
        "measured when this card was written."
    )
    lines += ["", ("Student vs teacher: " + "; ".join(ratios) + ". " if ratios else "") + how, ""]
    return lines


def _made(stage: dict) -> str:
    """What the model is: a fine-tuned model, or a student and its distillation method (if recorded)."""
    if stage.get("stage") == "finetune":
        return "model fine-tuned with ted"
    method = stage.get("method")
    return f"student distilled with {method.upper()}" if method else "student distilled (method not recorded)"


def build(stage_dir: Path, stage: Optional[dict], metrics: dict, speed_rows: Optional[list[dict]] = None) -> str:
    """The card's text: metadata, models, training settings, dev results, size and speed, usage, citation."""
    stage = stage or {}
    lineage, args = stage.get("lineage", {}), stage.get("args", {})
    task, method = stage.get("task", {}), stage.get("method") or stage.get("stage", "unknown")
    teacher = lineage.get("teacher")
    start = lineage.get("student") or lineage.get("model") or lineage.get("imported_from")
    bases = [b for b in dict.fromkeys([root_model(start), root_model(teacher)]) if b]
    lines = [
        f"# {task.get('name', 'task')} {_made(stage)}",
        "",
        SIGNATURE + "https://arxiv.org/abs/2210.01351) (task-aware layer-wise distillation, TED, "
        "ICML 2023). Filters and Stage I heads were stripped: this is a stock Hugging Face model.",
        "",
        "## Models",
        "",
        "| role | model |",
        "|---|---|",
        f"| student initialised from | `{start}` (base: `{root_model(start)}`) |",
    ]
    if teacher:
        lines.append(f"| teacher | `{teacher}` (base: `{root_model(teacher)}`) |")
    lines += [
        "",
        "## Training",
        "",
        f"Task `{task.get('name')}` ({task.get('head')}), selection metric "
        f"`{task.get('selection_metric')}`; method **{method}**.",
        "",
        *data_lines(args),
        "| setting | value |",
        "|---|---|",
    ]
    lines += [f"| {k} | {args[k]} |" for k in HYPERPARAMETERS if args.get(k) is not None]
    lines += [""] + _results(stage_dir, stage, metrics) + _speed(stage_dir, teacher, speed_rows)
    head = get_kind(task.get("head") or "classification")
    lines += [
        "## Use",
        "",
        "```python",
        f"from transformers import AutoTokenizer, {head.auto_class_name}, pipeline",
        "",
        f'model = {head.auto_class_name}.from_pretrained("PATH")',
        'tokenizer = AutoTokenizer.from_pretrained("PATH")',
        f'pipe = pipeline("{head.pipeline_tag}", model="PATH")',
        "```",
        "",
        "## Citation",
        "",
        "```bibtex",
        CITATION,
        "```",
        "",
    ]
    from huggingface_hub import ModelCard

    card = ModelCard.from_template(card_data(stage, bases, metrics), template_str=TEMPLATE, body="\n".join(lines))
    return str(card)


def measure_speed(stage_dir: Path, stage: Optional[dict]) -> Optional[list[dict]]:
    """Student vs teacher timings for the card; None when the teacher cannot be loaded locally."""
    teacher = (stage or {}).get("lineage", {}).get("teacher")
    teacher = teacher if teacher and (Path(teacher) / "config.json").is_file() else None
    try:
        return compare(stage_dir, teacher)
    except (OSError, ValueError) as err:  # an unloadable folder should not block the export
        import logging

        logging.getLogger(__name__).warning("Speed not measured: %s", err)
        return None
