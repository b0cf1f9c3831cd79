"""The report's PNG plots, drawn on matplotlib Figures without pyplot so the caller's backend stays as it is."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Union

from ted import artifacts
from ted.errors import TedInputError
from ted.reporting.collect import METRIC_NAMES, RESULT_ROWS, TaskRuns, constant_baseline, eval_curve, seed_values

if TYPE_CHECKING:
    import numpy as np
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

LOSS_TERMS = ["loss", "loss_pred", "loss_kl", "loss_mse"]
METHOD_COLORS = {
    "teacher": "#444444",
    "student": "#8c564b",
    "kd": "#1f77b4",
    "lwd": "#ff7f0e",
    "ted": "#2ca02c",
    "teacher_stage1": "#444444",
    "student_stage1": "#2ca02c",
}


def _figure(figsize: tuple[float, float], ncols: int = 1) -> tuple[Figure, Union[Axes, np.ndarray]]:
    """A figure and its axes without pyplot: the caller's matplotlib backend (a notebook's) stays as it is."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots(1, ncols)


def save_png(fig: Figure, path: Path, dpi: int = 100) -> Path:
    """Render to memory (Agg), then write the file whole: a kill never leaves a 0-byte or cut PNG."""
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return artifacts.atomic_write(path, buffer.getvalue())


def _save(fig: Figure, path: Path) -> Path:
    from matplotlib.ticker import MaxNLocator

    for ax in fig.axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    return save_png(fig, path)


def _log_if_wide(ax: Axes, values: Sequence[float]) -> None:
    """A log axis for positive values spanning more than 20x (perplexities of a layer-dropped student and of a
    trained one), where a linear axis would flatten all but the largest."""
    if values and min(values) > 0 and max(values) / min(values) > 20:
        ax.set_yscale("log")


def _finish(ax: Axes, xlabel: str, ylabel: str, title: str, legend_size: Optional[int] = None) -> None:
    """Labels, title, grid and legend of a one-panel plot."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=legend_size)


def draw_loss_terms(axes: Union[np.ndarray, Sequence[Axes]], series: list[tuple[str, Optional[str], Path]]) -> None:
    """One panel per Stage II loss term; `series` = (colour, legend label or None, stage folder)."""
    for color, label, folder in series:
        history = artifacts.read_json(Path(folder) / artifacts.LOG_HISTORY)
        for ax, term in zip(axes, LOSS_TERMS):
            points = [(h["step"], h[term]) for h in history if isinstance(h.get(term), (int, float))]
            if points and any(v > 0 for _, v in points):  # log scale: a run lacking a term draws nothing
                ax.plot(*zip(*points), color=color, alpha=0.8, marker=".", label=label)
    for ax, term in zip(axes, LOSS_TERMS):
        ax.set_title("total loss" if term == "loss" else term.replace("loss_", "") + " term")
        ax.set_xlabel("step")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0].legend()


def plot_loss_terms(runs: dict[str, str | Path], path: str | Path) -> Path:
    """The loss terms of a few stage folders, one colour per run (used by `ted demo`)."""
    fig, axes = _figure(figsize=(4 * len(LOSS_TERMS), 3.2), ncols=len(LOSS_TERMS))
    draw_loss_terms(axes, [(f"C{i}", name, Path(folder)) for i, (name, folder) in enumerate(runs.items())])
    fig.tight_layout()
    return save_png(fig, Path(path), dpi=110)


def plot_task_losses(runs: TaskRuns, path: Path) -> Optional[Path]:
    """Stage II loss terms over training steps, one colour per method, one line per seed."""
    methods = [m for m in ("ted", "kd", "lwd") if runs.folders(m)]
    if not methods:
        return None
    fig, axes = _figure(figsize=(4 * len(LOSS_TERMS), 3.2), ncols=len(LOSS_TERMS))
    draw_loss_terms(
        axes,
        [
            (METHOD_COLORS[m], m.upper() if i == 0 else None, folder)
            for m in methods
            for i, folder in enumerate(runs.folders(m))
        ],
    )
    fig.suptitle(f"{runs.task}: Stage II loss terms (one line per seed)")
    return _save(fig, path)


def _layer_scores(runs: TaskRuns, role: str, metric: str, scale: float) -> dict[int, list[float]]:
    """1-based layer -> the Stage I head's dev score of each seed."""
    per_layer: dict[int, list[float]] = {}
    for folder in runs.folders(role):
        scores_file = folder / artifacts.STAGE1_SCORES
        scores = artifacts.read_json(scores_file) if scores_file.is_file() else {}
        for layer, values in scores.items():
            if metric in values:
                per_layer.setdefault(int(layer) + 1, []).append(scale * values[metric])
    return per_layer


def plot_stage1_layers(runs: TaskRuns, metric: str, path: Path, scale: float) -> Optional[Path]:
    """Each Stage I filter head's dev score by layer, teacher and student (mean ± std over seeds)."""
    import statistics

    roles = [r for r in ("teacher_stage1", "student_stage1") if runs.folders(r)]
    if not roles:
        return None
    fig, ax = _figure(figsize=(6, 3.5))
    shown: list[float] = []
    for role in roles:
        per_layer = _layer_scores(runs, role, metric, scale)
        if not per_layer:
            continue
        layers = sorted(per_layer)
        means = [statistics.fmean(per_layer[x]) for x in layers]
        shown += means
        stds = [statistics.stdev(per_layer[x]) if len(per_layer[x]) > 1 else 0.0 for x in layers]
        ax.errorbar(
            layers,
            means,
            yerr=stds,
            marker="o",
            capsize=3,
            color=METHOD_COLORS[role],
            label=role.replace("_stage1", ""),
        )
    baseline = constant_baseline(runs)
    if baseline is not None:  # a head at this line learned nothing about the task (ted doctor flags it)
        ax.axhline(scale * baseline, color="#999999", linestyle=":", label="best constant prediction")
    teacher = seed_values(runs.folders("teacher"), f"eval_{metric}")
    if teacher:  # the whole teacher's own output: what its last layer's head can reach
        ax.axhline(scale * statistics.fmean(teacher), color="#444444", linestyle="--", label="teacher's own output")
        shown.append(scale * statistics.fmean(teacher))
    _log_if_wide(ax, shown)
    title = f"{runs.task}: Stage I filter heads, dev score per layer"
    _finish(ax, "layer (1-based) carrying the filter", f"dev {METRIC_NAMES.get(metric, metric)}", title)
    return _save(fig, path)


def plot_layer_cka(runs: TaskRuns, path: Path) -> Optional[Path]:
    """Linear CKA between matched teacher and student layers (TED's layer map) on dev examples: the fine-tuned
    student before Stage II, and each Stage II student after it (the first seed that has them)."""
    seed = next((s for s in sorted(runs.stages.get("ted", {})) if s in runs.stages.get("teacher_stage1", {})), None)
    if seed is None:
        return None
    info = artifacts.stage_info(runs.stages["ted"][seed]) or {}
    pairs = (info.get("lineage") or {}).get("layer_pairs")
    if not pairs:
        return None
    students = {"before Stage II (fine-tuned student)": runs.stages.get("student_stage1", {}).get(seed)}
    students.update({f"after {m.upper()}": runs.stages.get(m, {}).get(seed) for m in ("ted", "kd", "lwd")})
    students = {k: str(v) for k, v in students.items() if v is not None}
    try:
        from ted.reporting.similarity import layer_cka

        found = layer_cka(str(runs.stages["teacher_stage1"][seed]), students, pairs, info.get("args", {}))
    except (OSError, ValueError, TedInputError) as err:  # a run folder without its models or data
        print(f"ted report: no CKA plot for {runs.task}: {err}".splitlines()[0])
        return None
    if not found:
        return None
    fig, ax = _figure(figsize=(6, 3.5))
    labels = [f"S{s + 1}-T{t + 1}" for s, t in pairs]
    colors = {"before": METHOD_COLORS["student"], "after TED": METHOD_COLORS["ted"], "after KD": METHOD_COLORS["kd"]}
    for name, values in found.items():
        color = next((c for key, c in colors.items() if name.startswith(key)), METHOD_COLORS["lwd"])
        ax.plot(labels, values, marker="o", label=name, color=color, linestyle="--" if "before" in name else "-")
    ax.set_ylim(0, 1.02)
    title = f"{runs.task}: teacher-student layer similarity (seed {seed}, dev)"
    _finish(ax, "matched layers (student - teacher, 1-based)", "linear CKA", title, legend_size=8)
    return _save(fig, path)


def plot_dev_curves(runs: TaskRuns, metric: str, path: Path, scale: float) -> Optional[Path]:
    """The dev metric after every epoch, per model (one line per seed)."""
    fig, ax = _figure(figsize=(6, 3.5))
    drawn, shown = False, []
    for role, name in RESULT_ROWS:
        for i, folder in enumerate(runs.folders(role)):
            if not (folder / artifacts.LOG_HISTORY).is_file():  # a model scored once, not trained (evaluate)
                continue
            points = eval_curve(artifacts.read_json(folder / artifacts.LOG_HISTORY), f"eval_{metric}")
            if points:
                epochs, values = zip(*points)
                ax.plot(
                    epochs,
                    [scale * v for v in values],
                    marker="o",
                    alpha=0.8,
                    color=METHOD_COLORS[role],
                    label=name if i == 0 else None,
                )
                drawn, shown = True, shown + [scale * v for v in values]
    if not drawn:
        return None
    _log_if_wide(ax, shown)
    title = f"{runs.task}: dev score per epoch (one line per seed)"
    _finish(ax, "epoch", f"dev {METRIC_NAMES.get(metric, metric)}", title, legend_size=8)
    return _save(fig, path)
