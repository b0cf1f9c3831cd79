"""Tables and plots from stage folders."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from . import artifacts


def count_parameters(folder: str | Path) -> int:
    """Parameters of the stock model in a stage folder (filters and Stage I heads excluded)."""
    from safetensors import safe_open

    total = 0
    for file in sorted(Path(folder).glob("model*.safetensors")):
        with safe_open(str(file), "pt") as f:
            for key in f.keys():
                total += _numel(f.get_slice(key).get_shape())
    return total


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def selection_score(folder: str | Path) -> tuple[str, Optional[float]]:
    stage = artifacts.stage_info(folder) or {}
    metric = stage.get("task", {}).get("selection_metric", "accuracy")
    results = artifacts.read_json(Path(folder) / artifacts.EVAL_RESULTS)
    return metric, results.get(f"eval_{metric}")


def results_table(rows: list[tuple[str, str | Path]]) -> str:
    """Markdown table: one row per (name, stage folder) with its dev selection metric and size."""
    lines = ["| model | dev metric | score | parameters |", "|---|---|---:|---:|"]
    for name, folder in rows:
        metric, score = selection_score(folder)
        shown = f"{100 * score:.2f}" if score is not None else "n/a"
        lines.append(f"| {name} | {metric} | {shown} | {count_parameters(folder):,} |")
    return "\n".join(lines)


def plot_loss_terms(runs: dict[str, str | Path], path: str | Path) -> Path:
    """One panel per loss term (pred, kl, mse, total), one line per run, from each run's log history."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    terms = ["loss", "loss_pred", "loss_kl", "loss_mse"]
    fig, axes = plt.subplots(1, len(terms), figsize=(4 * len(terms), 3.2))
    for i, (name, folder) in enumerate(runs.items()):
        history = artifacts.read_json(Path(folder) / artifacts.LOG_HISTORY)
        color = f"C{i}"  # one colour per run in every panel, even where a run lacks a term
        for ax, term in zip(axes, terms):
            points = [(h["step"], h[term]) for h in history if term in h]
            if points:
                ax.plot(*zip(*points), label=name, marker=".", color=color)
    for ax, term in zip(axes, terms):
        ax.set_title("total loss" if term == "loss" else term.replace("loss_", "") + " term")
        ax.set_xlabel("step")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
