"""Tables and plots from stage folders."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from ted import artifacts
from ted.errors import TedInputError
from ted.method.kinds import HeadKind, get_kind


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


LOSS_TERMS = ["loss", "loss_pred", "loss_kl", "loss_mse"]


def draw_loss_terms(axes, series: list[tuple[str, Optional[str], Path]]) -> None:
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


# ------------------------------------------------------------------------------------------------
# `ted report RUN_DIR ...`: pipeline runs -> report.md + self-contained report.html
# ------------------------------------------------------------------------------------------------

PIPELINE_ROLES = ("teacher", "student", "teacher_stage1", "student_stage1", "ted", "kd", "lwd")
RESULT_ROWS = (
    ("teacher", "teacher (fine-tuned)"),
    ("student", "student (fine-tuned)"),
    ("kd", "student + KD"),
    ("lwd", "student + LWD"),
    ("ted", "student + TED"),
)
METHOD_COLORS = {
    "teacher": "#444444",
    "student": "#8c564b",
    "kd": "#1f77b4",
    "lwd": "#ff7f0e",
    "ted": "#2ca02c",
    "teacher_stage1": "#444444",
    "student_stage1": "#2ca02c",
}
# Metrics shown beside the selection metric when a task reports them (SQuAD: exact and f1).
SHOWN_METRICS = (
    "accuracy",
    "f1",
    "matthews_correlation",
    "pearson",
    "spearmanr",
    "exact",
    "validation_mismatched_accuracy",
)
METRIC_NAMES = {
    "accuracy": "acc",
    "f1": "F1",
    "matthews_correlation": "MCC",
    "pearson": "Pearson",
    "spearmanr": "Spearman",
    "exact": "EM",
    "validation_mismatched_accuracy": "acc (mm)",
}


class TaskRuns:
    """Stage folders of one task: role -> seed -> folder, plus the run's pipeline.json."""

    def __init__(self, task: str):
        self.task = task
        self.stages: dict[str, dict[int, Path]] = {}
        self.pipeline: dict = {}

    def folders(self, role: str) -> list[Path]:
        return [self.stages[role][s] for s in sorted(self.stages.get(role, {}))]

    def info(self) -> dict:
        first = next(iter(self.stages.values()))
        return artifacts.stage_info(next(iter(first.values()))) or {}


def _seed_of(folder: Path, info: dict) -> int:
    name = folder.parent.name
    if name.startswith("seed") and name[4:].isdigit():
        return int(name[4:])
    return int(info.get("args", {}).get("seed", 0))


def find_runs(run_dirs: list[str | Path]) -> dict[str, TaskRuns]:
    """Every pipeline stage folder under the given run folders, grouped by task, role and seed."""
    runs: dict[str, TaskRuns] = {}
    for run_dir in map(Path, run_dirs):
        if not run_dir.is_dir():
            raise TedInputError(f"{run_dir} is not a folder. Pass the --output_dir of `ted pipeline`.")
        for path in sorted(run_dir.rglob(artifacts.STAGE_FILE)):
            folder = path.parent
            if any(p.endswith(".incomplete") or p.startswith(".") for p in folder.relative_to(run_dir).parts):
                continue
            info = artifacts.read_json(path)
            meta = info.get("pipeline") or {}
            role = meta.get("role") or (folder.name if folder.name in PIPELINE_ROLES else None)
            if role is None:
                continue
            task = meta.get("task") or info.get("task", {}).get("name", "task")
            entry = runs.setdefault(task, TaskRuns(task))
            entry.stages.setdefault(role, {})[int(meta.get("seed", _seed_of(folder, info)))] = folder
            pipeline_file = folder.parent.parent / "pipeline.json"
            if not entry.pipeline and pipeline_file.is_file():
                entry.pipeline = artifacts.read_json(pipeline_file)
    if not runs:
        raise TedInputError(
            f"No pipeline stage folders under {', '.join(map(str, run_dirs))} (run `ted pipeline` first)."
        )
    return runs


def metric_keys(runs: TaskRuns) -> list[str]:
    """The selection metric first, then the other task metrics the results hold."""
    info = runs.info()
    selection = info.get("task", {}).get("selection_metric", "accuracy")
    present: set[str] = set()
    for role, _ in RESULT_ROWS:
        for folder in runs.folders(role):
            present |= {k[5:] for k in artifacts.read_json(folder / artifacts.EVAL_RESULTS) if k.startswith("eval_")}
    return [selection] + [m for m in SHOWN_METRICS if m in present and m != selection]


def task_kind(info: dict) -> HeadKind:
    """The head kind of a run's task (ted_stage.json), classification when a stage does not say."""
    return get_kind(info.get("task", {}).get("head") or "classification")


def metric_scale(runs: TaskRuns) -> float:
    """Scores are shown in percent, like the paper (SQuAD metrics already are)."""
    return task_kind(runs.info()).metric_scale


def seed_values(folders: list[Path], key: str) -> list[float]:
    values = []
    for folder in folders:
        results = artifacts.read_json(folder / artifacts.EVAL_RESULTS)
        if isinstance(results.get(key), (int, float)):
            values.append(float(results[key]))
    return values


def mean_std(values: list[float], scale: float = 1.0, digits: int = 2) -> str:
    """'m ± s' over seeds (sample std); just 'm' for one seed; 'n/a' for none."""
    import statistics

    if not values:
        return "n/a"
    mean = scale * statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {scale * statistics.stdev(values):.{digits}f}"


def _paper_cell(paper: Optional[dict], role: str) -> str:
    if not paper or paper.get(role) is None:
        return "—"
    value = paper[role]
    return " / ".join(str(v) for v in value) if isinstance(value, list) else str(value)


def task_results_table(runs: TaskRuns) -> tuple[list[str], list[list[str]]]:
    keys, scale = metric_keys(runs), metric_scale(runs)
    paper = runs.pipeline.get("paper_results")
    header = ["model", "seeds"] + [f"dev {METRIC_NAMES.get(k, k)}" for k in keys]
    if paper:
        header.append("paper (" + " / ".join(METRIC_NAMES.get(m, m) for m in paper.get("metrics", [])) + ")")
    rows = []
    for role, name in RESULT_ROWS:
        folders = runs.folders(role)
        if not folders:
            continue
        row = [name, str(len(folders))] + [mean_std(seed_values(folders, f"eval_{k}"), scale) for k in keys]
        rows.append(row + ([_paper_cell(paper, role)] if paper else []))
    return header, rows


# ---------------------------------------------------------------------------------- significance

# Method pairs compared in the significance table (issue 14), first minus second.
PAIRS = (("ted", "kd"), ("ted", "lwd"), ("ted", "student"), ("kd", "student"))
PREDICTIONS_FILE = "eval_predictions.npz"  # stages.common.EVAL_PREDICTIONS (not imported: it pulls in torch)


def metric_function(info: dict):
    """The selection metric of a stage's task as `fn(decoded predictions, labels) -> float`."""
    from ted.reporting.stats import fast_metric
    from ted.tasks.metrics import classification_metric_fn, glue_metric_fn, regression_metric_fn

    task = info.get("task", {})
    fast = fast_metric(task.get("selection_metric", "accuracy"))
    if fast is not None:
        return fast
    try:
        fn = glue_metric_fn(task.get("name", ""))
    except ValueError:
        labels = task.get("label_list") or []
        fn = regression_metric_fn() if task_kind(info).scores else classification_metric_fn(len(labels))
    key = task.get("selection_metric", "accuracy")
    return lambda preds, labels: fn(preds, labels)[key]


def decoded_predictions(folder: Path, kind: HeadKind):
    """(decoded predictions, labels) from a stage's eval_predictions.npz, or None."""
    import numpy as np

    from ted.tasks.metrics import class_predictions, regression_predictions

    path = folder / PREDICTIONS_FILE
    if not path.is_file():
        return None
    with np.load(path) as data:
        predictions, labels = data["predictions"], data["labels"]
    decode = regression_predictions if kind.scores else class_predictions
    return decode(predictions), labels


def _interval(low, high, scale: float) -> str:
    return "—" if low is None else f"[{scale * low:+.2f}, {scale * high:+.2f}]"


def _p(p) -> str:
    return "—" if p is None else (f"{p:.3f}" if p >= 0.001 else "<0.001")


def bootstrap_cell(runs: TaskRuns, first: str, second: str, seeds: list[int], scale: float) -> str:
    """Per seed: the dev-example bootstrap interval of the difference and the paired permutation p."""
    from ted.reporting.stats import paired_bootstrap, significant

    info = runs.info()
    kind = task_kind(info)
    metric = metric_function(info)
    cells = []
    for seed in seeds:
        a = decoded_predictions(runs.stages[first][seed], kind)
        b = decoded_predictions(runs.stages[second][seed], kind)
        if a is None or b is None or len(a[1]) != len(b[1]) or not (a[1] == b[1]).all():
            continue
        found = paired_bootstrap(metric, a[0], b[0], a[1])
        mark = "" if significant(found["p"]) else ", n.s."
        cells.append(f"seed {seed}: {_interval(found['low'], found['high'], scale)} p {_p(found['p'])}{mark}")
    return "; ".join(cells) if cells else "no per-example predictions"


def significance_table(runs: TaskRuns) -> Optional[tuple[list[str], list[list[str]]]]:
    """Per method pair: mean difference over seeds with a 95% t interval and paired t-test, and per seed a paired
    bootstrap over dev examples; 'not significant' where p >= 0.05."""
    from ted.reporting.stats import seed_difference, significant

    keys, scale = metric_keys(runs), metric_scale(runs)
    key = f"eval_{keys[0]}"
    header = [
        "pair",
        "seeds",
        f"mean difference ({METRIC_NAMES.get(keys[0], keys[0])})",
        "95% interval (seeds)",
        "p (paired t, seeds)",
        "verdict",
        "per seed: 95% interval (dev bootstrap), p (paired permutation)",
    ]
    rows = []
    for first, second in PAIRS:
        seeds = sorted(set(runs.stages.get(first, {})) & set(runs.stages.get(second, {})))
        scored = [
            (s, seed_values([runs.stages[first][s]], key), seed_values([runs.stages[second][s]], key)) for s in seeds
        ]
        scored = [(s, x[0], y[0]) for s, x, y in scored if x and y]
        if not scored:
            continue
        seeds = [s for s, _, _ in scored]
        found = seed_difference([x for _, x, _ in scored], [y for _, _, y in scored])
        if found["p"] is None:
            verdict = "one seed: no test over seeds"
        else:
            verdict = "significant" if significant(found["p"]) else "not significant"
        rows.append(
            [
                f"{first.upper()} − {second.upper()}" if second != "student" else f"{first.upper()} − student",
                str(found["n"]),
                f"{scale * found['mean']:+.2f}",
                _interval(found["low"], found["high"], scale),
                _p(found["p"]),
                verdict,
                bootstrap_cell(runs, first, second, seeds, scale),
            ]
        )
    return (header, rows) if rows else None


# ---------------------------------------------------------------------------------------- plots


def _figure(figsize: tuple[float, float], ncols: int = 1):
    """A figure and its axes without pyplot: the caller's matplotlib backend (a notebook's) stays as it is."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots(1, ncols)


def save_png(fig, path: Path, dpi: int = 100) -> Path:
    """Render to memory (Agg), then write the file whole: a kill never leaves a 0-byte or cut PNG."""
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return artifacts.atomic_write(path, buffer.getvalue())


def _save(fig, path: Path) -> Path:
    from matplotlib.ticker import MaxNLocator

    for ax in fig.axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    return save_png(fig, path)


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


def constant_baseline(runs: TaskRuns) -> Optional[float]:
    """The best dev score of a model that predicts one class for every example (0 for a correlation of a
    constant), from the dev labels a stage saved in eval_predictions.npz; None when no stage saved them."""
    import numpy as np

    info = runs.info()
    kind = task_kind(info)
    metric = metric_function(info)
    for role, _ in RESULT_ROWS:
        for folder in runs.folders(role):
            found = decoded_predictions(folder, kind)
            if found is None:
                continue
            labels = found[1]
            if kind.scores:
                return float(metric(np.full(len(labels), float(np.mean(labels))), labels))
            return max(float(metric(np.full(len(labels), c), labels)) for c in np.unique(labels))
    return None


def plot_stage1_layers(runs: TaskRuns, metric: str, path: Path, scale: float) -> Optional[Path]:
    """Each Stage I filter head's dev score by layer, teacher and student (mean ± std over seeds)."""
    import statistics

    roles = [r for r in ("teacher_stage1", "student_stage1") if runs.folders(r)]
    if not roles:
        return None
    fig, ax = _figure(figsize=(6, 3.5))
    for role in roles:
        per_layer: dict[int, list[float]] = {}
        for folder in runs.folders(role):
            scores_file = folder / artifacts.STAGE1_SCORES
            scores = artifacts.read_json(scores_file) if scores_file.is_file() else {}
            for layer, values in scores.items():
                if metric in values:
                    per_layer.setdefault(int(layer) + 1, []).append(scale * values[metric])
        if not per_layer:
            continue
        layers = sorted(per_layer)
        means = [statistics.fmean(per_layer[x]) for x in layers]
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
    ax.set_xlabel("layer (1-based) carrying the filter")
    ax.set_ylabel(f"dev {METRIC_NAMES.get(metric, metric)}")
    ax.set_title(f"{runs.task}: Stage I filter heads, dev score per layer")
    ax.grid(alpha=0.3)
    ax.legend()
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
    ax.set_xlabel("matched layers (student - teacher, 1-based)")
    ax.set_ylabel("linear CKA")
    ax.set_title(f"{runs.task}: teacher-student layer similarity (seed {seed}, dev)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def eval_curve(history: list[dict], key: str) -> list[tuple[float, float]]:
    """(epoch, value) of the per-epoch evaluations (the final re-evaluation after training is left out)."""
    points: dict[float, float] = {}
    for entry in history:
        if "train_runtime" in entry:
            break
        if isinstance(entry.get(key), (int, float)) and "epoch" in entry:
            points.setdefault(float(entry["epoch"]), float(entry[key]))
    return sorted(points.items())


def plot_dev_curves(runs: TaskRuns, metric: str, path: Path, scale: float) -> Optional[Path]:
    """The dev metric after every epoch, per model (one line per seed)."""
    fig, ax = _figure(figsize=(6, 3.5))
    drawn = False
    for role, name in RESULT_ROWS:
        for i, folder in enumerate(runs.folders(role)):
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
                drawn = True
    if not drawn:
        return None
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"dev {METRIC_NAMES.get(metric, metric)}")
    ax.set_title(f"{runs.task}: dev score per epoch (one line per seed)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


# ---------------------------------------------------------------------------------- size and speed


def speed_table(runs: TaskRuns, batch_size: int, seq_len: int, iterations: int) -> tuple[list[str], list[list[str]]]:
    """Parameters and measured latency / throughput of the teacher and the (TED) student."""
    from ted.reporting.speed import compare

    teacher = next(iter(runs.folders("teacher")), None)
    student = next(iter(runs.folders("ted") or runs.folders("student") or runs.folders("kd")), None)
    header = [
        "model",
        "parameters",
        "device",
        "batch × seq len",
        "latency (ms / batch)",
        "throughput (seq / s)",
        "speed-up",
    ]
    rows, base = [], {}
    for r in compare(student, teacher, batch_size, seq_len, iterations):
        folder = teacher if r["role"] == "teacher" else student
        base.setdefault(r["device"], r["latency_ms"] if r["role"] == "teacher" else None)
        speedup = f"{base[r['device']] / r['latency_ms']:.2f}×" if base.get(r["device"]) else "—"
        device = f"CPU ({r['threads']} threads)" if r["device"] == "cpu" else r["device"]
        rows.append(
            [
                r["role"],
                f"{count_parameters(folder):,}",
                device,
                f"{r['batch_size']} × {r['seq_len']}",
                f"{r['latency_ms']:.1f}",
                f"{r['throughput']:.1f}",
                speedup,
            ]
        )
    return header, rows


# ------------------------------------------------------------------------------------ the document


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    import html

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render(blocks: list[tuple], out: Path) -> tuple[Path, Path]:
    """Blocks ('h1'|'h2'|'p', text), ('table', header, rows), ('img', path, caption) -> report.md + report.html."""
    import base64
    import html

    md, page = [], []
    for kind, *rest in blocks:
        if kind in ("h1", "h2"):
            md.append(("# " if kind == "h1" else "## ") + rest[0])
            page.append(f"<{kind}>{html.escape(rest[0])}</{kind}>")
        elif kind == "p":
            md.append(rest[0])
            page.append(f"<p>{html.escape(rest[0])}</p>")
        elif kind == "table":
            md.append(_md_table(*rest))
            page.append(_html_table(*rest))
        elif kind == "img":
            path, caption = rest
            md.append(f"![{caption}]({path.relative_to(out).as_posix()})")
            data = base64.b64encode(path.read_bytes()).decode()
            page.append(
                f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{html.escape(caption)}</figcaption></figure>"
            )
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
        "td:first-child,th:first-child{text-align:left}img{max-width:100%}figcaption{color:#555}"
    )
    artifacts.atomic_write(out / "report.md", "\n\n".join(md) + "\n")
    artifacts.atomic_write(
        out / "report.html",
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>ted "
        f"report</title><style>{style}</style></head><body>{''.join(page)}</body></html>\n",
    )
    return out / "report.md", out / "report.html"


def task_blocks(runs: TaskRuns, files: Path, speed: Optional[dict], cka: bool = True) -> list[tuple]:
    keys, scale = metric_keys(runs), metric_scale(runs)
    pipe = runs.pipeline
    blocks: list[tuple] = [("h2", f"Task: {runs.task}")]
    about = [
        f"teacher `{pipe['teacher']}`, student `{pipe['student']}`" if pipe.get("teacher") else "",
        f"preset `{pipe['preset']}`" if pipe.get("preset") else "",
        f"KD/LWD start from the {pipe.get('baseline_init', 'pretrained')} student" if pipe else "",
    ]
    if any(about):
        blocks.append(("p", "; ".join(a for a in about if a) + "."))
    blocks.append(("table", *task_results_table(runs)))
    significance = significance_table(runs)
    if significance is not None:
        blocks += [
            ("table", *significance),
            (
                "p",
                "Differences in points (first minus second) of the selection metric. Over seeds: mean of the "
                "per-seed differences, 95% t interval and paired t-test; with 2-3 seeds this test has little "
                "power, so 'not significant' means the difference is not shown, not that the methods are equal. "
                "Per seed: percentile bootstrap over dev examples (1,000 resamples, the same examples for both "
                "methods) and a paired permutation test (n.s.: p >= 0.05).",
            ),
        ]
    blocks.append(
        (
            "p",
            "Dev scores of the kept checkpoint (best epoch on dev, as in the paper; Stage I keeps its "
            "last epoch), in percent; mean ± sample standard deviation over seeds."
            + (
                " 'paper': the numbers published with the original code (DeBERTaV3-base → DeBERTaV3-xsmall, one seed)."
                if pipe.get("paper_results")
                else ""
            ),
        )
    )
    plots = [
        (plot_task_losses(runs, files / f"{runs.task}_loss_terms.png"), "Stage II loss terms per method"),
        (
            plot_stage1_layers(runs, keys[0], files / f"{runs.task}_stage1_layers.png", scale),
            "Stage I: dev score of each filter's own head, per layer",
        ),
        (
            plot_dev_curves(runs, keys[0], files / f"{runs.task}_dev_per_epoch.png", scale),
            "Dev score per epoch, per model",
        ),
    ]
    if cka:
        plots.append(
            (
                plot_layer_cka(runs, files / f"{runs.task}_layer_cka.png"),
                "Linear CKA between matched teacher and student layers, before and after Stage II "
                "(mean-pooled hidden states of up to 256 dev examples)",
            )
        )
    blocks += [("img", path, caption) for path, caption in plots if path is not None]
    if speed is not None:
        header, rows = speed_table(runs, **speed)
        blocks += [
            ("h2", f"{runs.task}: size and speed"),
            ("table", header, rows),
            (
                "p",
                f"Inference of one batch of {speed['batch_size']} random sequences of {speed['seq_len']} "
                f"tokens (capped at the models' maximum length; no padding), eval mode, median of "
                f"{speed['iterations']} timed calls after 2 warm-up calls, teacher and student alternating; "
                "parameters of the stock model (filters excluded).",
            ),
        ]
    return blocks


def drop_stale_temp(out: Path, files: Path) -> None:
    """Temporary files a killed `ted report` left (`artifacts.atomic_write` names them `.NAME.*.tmp`)."""
    stale = [*out.glob(".report.md.*.tmp"), *out.glob(".report.html.*.tmp"), *files.glob(".*.png.*.tmp")]
    for path in stale:
        if path.is_file() and not path.is_symlink():
            path.unlink(missing_ok=True)


def write_report(
    run_dirs: list[str | Path], output: Optional[str | Path] = None, speed: Optional[dict] = None, cka: bool = True
) -> tuple[Path, Path]:
    """report.md and report.html (plots embedded) for pipeline runs; `speed=None` skips timing, `cka=False`
    the layer-similarity plot (it runs the models on dev examples)."""
    import time

    runs = find_runs(run_dirs)
    out = Path(output or run_dirs[0])
    files = out / "report_files"
    files.mkdir(parents=True, exist_ok=True)
    drop_stale_temp(out, files)
    blocks: list[tuple] = [
        ("h1", "ted report: TED vs KD vs LWD"),
        (
            "p",
            "Runs: "
            + ", ".join(f"`{d}`" for d in run_dirs)
            + ". Written "
            + time.strftime("%Y-%m-%d %H:%M")
            + " by `ted report`.",
        ),
    ]
    for task in sorted(runs):
        blocks += task_blocks(runs[task], files, speed, cka)
    return render(blocks, out)


def run_report_cli(argv: list[str]) -> tuple[Path, Path]:
    import argparse

    parser = argparse.ArgumentParser(
        prog="ted report", allow_abbrev=False, description="Results table, plots and speed of pipeline runs."
    )
    parser.add_argument("run_dirs", nargs="+", help="output folders of `ted pipeline`")
    parser.add_argument("--output", help="where report.md / report.html go (default: the first RUN_DIR)")
    parser.add_argument("--no_speed", action="store_true", help="skip the latency / throughput measurement")
    parser.add_argument("--no_cka", action="store_true", help="skip the teacher-student layer CKA plot")
    parser.add_argument("--speed_batch_size", type=int, default=8)
    parser.add_argument("--speed_seq_len", type=int, default=128)
    parser.add_argument("--speed_iterations", type=int, default=10)
    args = parser.parse_args(argv)
    speed = (
        None
        if args.no_speed
        else {"batch_size": args.speed_batch_size, "seq_len": args.speed_seq_len, "iterations": args.speed_iterations}
    )
    md, page = write_report(args.run_dirs, args.output, speed, cka=not args.no_cka)
    print(f"wrote {md} and {page}")
    return md, page
