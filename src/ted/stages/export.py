"""Write the distilled student alone: a stock Hugging Face model folder with a model card.

Only a distilled (`ted distill`) or fine-tuned (`ted finetune`) stage folder is exported. Every check runs
before the speed measurement, the export is built in a temporary sibling folder, verified (config and
loadable weights) and renamed into place: the output folder is a complete export or untouched.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

from ted import artifacts
from ted.artifacts import StageResult
from ted.errors import TedInputError
from ted.stages import output

EXPORTABLE = ("distill", "finetune")
INDEX_FILE = "model.safetensors.index.json"
CARD = "README.md"


def check_source(src: Path) -> dict:
    """The stage description of an exportable folder; a clear error for anything else."""
    if not src.is_dir():
        raise TedInputError(f"{src} is not a folder. Pass the output folder of `ted distill` or `ted finetune`.")
    try:
        stage = artifacts.stage_info(src)
        if stage is not None and not isinstance(stage, dict):
            raise ValueError("not a JSON object")
    except ValueError as err:
        raise TedInputError(
            f"{src / artifacts.STAGE_FILE} is damaged ({err}): re-run the stage that wrote {src}."
        ) from None
    if stage is None and (src / "config.json").is_file():
        raise TedInputError(
            f"{src} is a plain Hugging Face model folder (no {artifacts.STAGE_FILE}): a stock model "
            "needs no export, use it as it is. `ted export` takes the output folder of `ted distill` "
            "or `ted finetune`."
        )
    if stage is None:
        raise TedInputError(
            f"{src} is not a ted stage folder (no {artifacts.STAGE_FILE}, no config.json). Pass the "
            "output folder of `ted distill` or `ted finetune`."
        )
    kind = stage.get("stage")
    if kind == "learn_filters":
        raise TedInputError(
            f"{src} is a Stage I folder (`ted learn-filters`): its model is the one it started "
            f"from ({stage.get('lineage', {}).get('model')}) plus filters. Export the Stage II "
            "folder that `ted distill` wrote from it, or the fine-tuned model it started from."
        )
    if kind not in EXPORTABLE:
        raise TedInputError(
            f"{src}: {artifacts.STAGE_FILE} names stage {kind!r}; `ted export` takes the output "
            "folder of `ted distill` or `ted finetune`."
        )
    return stage


def inputs_of(src: Path, stage: dict) -> list[Path]:
    """Folders the export reads: the stage and, for the speed table, a local teacher."""
    teacher = stage.get("lineage", {}).get("teacher")
    return [src] + ([Path(teacher)] if teacher and Path(teacher).is_dir() else [])


def replaceable(folder: Path) -> bool:
    """--overwrite_output_dir replaces a previous export only (raises to say so in export's own words)."""
    if is_export(folder):
        return True
    raise TedInputError(
        f"{folder} holds files `ted export` did not write; --overwrite_output_dir only replaces a "
        "previous export. Choose a new or empty --output_dir, or move its files away yourself."
    )


def is_export(folder: Path) -> bool:
    """A folder of `ted export`: its model card, and only files it copies."""
    from ted.reporting.model_card import SIGNATURE

    card = folder / CARD
    return card.is_file() and SIGNATURE in card.read_text(errors="replace") and only_export_files(folder)


def only_export_files(folder: Path) -> bool:
    """Every entry is a plain file `ted export` writes (the card, or a file of a stock model folder)."""
    return all(
        p.is_file()
        and not p.is_symlink()
        and (p.name == CARD or artifacts.matches(p.name, artifacts.STOCK_MODEL_PATTERNS))
        for p in folder.iterdir()
    )


def weights_files(folder: Path) -> list[Path]:
    """model.safetensors, or every shard its index names; a clear error when there are none."""
    index = folder / INDEX_FILE
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, AttributeError) as err:
            raise TedInputError(f"{index} is damaged ({err!r}): re-run the stage that wrote {folder}.") from None
        return [folder / name for name in shards]
    if (folder / "model.safetensors").is_file():
        return [folder / "model.safetensors"]
    raise TedInputError(
        f"{folder} has no model.safetensors (nor {INDEX_FILE}): nothing to export. Re-run the stage that wrote it."
    )


def check_weights(folder: Path) -> None:
    """config.json and every weights file are there and their safetensors headers cover the files."""
    from safetensors import safe_open

    if not (folder / "config.json").is_file():
        raise TedInputError(f"{folder} has no config.json: re-run the stage that wrote it.")
    for file in weights_files(folder):
        if not file.is_file():
            raise TedInputError(f"weights file {file} is missing (named in {INDEX_FILE}): re-run the stage.")
        try:
            with safe_open(str(file), "pt") as f:
                f.keys()
        except Exception as err:  # SafetensorError and friends: the header or the data is incomplete
            raise TedInputError(
                f"weights file {file} is damaged ({file.stat().st_size} bytes: {err}). Re-run the stage that wrote it."
            ) from None


def verify_copy(src: Path, copy: Path) -> None:
    """The export holds the config and complete, loadable weights (a failed copy must not be published)."""
    check_weights(copy)
    for file in weights_files(copy):
        if file.stat().st_size != (src / file.name).stat().st_size:
            raise TedInputError(
                f"copying {src / file.name} gave {file.stat().st_size} bytes instead of "
                f"{(src / file.name).stat().st_size}: nothing was written. Check free disk space."
            )


def drop_leftovers(dst: Path) -> None:
    """What a killed export of `dst` left: `.NAME.*.tmp` (being built) and `.NAME.old-*` (being replaced).

    `output.drop_leftovers` removes a folder still being written; here also one that holds a whole export
    (killed between the renames), and nothing else."""
    output.drop_leftovers(dst)
    for path in [*dst.parent.glob(f".{dst.name}.*.tmp"), *dst.parent.glob(f".{dst.name}.old-*")]:
        if path.is_dir() and not path.is_symlink() and is_export(path):
            shutil.rmtree(path, ignore_errors=True)


def export_student(stage_dir: Path, output_dir: Path, model_card: str, verify: Callable[[Path], None]) -> Path:
    """Copy the stock Hugging Face model and tokenizer of a stage folder, without filters or heads, with its card.

    The caller checks `output_dir` first (`run_export`). The copy is built in a temporary sibling folder and
    renamed into place only after `verify(folder)` passes: a complete export or nothing."""
    src, dst = Path(stage_dir), Path(output_dir)
    if not (src / "config.json").is_file():
        raise TedInputError(f"{src} is not a model folder (no config.json). Pass a ted stage folder.")
    with artifacts.atomic_folder(dst) as tmp:
        artifacts.copy_matching(src, tmp, artifacts.STOCK_MODEL_PATTERNS)
        (tmp / CARD).write_text(model_card)
        verify(tmp)
    return dst


def run_export(stage_dir: str, output_dir: str, overwrite: bool = False, measure_speed: bool = True) -> StageResult:
    src, dst = Path(stage_dir), Path(output_dir)
    stage = check_source(src)
    # Refuse an output that is, contains or is inside an input, or a folder `ted export` did not write.
    output.check_output_dir(str(dst), overwrite, inputs=tuple(map(str, inputs_of(src, stage))), replaceable=replaceable)
    check_weights(src)  # fail before timing anything
    metrics_path = src / artifacts.EVAL_RESULTS
    metrics = artifacts.read_json(metrics_path) if metrics_path.is_file() else {}
    speed_rows = None
    if measure_speed:
        from ted.reporting.model_card import measure_speed as measure

        speed_rows = measure(src, stage)
    from ted.reporting.model_card import build

    card = build(src, stage, metrics, speed_rows)
    drop_leftovers(dst)
    export_student(src, dst, card, verify=lambda copy: verify_copy(src, copy))
    return StageResult(str(dst), metrics)
