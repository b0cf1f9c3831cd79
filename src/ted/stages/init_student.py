"""`ted init-student`: a layer-dropped copy of the teacher (DistilBERT / Minitron style) as a stock model folder.

The student keeps the teacher's embeddings, head, width and tokenizer and a subset of its layers (chosen by
`ted.method.layer_selection`); student layer k is teacher layer `layers[k]`. The folder is a plain Hugging Face
model (config with the new layer count, safetensors, the teacher's tokenizer) that loads with `AutoModelFor...`
and no ted import, plus `ted_stage.json` naming the kept layers, the strategy and the block-influence scores.
It is written all-or-nothing (`ted.artifacts.stage_folder`).
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Optional

from ted import artifacts
from ted.artifacts import StageResult
from ted.errors import TedInputError
from ted.method import layer_selection
from ted.stages.output import check_output_dir

if TYPE_CHECKING:
    import torch
    from torch import nn
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

    from ted.settings.options import InitStudentArguments

logger = logging.getLogger(__name__)

STAGE = "init_student"
NOT_PER_LAYER = ("architectures",)  # config lists that never hold one entry per layer


def num_layers_of(config: PretrainedConfig) -> int:
    """The teacher's layer count (`num_hidden_layers`; GPT-2's `n_layer` answers to that name too)."""
    total = getattr(config, "num_hidden_layers", None)
    if not isinstance(total, int) or total < 1:
        raise TedInputError(
            f"The teacher's config ({config.model_type}) has no num_hidden_layers: ted cannot tell its layers apart."
        )
    return total


def find_layer_list(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """(its name, the ModuleList holding the model's layers), found by shape (ted.method.model_parts.layer_list)."""
    from ted.method.model_parts import layer_list

    found = layer_list(model)
    if found is None:
        total = num_layers_of(model.config)
        raise TedInputError(
            f"Cannot find the {total} layers of {type(model).__name__} (no list of {total} identical blocks); "
            "ted can drop layers of BERT/RoBERTa/DeBERTa-style encoders and GPT-2/Llama/Qwen2-style decoders."
        )
    return found


def student_config(config: PretrainedConfig, layers: list[int]) -> PretrainedConfig:
    """The teacher's config with `len(layers)` layers, per-layer lists (e.g. Qwen2's `layer_types`) cut to the
    kept layers, and no `quantization_config` (a GGUF-loaded teacher carries one; the student is plain)."""
    total = num_layers_of(config)
    cfg = copy.deepcopy(config)
    for key, value in config.to_dict().items():
        if key not in NOT_PER_LAYER and isinstance(value, list) and len(value) == total and hasattr(cfg, key):
            setattr(cfg, key, [value[i] for i in layers])
    cfg.num_hidden_layers = len(layers)
    if hasattr(cfg, "quantization_config"):
        delattr(cfg, "quantization_config")
    return cfg


def student_state(state: dict[str, torch.Tensor], prefix: str, layers: list[int]) -> dict[str, torch.Tensor]:
    """The teacher's weights renamed for the student: `prefix.{layers[k]}.*` -> `prefix.{k}.*`, dropped layers
    left out, everything else (embeddings, final norm, head) unchanged."""
    new_index = {old: new for new, old in enumerate(layers)}
    head = prefix + "."
    out = {}
    for key, value in state.items():
        if not key.startswith(head):
            out[key] = value.detach().clone()
            continue
        index, _, rest = key[len(head) :].partition(".")
        if int(index) in new_index:
            out[f"{head}{new_index[int(index)]}.{rest}"] = value.detach().clone()
    return out


def build_student(teacher: PreTrainedModel, layers: list[int]) -> PreTrainedModel:
    """The layer-dropped copy, of the teacher's class and dtype (tied embeddings stay tied: same config)."""
    layers = layer_selection.check_layers(layers, num_layers_of(teacher.config))
    prefix, _ = find_layer_list(teacher)
    student = type(teacher)(student_config(teacher.config, layers)).to(teacher.dtype)
    student.load_state_dict(student_state(teacher.state_dict(), prefix, layers), strict=True)
    if teacher.can_generate() and getattr(teacher, "generation_config", None) is not None:
        student.generation_config = copy.deepcopy(teacher.generation_config)
    return student.eval()


def init_student(
    teacher_model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    layers: list[int],
    output_dir: str | Path,
    scores: Optional[list[float]] = None,
    strategy: str = layer_selection.EXPLICIT,
    teacher_name: Optional[str] = None,
    args: Optional[dict] = None,
    overwrite: bool = False,
) -> Path:
    """Write the layer-dropped student of `teacher_model` keeping `layers` to `output_dir`, all-or-nothing."""
    dst = check_output_dir(str(output_dir), overwrite, inputs=(teacher_name,) if teacher_name else ())
    student = build_student(teacher_model, layers)
    kept = layer_selection.check_layers(layers, num_layers_of(teacher_model.config))
    description = artifacts.describe_stage(
        STAGE,
        SimpleNamespace(name=None, head=None, label_list=None, selection_metric=None),
        args or {},
        lineage={"teacher": teacher_name},
    )
    description["student"] = {
        "layers": kept,
        "strategy": strategy,
        "teacher_layers": num_layers_of(teacher_model.config),
        "layer_list": find_layer_list(teacher_model)[0],
        "block_influence": scores,
    }
    with artifacts.stage_folder(dst, description) as tmp:
        student.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    logger.info("Wrote a %d-layer student (teacher layers %s, %s) to %s", len(kept), kept, strategy, dst)
    return dst


def model_class(config: PretrainedConfig, gguf_file: Optional[str]) -> type:
    """The class the teacher was saved as (keeps a task head), else a causal LM for decoders, else AutoModel."""
    import transformers

    from ted.method.pooling import is_decoder_only

    for name in getattr(config, "architectures", None) or []:
        if hasattr(transformers, name):
            return getattr(transformers, name)
    if gguf_file or is_decoder_only(config):
        return transformers.AutoModelForCausalLM
    return transformers.AutoModel


def load_teacher(path: str, gguf_file: Optional[str] = None) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The teacher and its tokenizer (a folder holding one .gguf file, or --gguf_file: dequantised to float32)."""
    import torch

    from ted.stages.models import check_model_source, load_config, load_tokenizer

    gguf = check_model_source(path, gguf_file)
    extra = {"gguf_file": gguf, "dtype": torch.float32} if gguf else {}
    model = model_class(load_config(path, gguf_file=gguf_file), gguf).from_pretrained(path, **extra)
    return model.eval(), load_tokenizer(path, gguf_file=gguf_file)


def influence_batches(
    tokenizer: PreTrainedTokenizerBase, path: str | Path, samples: int, max_tokens: int, max_length: int
) -> list[dict[str, torch.Tensor]]:
    """One batch per non-empty line of the text file (at most `samples` lines, `max_tokens` tokens in all,
    each line cut to what is left and to `max_length`); no padding, so every token is real."""
    import torch

    lines = [line.strip() for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines()]
    batches, left = [], max_tokens
    for line in [line for line in lines if line][:samples]:
        ids = tokenizer(line)["input_ids"][: min(left, max_length)]
        if ids:
            batches.append(
                {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long)}
            )
            left -= len(ids)
        if left <= 0:
            break
    if not batches:
        raise TedInputError(f"--train_file {path} has no text to measure block influence on (no non-empty line).")
    return batches


def max_length(tokenizer: PreTrainedTokenizerBase, config: PretrainedConfig) -> int:
    """The longest sample: what both the tokenizer (RoBERTa's 514 positions hold 512 tokens) and the model's
    positions allow, 2048 where neither says."""
    limits = [getattr(tokenizer, "model_max_length", None), getattr(config, "max_position_embeddings", None)]
    return min([n for n in limits if isinstance(n, int) and 0 < n < 1_000_000] or [2048])


def check_args(args: InitStudentArguments) -> tuple[Optional[list[int]], str]:
    """Every check that needs no model: the explicit layers (or None) and the strategy to record."""
    if not args.teacher_model_name_or_path:
        raise TedInputError("--teacher_model_name_or_path is required: the model to copy layers from.")
    if (args.layers is None) == (args.num_layers is None):
        raise TedInputError("Pass either --num_layers N (with --strategy) or --layers 0,3,5: exactly one of them.")
    if args.layers is not None and args.strategy is not None:
        raise TedInputError("--layers names the layers itself; leave out --strategy (it chooses --num_layers layers).")
    strategy = args.strategy or ("block_influence" if args.train_file else "uniform")
    if args.layers is None and strategy not in layer_selection.STRATEGIES:
        raise TedInputError(f"--strategy {strategy!r} is not one of {', '.join(layer_selection.STRATEGIES)}.")
    if strategy == "block_influence" and not args.train_file:
        raise TedInputError("--strategy block_influence measures the layers on text: pass --train_file FILE.txt.")
    if args.train_file and not Path(args.train_file).is_file():
        raise TedInputError(f"--train_file {args.train_file} is not a file. Pass a plain-text file.")
    if min(args.influence_samples, args.influence_max_tokens, args.influence_max_length) < 1:
        raise TedInputError("--influence_samples, --influence_max_tokens and --influence_max_length must be >= 1.")
    if args.layers is not None:
        return layer_selection.parse_layers(args.layers), layer_selection.EXPLICIT
    return None, strategy


def run_init_student(args: InitStudentArguments) -> StageResult:
    """`ted init-student`: check everything, load the teacher, measure block influence if there is text, write."""
    from dataclasses import asdict

    from ted.stages.models import load_config

    explicit, strategy = check_args(args)
    teacher_path = args.teacher_model_name_or_path
    dst = check_output_dir(args.output_dir, args.overwrite_output_dir, inputs=(teacher_path, args.train_file))
    total = num_layers_of(load_config(teacher_path, gguf_file=args.gguf_file))
    if explicit is not None:
        layer_selection.check_layers(explicit, total)
    else:
        layer_selection.check_num_layers(args.num_layers, total)
    teacher, tokenizer = load_teacher(teacher_path, args.gguf_file)
    scores = None
    if args.train_file:
        batches = influence_batches(
            tokenizer,
            args.train_file,
            args.influence_samples,
            args.influence_max_tokens,
            min(args.influence_max_length, max_length(tokenizer, teacher.config)),
        )
        scores = layer_selection.block_influence(teacher, find_layer_list(teacher)[1], batches)
    layers = layer_selection.select_layers(total, args.num_layers, strategy, explicit, scores)
    init_student(teacher, tokenizer, layers, dst, scores, strategy, teacher_path, asdict(args), overwrite=True)
    return StageResult(str(dst), {}, {"layers": layers, "strategy": strategy, "block_influence": scores})
