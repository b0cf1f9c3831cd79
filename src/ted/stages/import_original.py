"""`ted import-original`: a checkpoint of the paper's original code -> a ted stage folder.

The original code saves `TEDDebertaV2For{SequenceClassification,QuestionAnswering}` models
(config `model_type: ted-deberta-v2` with `train_filters`, `filter_interval`, `filter_output_dim`,
`filter_nonlinear`, `filter_disabled`), with the filters inside the layers
(`deberta.encoder.layer.{i}.filter.weight|bias`, or `.filter.0.*` / `.filter.2.*` when nonlinear)
and, after Stage I, one head per filter (`filter_pooler.{k}.dense.*`, `filter_head.{k}.*`).
This writes our layout: a stock deberta-v2 `config.json` + `model.safetensors` (backbone and task
head), `filters.safetensors` / `filters.json`, `stage1_heads.*` when present, the tokenizer files,
and `ted_stage.json` (stage `learn_filters` for a Stage I checkpoint, else `distill`).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Optional, Union

from ted import artifacts
from ted.errors import TedInputError
from ted.method.kinds import get_kind, kind_of_model
from ted.stages.output import check_output_dir

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from ted.method.filters import FilterConfig
    from ted.method.heads import HeadsConfig
    from ted.tasks.base import Task

logger = logging.getLogger(__name__)

TED_FIELDS = ("train_filters", "filter_interval", "filter_output_dim", "filter_nonlinear", "filter_disabled")
FILTER_KEY = re.compile(r"^deberta\.encoder\.layer\.(\d+)\.filter\.(.+)$")
HEAD_PREFIXES = ("filter_pooler.", "filter_head.")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def read_original_config(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.is_file():
        raise TedInputError(f"{folder} has no config.json: pass the folder of a checkpoint saved by the original code.")
    config = json.loads(path.read_text())
    archs = config.get("architectures") or []
    if config.get("model_type") != "ted-deberta-v2" and not any(a.startswith("TEDDebertaV2") for a in archs):
        raise TedInputError(
            f"{folder} is not a checkpoint of the original TED code (model_type {config.get('model_type')!r}, "
            f"architectures {archs}); expected model_type 'ted-deberta-v2'. A stock Hugging Face model needs no "
            "import: pass it to `ted finetune` / `ted learn-filters` directly."
        )
    return config


def read_weights(folder: Path) -> dict:
    import torch
    from safetensors.torch import load_file

    if (folder / "model.safetensors").is_file():
        return load_file(str(folder / "model.safetensors"))
    if (folder / "pytorch_model.bin").is_file():
        return torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise TedInputError(
        f"{folder} has no weights: expected one of {', '.join(WEIGHT_FILES)} (sharded checkpoints are not supported)."
    )


def split_weights(state: dict) -> tuple[dict, dict, dict]:
    """(model, filters keyed filters.{i}.*, Stage I heads keyed filter_pooler.* / filter_head.*)."""
    model, filters, heads = {}, {}, {}
    for key, tensor in state.items():
        if match := FILTER_KEY.match(key):
            filters[f"filters.{match.group(1)}.{match.group(2)}"] = tensor
        elif key.startswith(HEAD_PREFIXES):
            heads[key] = tensor
        else:
            model[key] = tensor
    return model, filters, heads


def stock_config(original: dict) -> dict:
    config = {k: v for k, v in original.items() if k not in TED_FIELDS}
    config["model_type"] = "deberta-v2"
    config["architectures"] = [a.replace("TEDDebertaV2", "DebertaV2") for a in original.get("architectures") or []]
    return config


def head_kind(config: dict) -> str:
    num_labels = int(config.get("num_labels", len(config.get("id2label") or {}) or 2))
    return kind_of_model(config.get("architectures"), num_labels).name


def build_model(config: dict, weights: dict, kind: str, where: Path) -> PreTrainedModel:
    """The stock model with the original backbone + head; every tensor must find its place."""
    from transformers import DebertaV2Config

    cfg = DebertaV2Config.from_dict(config)
    cls = get_kind(kind).auto_class()
    model = cls.from_config(cfg)
    result = model.load_state_dict(weights, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("position_ids")]
    unexpected = [k for k in result.unexpected_keys if not k.endswith("position_ids")]
    if missing or unexpected:
        raise TedInputError(
            f"{where}: the weights do not fit a stock {cls.__name__[4:]} DeBERTa-v2 model "
            f"(missing {missing[:5]}, unexpected {unexpected[:5]})."
        )
    return model


def filter_config(config: dict, filters: dict, num_layers: int, role: str = "filter") -> FilterConfig:
    from ted.method.filters import FilterConfig, select_layers

    layers = sorted({int(k.split(".")[1]) for k in filters})
    nonlinear = any(re.fullmatch(r"filters\.\d+\.0\.weight", k) for k in filters)
    last = filters[f"filters.{layers[-1]}.2.weight" if nonlinear else f"filters.{layers[-1]}.weight"]
    interval = int(config.get("filter_interval") or 1)
    expected = select_layers(num_layers, interval) if num_layers % interval == 0 else None
    if expected != layers:
        raise TedInputError(
            f"Filters found on layers {layers}, but filter_interval {interval} of a "
            f"{num_layers}-layer model puts them on {expected}: the checkpoint is inconsistent."
        )
    act = config.get("hidden_act", "gelu")
    return FilterConfig(
        layers=layers,
        hidden_size=int(config["hidden_size"]),
        output_dim=int(last.shape[0]),
        nonlinear=nonlinear,
        activation=act if isinstance(act, str) else "gelu",
        interval=interval,
        initializer_range=float(config.get("initializer_range", 0.02)),
        role=role,
    )


def heads_config(config: dict, heads: dict, kind: str, output_dim: int) -> HeadsConfig:
    from ted.method.heads import HeadsConfig

    count = len({k.split(".")[1] for k in heads if k.startswith("filter_head.")})
    dropout = next(
        (config[k] for k in ("cls_dropout", "classifier_dropout", "hidden_dropout_prob") if config.get(k) is not None),
        0.0,
    )
    labels = int(config.get("num_labels") or len(config.get("id2label") or {}) or 0)
    num_labels = get_kind(kind).num_labels([None] * labels)
    return HeadsConfig(
        kind=kind,
        num_heads=count,
        input_dim=output_dim,
        num_labels=num_labels,
        activation=config.get("pooler_hidden_act", "gelu") or "gelu",
        pooler_dropout=float(config.get("pooler_dropout", 0.0) or 0.0),
        classifier_dropout=float(dropout),
        initializer_range=float(config.get("initializer_range", 0.02)),
    )


def describe_task(task_name: Optional[str], kind: str, config: dict) -> Union[Task, SimpleNamespace]:
    """The task block of ted_stage.json: a known task by name, else what the checkpoint tells."""
    if task_name:
        from ted.tasks import task_from_name

        try:
            return task_from_name(task_name)
        except TedInputError:
            logger.info("Task %r is not a built-in task; recording it by name only.", task_name)
    labels = (
        [
            config["id2label"][str(i)] if str(i) in config.get("id2label", {}) else config["id2label"][i]
            for i in range(len(config.get("id2label") or {}))
        ]
        if get_kind(kind).sequence_level and not get_kind(kind).scores
        else None
    )
    metric = get_kind(kind).default_selection_metric
    return SimpleNamespace(
        name=task_name or config.get("finetuning_task") or "unknown",
        head=kind,
        label_list=labels,
        selection_metric=metric,
    )


def import_original(
    path: str, output_dir: str, task_name: Optional[str] = None, method: Optional[str] = None, overwrite: bool = False
) -> Path:
    """Convert the checkpoint folder `path`; returns the stage folder written at `output_dir`."""
    from ted.method.filters import TaskAwareFilters
    from ted.method.heads import StageOneHeads

    src = Path(path)
    if not src.is_dir():
        raise TedInputError(f"{src} is not a folder. Pass a checkpoint folder saved by the original TED code.")
    original = read_original_config(src)
    dst = check_output_dir(output_dir, overwrite)
    model_w, filter_w, head_w = split_weights(read_weights(src))
    kind = head_kind(original)
    config = stock_config(original)
    model = build_model(config, model_w, kind, src)
    filters = heads = None
    if filter_w:
        role = "projector" if method == "lwd" else "filter"  # LWD's student "filters" are its projector
        filters = TaskAwareFilters(filter_config(original, filter_w, int(original["num_hidden_layers"]), role))
        filters.load_state_dict(filter_w)
    if head_w:
        if filters is None:
            raise TedInputError(f"{src} has Stage I heads but no filters; the checkpoint is incomplete.")
        heads = StageOneHeads(heads_config(original, head_w, kind, filters.config.output_dim))
        heads.load_state_dict(head_w)
    stage1 = bool(head_w) or bool(original.get("train_filters"))
    description = artifacts.describe_stage(
        "learn_filters" if stage1 else "distill",
        describe_task(task_name, kind, original),
        {"imported": {k: original[k] for k in TED_FIELDS if k in original}},
        lineage={"imported_from": str(src.resolve())},
        method=None if stage1 else (method or ("kd" if filters is None else None)),
    )
    with artifacts.stage_folder(dst, description) as tmp:
        model.save_pretrained(tmp)
        artifacts.copy_matching(src, tmp, artifacts.TOKENIZER_PATTERNS)
        if filters is not None:
            filters.save(tmp)
        if heads is not None:
            heads.save(tmp)
    logger.info(
        "Imported %s -> %s (%s%s%s)",
        src,
        dst,
        "Stage I" if stage1 else "Stage II",
        f", filters on layers {filters.config.layers}" if filters else "",
        ", Stage I heads" if heads else "",
    )
    return dst


def run_import_original_cli(argv: list[str]) -> Path:
    import argparse

    parser = argparse.ArgumentParser(
        prog="ted import-original",
        allow_abbrev=False,
        description="Convert a checkpoint of the paper's original code to a ted stage.",
    )
    parser.add_argument("path", help="folder with config.json (model_type ted-deberta-v2) and the weights")
    parser.add_argument("--output_dir", required=True, help="the stage folder to write")
    parser.add_argument("--task_name", help="the task it was trained on (recorded in ted_stage.json)")
    parser.add_argument(
        "--method",
        choices=("ted", "kd", "lwd"),
        help="Stage II checkpoints: which method made it (the checkpoint cannot tell TED from LWD)",
    )
    parser.add_argument("--overwrite_output_dir", action="store_true")
    args = parser.parse_args(argv)
    out = import_original(args.path, args.output_dir, args.task_name, args.method, args.overwrite_output_dir)
    print(f"wrote {out}")
    return out
