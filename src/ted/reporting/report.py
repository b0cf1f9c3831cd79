"""`ted report RUN_DIR ...`: the blocks of a report on pipeline runs, written as report.md + report.html."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from ted.reporting.collect import METRIC_NAMES, TaskRuns, find_runs, greater_is_better, metric_keys, metric_scale
from ted.reporting.plots import plot_dev_curves, plot_layer_cka, plot_stage1_layers, plot_task_losses
from ted.reporting.render import render
from ted.reporting.tables import lm_eval_note, significance_table, speed_table, task_results_table


def task_blocks(runs: TaskRuns, files: Path, speed: Optional[dict], cka: bool = True) -> list[tuple]:
    """One task's section: results and significance tables, plots, and size and speed when measured."""
    keys, scale = metric_keys(runs), metric_scale(runs)
    pipe = runs.pipeline
    blocks: list[tuple] = [("h2", f"Task: {runs.task}")]
    made = pipe.get("student_init")
    student = (
        f"student made from it by `ted init-student` ({_init_words(made)})"
        if made
        else f"student `{pipe.get('student')}`"
    )
    about = [
        f"teacher `{pipe['teacher']}`, {student}" if pipe.get("teacher") else "",
        f"preset `{pipe['preset']}`" if pipe.get("preset") else "",
        f"KD/LWD start from the {pipe.get('baseline_init', 'pretrained')} student" if pipe else "",
    ]
    if any(about):
        blocks.append(("p", "; ".join(a for a in about if a) + "."))
    blocks.append(("table", *task_results_table(runs)))
    if lm_eval_note(runs):
        blocks.append(
            ("p", f"`ted lm-eval` columns (lm_eval_results.json in each stage folder): {lm_eval_note(runs)}.")
        )
    significance = significance_table(runs)
    if significance is not None:
        blocks += [
            ("table", *significance),
            (
                "p",
                f"Differences{' in points' if scale != 1 else ''} (first minus second) of the selection metric"
                f" ({METRIC_NAMES.get(keys[0], keys[0])}, {'higher' if greater_is_better(runs) else 'lower'} is "
                "better). Over seeds: mean of the "
                "per-seed differences, 95% t interval and paired t-test; with 2-3 seeds this test has little "
                "power, so 'not significant' means the difference is not shown, not that the methods are equal. "
                "Per seed: percentile bootstrap over dev examples (1,000 resamples, the same examples for both "
                "methods) and a paired permutation test (n.s.: p >= 0.05).",
            ),
        ]
    unit = "in percent" if scale != 1 else "as recorded"
    blocks.append(
        (
            "p",
            "Dev scores of the kept checkpoint (best epoch on dev, as in the paper; Stage I keeps its "
            f"last epoch), {unit}; mean ± sample standard deviation over seeds; ↑ higher is better, ↓ lower is better."
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
            f"Stage I: dev {METRIC_NAMES.get(keys[0], keys[0])} of each filter's own head, per layer",
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


def _init_words(settings: dict) -> str:
    """How the student was made, from the pipeline's student_init settings."""
    if settings.get("layers"):
        return f"teacher layers {settings['layers']}"
    return f"{settings.get('num_layers')} layers, {settings.get('strategy') or 'default strategy'}"


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
    """`ted report` on the command line: parse the arguments, write the report, say where it went."""
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
