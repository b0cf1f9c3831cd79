"""Write the distilled student alone: a stock Hugging Face model folder with a model card."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from .. import artifacts
from ..errors import TedInputError
from .common import StageResult


def model_card(stage: Optional[dict], metrics: dict) -> str:
    """A Hugging Face model card: metadata header, then what the model is and how it was made."""
    task = (stage or {}).get("task", {})
    lineage = (stage or {}).get("lineage", {})
    method = (stage or {}).get("method") or (stage or {}).get("stage", "unknown")
    roles = {"student initialised from": lineage.get("student") or lineage.get("model"),
             "teacher": lineage.get("teacher")}
    tags = list(dict.fromkeys(["ted", "distillation", method]))
    lines = ["---", "library_name: transformers", "tags:", *[f"- {t}" for t in tags]]
    if task.get("head"):
        kind = "question-answering" if task["head"] == "span" else "text-classification"
        lines.append(f"pipeline_tag: {kind}")
    lines += ["---", "", f"# {task.get('name', 'task')} student ({method})", ""]
    lines.append("Distilled with `ted` (task-aware layer-wise distillation, TED, ICML 2023). "
                 "Filters and Stage I heads were stripped: this is a stock model.")
    made = [f"{role} `{path}`" for role, path in roles.items() if path]
    if made:
        lines += ["", "Made from: " + "; ".join(made) + "."]
    args = (stage or {}).get("args", {})
    keys = ("kl_alpha", "mse_alpha", "temperature", "filter_interval", "teacher_filter_interval", "learning_rate",
            "num_train_epochs", "per_device_train_batch_size", "seed", "paper_compat")
    hyper = [f"| {k} | {args[k]} |" for k in keys if k in args]
    if hyper:
        lines += ["", "## Training", "", "| setting | value |", "|---|---|", *hyper]
    if metrics:
        lines += ["", "## Dev results", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4f} |" for k, v in metrics.items() if isinstance(v, float) and k.startswith("eval_")
                  and not k.endswith(("runtime", "per_second", "_loss", "preparation_time"))]
    return "\n".join(lines) + "\n"


def run_export(stage_dir: str, output_dir: str, overwrite: bool = False) -> StageResult:
    src = Path(stage_dir)
    if not src.is_dir():
        raise TedInputError(f"{src} is not a folder. Pass the output folder of a ted stage.")
    stage = artifacts.stage_info(src)
    metrics_path = src / artifacts.EVAL_RESULTS
    metrics = artifacts.read_json(metrics_path) if metrics_path.is_file() else {}
    dst = artifacts.export_student(src, output_dir, overwrite, model_card(stage, metrics))
    return StageResult(str(dst), metrics)
