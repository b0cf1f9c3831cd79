"""Write the distilled student alone: a stock Hugging Face model folder with a model card."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from .. import artifacts
from ..errors import TedInputError
from ..artifacts import StageResult


def model_card(stage: Optional[dict], metrics: dict, stage_dir: Optional[Path] = None,
               speed_rows: Optional[list] = None) -> str:
    """A Hugging Face model card: metadata header, then what the model is and how it was made.

    With `stage_dir` (what `ted export` passes) the full card of `ted.model_card`: base models, results
    over seeds, size and speed against the teacher."""
    if stage_dir is not None:
        from ..model_card import build

        return build(Path(stage_dir), stage, metrics, speed_rows)
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


def run_export(stage_dir: str, output_dir: str, overwrite: bool = False, measure_speed: bool = True) -> StageResult:
    src = Path(stage_dir)
    if not src.is_dir():
        raise TedInputError(f"{src} is not a folder. Pass the output folder of a ted stage.")
    stage = artifacts.stage_info(src)
    metrics_path = src / artifacts.EVAL_RESULTS
    metrics = artifacts.read_json(metrics_path) if metrics_path.is_file() else {}
    artifacts.check_output_dir(str(output_dir), overwrite)  # fail before timing anything
    speed_rows = None
    if measure_speed and (src / "config.json").is_file():
        from ..model_card import measure_speed as measure

        speed_rows = measure(src, stage)
    card = model_card(stage, metrics, stage_dir=src, speed_rows=speed_rows)
    dst = artifacts.export_student(src, output_dir, overwrite, card)
    return StageResult(str(dst), metrics)
