"""The tables of a report as (header, rows) of text cells: results over seeds, significance, size and speed."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Optional

import numpy as np

from ted.reporting.collect import (
    LM_EVAL_COLUMNS,
    METRIC_NAMES,
    RESULT_ROWS,
    TaskRuns,
    count_parameters,
    decoded_predictions,
    greater_is_better,
    lm_eval_results,
    metric_function,
    metric_keys,
    metric_scale,
    model_folder,
    seed_values,
    selection_score,
    task_kind,
)

# Method pairs compared in the significance table (issue 14), first minus second.
PAIRS = (("ted", "kd"), ("ted", "lwd"), ("ted", "student"), ("kd", "student"))


def results_table(rows: list[tuple[str, str | Path]]) -> str:
    """Markdown table: one row per (name, stage folder) with its dev selection metric and size."""
    lines = ["| model | dev metric | score | parameters |", "|---|---|---:|---:|"]
    for name, folder in rows:
        metric, score = selection_score(folder)
        shown = f"{100 * score:.2f}" if score is not None else "n/a"
        lines.append(f"| {name} | {metric} | {shown} | {count_parameters(folder):,} |")
    return "\n".join(lines)


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


def arrow(higher_is_better: bool) -> str:
    return "↑" if higher_is_better else "↓"


def lm_eval_columns(runs: TaskRuns) -> list[tuple[str, str, str, bool, bool]]:
    """The lm-eval columns (LM_EVAL_COLUMNS entries) that some result row's folders hold."""
    held = {task for role, _ in RESULT_ROWS for folder in runs.folders(role) for task in lm_eval_results(folder)}
    return [column for column in LM_EVAL_COLUMNS if column[0] in held]


def _lm_eval_cell(folders: list[Path], column: tuple[str, str, str, bool, bool]) -> str:
    task, key, _, percent, _ = column
    values = [
        float(found[task][key])
        for found in map(lm_eval_results, folders)
        if isinstance(found.get(task, {}).get(key), (int, float))
    ]
    return mean_std(values, 100.0 if percent else 1.0)


def task_results_table(runs: TaskRuns) -> tuple[list[str], list[list[str]]]:
    """Per model: seeds and mean ± std of each dev metric (an arrow says which way is better), the `ted lm-eval`
    results saved in the stage folders, and the paper's numbers when the run has them."""
    keys, scale = metric_keys(runs), metric_scale(runs)
    better = [greater_is_better(runs)] + [True] * (len(keys) - 1)  # the other shown metrics are scores
    paper = runs.pipeline.get("paper_results")
    lm_columns = lm_eval_columns(runs)
    header = ["model", "seeds"] + [f"dev {METRIC_NAMES.get(k, k)} {arrow(b)}" for k, b in zip(keys, better)]
    header += [f"{name} {arrow(up)}" for _, _, name, _, up in lm_columns]
    if paper:
        header.append("paper (" + " / ".join(METRIC_NAMES.get(m, m) for m in paper.get("metrics", [])) + ")")
    rows = []
    for role, name in RESULT_ROWS:
        folders = runs.folders(role)
        if not folders:
            continue
        row = [runs.label(role, name), str(len(folders))]
        row += [mean_std(seed_values(folders, f"eval_{k}"), scale) for k in keys]
        row += [_lm_eval_cell(folders, column) for column in lm_columns]
        rows.append(row + ([_paper_cell(paper, role)] if paper else []))
    return header, rows


def lm_eval_note(runs: TaskRuns) -> str:
    """Where the lm-eval columns come from: each task's data file, limit and window, as recorded."""
    parts = []
    for task in dict.fromkeys(column[0] for column in lm_eval_columns(runs)):
        found = next(
            (r[task] for role, _ in RESULT_ROWS for r in map(lm_eval_results, runs.folders(role)) if task in r), {}
        )
        limit = found.get("limit")
        where = f"`{Path(str(found.get('data', '?'))).name}`" + (f", first {limit}" if limit else ", all")
        window = f", context {found['context_length']}, stride {found['stride']}" if "stride" in found else ""
        parts.append(f"{task}: {where}{window}")
    return "; ".join(parts)


def _interval(low: Optional[float], high: Optional[float], scale: float) -> str:
    return "—" if low is None else f"[{scale * low:+.2f}, {scale * high:+.2f}]"


def _p(p: Optional[float]) -> str:
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
        if a is None or b is None or not np.array_equal(a[1], b[1]):
            continue
        if kind.token_labels:  # per-block (NLL, tokens) rows: resample and swap blocks through row indices
            found = paired_bootstrap(*_block_rows(metric, a[0], b[0]))
        else:
            found = paired_bootstrap(metric, a[0], b[0], a[1])
        mark = "" if significant(found["p"]) else ", n.s."
        cells.append(f"seed {seed}: {_interval(found['low'], found['high'], scale)} p {_p(found['p'])}{mark}")
    return "; ".join(cells) if cells else "no per-example predictions"


def _block_rows(metric: Callable, rows_a: np.ndarray, rows_b: np.ndarray) -> tuple:
    """paired_bootstrap's arguments for causal LMs: both methods' (NLL, tokens) rows in one table, each method's
    predictions being indices into it (A: 0..n-1, B: n..2n-1), so a swap exchanges one dev block's two rows."""
    n, table = len(rows_a), np.concatenate([rows_a, rows_b])
    return lambda index, _: metric(table[np.asarray(index)], None), np.arange(n), np.arange(n) + n, np.arange(n)


def significance_table(runs: TaskRuns) -> Optional[tuple[list[str], list[list[str]]]]:
    """Per method pair: mean difference over seeds with a 95% t interval and paired t-test, and per seed a paired
    bootstrap over dev examples; 'not significant' where p >= 0.05."""
    from ted.reporting.stats import seed_difference, significant

    keys, scale = metric_keys(runs), metric_scale(runs)
    key, name, higher = f"eval_{keys[0]}", METRIC_NAMES.get(keys[0], keys[0]), greater_is_better(runs)
    header = [
        "pair",
        "seeds",
        f"mean difference ({name}; {'higher' if higher else 'lower'} is better)",
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
        if found.get("no_spread"):
            verdict = "no test: every seed differs by the same amount (see per seed)"
        elif found["p"] is None:
            verdict = "one seed: no test over seeds"
        else:
            verdict = (
                _verdict(first, second, found["mean"], higher, name) if significant(found["p"]) else "not significant"
            )
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


def _verdict(first: str, second: str, mean: float, higher: bool, metric: str) -> str:
    """'significant: TED higher acc' / 'significant: KD lower perplexity': who is better, in the metric's words."""
    better = first if (mean > 0) == higher else second
    who = better if better == "student" else better.upper()
    return f"significant: {who} {'higher' if higher else 'lower'} {metric}"  # the better one is higher/lower


def speed_table(runs: TaskRuns, batch_size: int, seq_len: int, iterations: int) -> tuple[list[str], list[list[str]]]:
    """Parameters and measured latency / throughput of the teacher and the (TED) student."""
    from ted.reporting.speed import SPEED_HEADER, compare, speed_cells

    teacher = next(iter(map(model_folder, runs.folders("teacher"))), None)
    student = next(iter(runs.folders("ted") or runs.folders("student") or runs.folders("kd")), None)
    rows, base = [], {}
    for r in compare(student, teacher, batch_size, seq_len, iterations):
        folder = teacher if r["role"] == "teacher" else student
        base.setdefault(r["device"], r["latency_ms"] if r["role"] == "teacher" else None)
        speedup = f"{base[r['device']] / r['latency_ms']:.2f}×" if base.get(r["device"]) else "—"
        rows.append(speed_cells(r, count_parameters(folder)) + [speedup])
    return [*SPEED_HEADER, "speed-up"], rows
