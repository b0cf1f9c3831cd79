"""Python API mirroring the CLI: `ted.finetune(...)`, `ted.learn_filters(...)`, `ted.distill(...)`, ...

Keyword arguments are the CLI flags without dashes, e.g.
`ted.distill(model_name_or_path="out/s1", teacher_model_name_or_path="out/t1", task_name="rte",
data_dir="glue", kl_alpha=20, mse_alpha=50, output_dir="out/ted")`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ted.settings import parse as arguments
from ted.settings.training_args import COMMAND_ARGS  # noqa: F401  (the stage commands' argument groups)
from ted.stages.registry import run_command, run_options  # noqa: F401  (run_command: for groups built by hand)

if TYPE_CHECKING:
    from ted.artifacts import StageResult
    from ted.pipelines.runner import StageRun
    from ted.stages.doctor import Findings


def parse_kwargs(command: str, kwargs: dict[str, Any]) -> tuple:
    """Keyword arguments -> the stage's argument groups, parsed and checked exactly like the command line."""
    return arguments.parse_mapping(command, kwargs)


def finetune(**kwargs: Any) -> StageResult:
    """Stage 0: fine-tune a model on a task. Returns a StageResult (output_dir, metrics)."""
    return run_options("finetune", kwargs)


def learn_filters(**kwargs: Any) -> StageResult:
    """Stage I: learn task-aware filters on a frozen fine-tuned model."""
    return run_options("learn-filters", kwargs)


def distill(**kwargs: Any) -> StageResult:
    """Stage II: TED, KD or LWD (see `method`, `kl_alpha`, `mse_alpha`, `filter_disabled`)."""
    return run_options("distill", kwargs)


def doctor(**kwargs: Any) -> Findings:
    """`ted doctor`: checks before a Stage II run, with `distill`'s arguments (plus json=, doctor_eval_samples=,
    doctor_batches=). Returns the Findings (`.as_json()`, `.warnings`, `.verdict()`)."""
    return run_options("doctor", kwargs)


def evaluate(**kwargs: Any) -> StageResult:
    """Score a model folder on a task's dev set(s)."""
    return run_options("evaluate", kwargs)


def init_student(**kwargs: Any) -> StageResult:
    """`ted init-student`: a layer-dropped copy of the teacher as a stock model folder (teacher_model_name_or_path=,
    num_layers= and strategy=, or layers="0,3,5"; train_file= for block influence; output_dir=)."""
    return run_options("init-student", kwargs)


def lm_eval(**kwargs: Any) -> dict[str, Any]:
    """`ted lm-eval`: WikiText perplexity or LAMBADA accuracy of a causal LM (model_name_or_path=, task=, data=,
    context_length=, stride=, limit=, convention="hf" or "harness" (WikiText: Hugging Face's strided windows, or
    lm-evaluation-harness's rolling windows per article with word/byte perplexity), gguf_file=, output_dir=).
    Returns the scores as a dict."""
    return run_options("lm-eval", kwargs)


def export(stage_dir: str, output_dir: str, overwrite: bool = False, measure_speed: bool = True) -> StageResult:
    """Write the student of a stage folder as a stock Hugging Face model (filters stripped) with a model card."""
    from ted.stages.export import run_export

    return run_export(stage_dir, output_dir, overwrite, measure_speed)


def pipeline(
    config: str | os.PathLike[str] | Iterable[str | os.PathLike[str]], output_dir: str | None = None, **overrides: Any
) -> list[StageRun]:
    """`ted pipeline`: every stage for tasks x seeds from YAML file(s); keyword arguments as on the CLI
    (`seeds=[1, 2]`, `baseline_init="finetuned"`, `max_train_samples=100`, `ted={"kl_alpha": 5}`)."""
    from ted.pipelines.config import SECTIONS, set_override
    from ted.pipelines.runner import run_pipeline

    merged: dict[str, Any] = {}
    for key, value in {**overrides, **({"output_dir": output_dir} if output_dir else {})}.items():
        if key in SECTIONS and isinstance(value, dict):
            merged.setdefault(key, {}).update(value)
        else:
            set_override(merged, key, value)
    return run_pipeline(
        [config] if isinstance(config, (str, bytes)) or hasattr(config, "__fspath__") else list(config), merged
    )


def report(
    run_dirs: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    output: str | None = None,
    speed: bool = True,
    cka: bool = True,
) -> tuple[Path, Path]:
    """`ted report`: report.md and report.html for pipeline run folder(s) (`cka=False`: no layer-similarity plot)."""
    from ted.reporting.report import write_report

    dirs = [run_dirs] if isinstance(run_dirs, str) or hasattr(run_dirs, "__fspath__") else list(run_dirs)
    return write_report(dirs, output, {"batch_size": 8, "seq_len": 128, "iterations": 10} if speed else None, cka)


def import_original(path: str, output_dir: str, **kwargs: Any) -> Path:
    """`ted import-original`: a checkpoint of the paper's original code as a ted stage folder."""
    from ted.stages.import_original import import_original as run

    return run(path, output_dir, **kwargs)


def demo(output_dir: str = "ted-demo", **kwargs: Any) -> Path:
    """The whole method end to end on a built-in synthetic task with tiny models, offline."""
    from ted.cli.demo import run_demo

    return run_demo(output_dir, **kwargs)
