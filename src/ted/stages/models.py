"""Load teachers, students and tokenizers, and check that they can work together."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Union

from transformers import (
    AutoConfig,
    AutoTokenizer,
    PreTrainedModel,
)

from ted.errors import TedInputError
from ted.method.pooling import prepare_decoder_classifier
from ted.stages.gguf_files import has_tokenizer_files, looks_like_local_path, resolve_gguf_file
from ted.tasks import model_fit, resolve_task_name
from ted.tasks.base import DEFAULT_MAX_SEQ_LENGTH, Task
from ted.tasks.squad import DEFAULT_MAX_SEQ_LENGTH as SQUAD_MAX_SEQ_LENGTH

if TYPE_CHECKING:
    import torch
    from transformers import PretrainedConfig, PreTrainedTokenizerBase

    from ted.settings.options import DataArguments

logger = logging.getLogger(__name__)


def check_model_source(name_or_path: Optional[str], gguf_file: Optional[str] = None) -> Optional[str]:
    """A missing local folder, a folder without a model or a damaged weights file, said plainly before
    transformers turns it into "Repo id must be in the form ..." or a raw SafetensorError. Returns the GGUF file
    the model loads from (gguf_files.resolve_gguf_file), or None for a Hugging Face folder or hub id."""
    if not name_or_path:  # else transformers asks the hub for a repo called "None" (retries, then a vague error)
        raise TedInputError("No model given: pass --model_name_or_path (a hub id or a local folder).")
    path = Path(name_or_path).expanduser()
    if not path.exists():
        if looks_like_local_path(name_or_path):
            raise TedInputError(f"Model folder {name_or_path} does not exist. Check the path (or pass a hub id).")
        return gguf_file  # a hub id: transformers resolves it (or says why it cannot)
    gguf = resolve_gguf_file(path, gguf_file) if path.is_dir() else None
    if gguf:
        return gguf
    if not path.is_dir() or not (path / "config.json").is_file():
        raise TedInputError(
            f"{name_or_path} is not a model folder: it has no config.json (nor a single .gguf file). Pass the "
            "folder a stage or `save_pretrained` wrote."
        )
    check_weight_files(path)
    return None


def check_weight_files(folder: Path) -> None:
    """Every safetensors file of a folder has a complete header and covers its data (a truncated copy does not)."""
    from safetensors import SafetensorError, safe_open

    for file in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt"):
                pass
        except (SafetensorError, OSError) as err:
            raise TedInputError(
                f"Weights file {file} is damaged ({file.stat().st_size:,} bytes: {err}). Re-run the "
                "stage that wrote it, or copy the file again."
            ) from None


def _from_pretrained(
    auto_class: Union[type[AutoTokenizer], type[AutoConfig]],
    what: str,
    name_or_path: str,
    cache_dir: Optional[str],
    gguf_file: Optional[str] = None,
) -> Union[PreTrainedTokenizerBase, PretrainedConfig]:
    gguf = check_model_source(name_or_path, gguf_file)
    # A GGUF folder's own tokenizer files load in a second; rebuilding the tokenizer from the GGUF takes ~10 s.
    if gguf and auto_class is AutoTokenizer and has_tokenizer_files(Path(name_or_path).expanduser()):
        gguf = None
    try:
        return auto_class.from_pretrained(name_or_path, cache_dir=cache_dir, **({"gguf_file": gguf} if gguf else {}))
    except (OSError, ValueError) as err:
        raise TedInputError(f"Cannot load {what} from {name_or_path!r}: {err}") from err


def load_tokenizer(
    name_or_path: str, cache_dir: Optional[str] = None, gguf_file: Optional[str] = None
) -> PreTrainedTokenizerBase:
    return _from_pretrained(AutoTokenizer, "a tokenizer", name_or_path, cache_dir, gguf_file)


def load_config(
    name_or_path: str, cache_dir: Optional[str] = None, gguf_file: Optional[str] = None
) -> PretrainedConfig:
    return _from_pretrained(AutoConfig, "a model config", name_or_path, cache_dir, gguf_file)


def load_causal_lm(
    name_or_path: str,
    gguf_file: Optional[str] = None,
    dtype: Optional[Union[str, torch.dtype]] = None,
    cache_dir: Optional[str] = None,
) -> PreTrainedModel:
    """An `AutoModelForCausalLM` in eval mode from a Hugging Face folder, a hub id or a GGUF file (dequantised by
    transformers with the `gguf` package). dtype None means float32."""
    import torch
    from transformers import AutoModelForCausalLM

    gguf = check_model_source(name_or_path, gguf_file)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            name_or_path, dtype=dtype or torch.float32, cache_dir=cache_dir, **({"gguf_file": gguf} if gguf else {})
        )
    except (OSError, ValueError) as err:
        raise TedInputError(f"Cannot load a causal language model from {name_or_path!r}: {err}") from err
    return model.eval()


def has_trained_head(config: PretrainedConfig, task: Task) -> bool:
    return task.kind.has_trained_head(config.architectures)


def _default_label_names(config: PretrainedConfig) -> bool:
    return all(name == f"LABEL_{i}" for i, name in sorted(config.id2label.items()))


def check_head_compatible(config: PretrainedConfig, task: Task, name: str) -> None:
    """A fine-tuned head must have the task's size and label order; a fresh head is built to fit."""
    if not task.kind.sequence_level or not has_trained_head(config, task):  # span heads have no label set
        return
    if config.num_labels != task.num_labels:
        raise TedInputError(
            f"{name} has a trained head with {config.num_labels} output(s) but task {task.name!r} needs "
            f"{task.num_labels}. Use a model fine-tuned on this task, or a pre-trained (headless) checkpoint."
        )
    if task.label_list and not _default_label_names(config):
        found = [config.id2label[i] for i in range(config.num_labels)]
        if found != list(task.label_list):
            raise TedInputError(
                f"{name} was trained with labels {found} (in id order) but task {task.name!r} has labels "
                f"{list(task.label_list)}. The label order must agree, otherwise its logits mean other classes."
            )


def config_for_task(
    name_or_path: str,
    task: Task,
    cache_dir: Optional[str] = None,
    overrides: Optional[dict[str, float]] = None,
    gguf_file: Optional[str] = None,
) -> PretrainedConfig:
    """The model's config with the task's head settings and the dropout overrides (None values are left alone)."""
    config = load_config(name_or_path, cache_dir, gguf_file)
    check_head_compatible(config, task, name_or_path)
    if task.kind.sequence_level:
        config.num_labels = task.num_labels
        labels = task.label_list or ["LABEL_0"]
        config.id2label = dict(enumerate(labels))
        config.label2id = {name: i for i, name in enumerate(labels)}
        config.problem_type = task.kind.problem_type
    for key, value in (overrides or {}).items():
        if value is not None:
            setattr(config, dropout_key(config, key, name_or_path), value)
    return config


def dropout_key(config: PretrainedConfig, option: str, name: str) -> str:
    """The config key a dropout option sets. An option the model has no key for would be a silent no-op
    (DistilBERT calls them `dropout` / `attention_dropout`): refuse it."""
    if option == "classifier_dropout" and config.model_type in ("deberta", "deberta-v2"):
        return "cls_dropout"  # DeBERTa's name for the head dropout (absent from its config until set)
    if option in config.to_dict():
        return option
    known = sorted(k for k in config.to_dict() if "dropout" in k)
    raise TedInputError(
        f"--{option} does not apply to {name} ({config.model_type}): its config has no {option!r}. "
        f"Its dropout settings are {known or 'none'}; remove --{option}."
    )


# Models whose position ids start after the padding index (RoBERTa family): fewer usable positions.
_POSITION_OFFSET_MODELS = ("roberta", "xlm-roberta", "camembert", "data2vec-text", "roberta-prelayernorm", "xmod")


def position_limit(config: PretrainedConfig) -> Optional[int]:
    """The longest input a model's absolute position embeddings cover; None for relative positions."""
    limit = getattr(config, "max_position_embeddings", None)
    relative = (
        getattr(config, "position_biased_input", True) is False  # DeBERTa-v3
        or getattr(config, "position_embedding_type", "absolute") not in ("absolute", None)
    )
    if not limit or relative:
        return None
    if config.model_type in _POSITION_OFFSET_MODELS:
        limit -= (config.pad_token_id or 0) + 1
    return int(limit)


def check_sequence_length(
    name_or_path: str, data_args: DataArguments, cache_dir: Optional[str] = None, gguf_file: Optional[str] = None
) -> DataArguments:
    """Refuse a --max_seq_length beyond the model's positions: long inputs would crash in the first step and
    short ones pass silently, so the same run would fail or not depending on the data. Returns `data_args`,
    completed for the model where the task family does that (causal_lm: --block_size and its check)."""
    # Resolving the task first says an unknown task name before anything about the model.
    squad = resolve_task_name(data_args.task_name, data_args).startswith("squad")
    fit = model_fit(data_args)
    limit = position_limit(load_config(name_or_path, cache_dir, gguf_file))
    if fit is not None:
        return fit(data_args, limit)
    max_seq_length = data_args.max_seq_length or (SQUAD_MAX_SEQ_LENGTH if squad else DEFAULT_MAX_SEQ_LENGTH)
    if limit is not None and max_seq_length > limit:
        raise TedInputError(
            f"--max_seq_length {max_seq_length} is longer than {name_or_path} can read (its position "
            f"embeddings cover {limit} tokens). Pass --max_seq_length {limit} or less."
        )
    return data_args


def fit_data_to_model(
    name_or_path: str, data_args: DataArguments, cache_dir: Optional[str] = None, gguf_file: Optional[str] = None
) -> DataArguments:
    """`data_args` completed (and checked) for the model's positions by the task family's hook (causal_lm:
    --block_size); unchanged for a family without one."""
    fit = model_fit(data_args)
    if fit is None:
        return data_args
    return fit(data_args, position_limit(load_config(name_or_path, cache_dir, gguf_file)))


def load_task_model(
    name_or_path: str,
    task: Task,
    cache_dir: Optional[str] = None,
    gguf_file: Optional[str] = None,
    tokenizer: Optional[PreTrainedTokenizerBase] = None,
    **overrides: Optional[float],
) -> PreTrainedModel:
    """An `AutoModelFor...` with the task's head; a pre-trained checkpoint gets a fresh head. A folder holding one
    GGUF file, or `gguf_file` in it, loads from that file (dequantised to float32), as `load_causal_lm` does.
    `tokenizer` (the one that pads the stage's batches): a decoder-only sequence classifier gets its pad token
    (EOS when it has none) and position ids from the attention mask (`ted.method.pooling`)."""
    config = config_for_task(name_or_path, task, cache_dir, overrides, gguf_file)
    gguf = check_model_source(name_or_path, gguf_file)
    extra = {"gguf_file": gguf, "dtype": "float32"} if gguf else {}
    try:
        model = task.kind.auto_class().from_pretrained(name_or_path, config=config, cache_dir=cache_dir, **extra)
    except (OSError, ValueError) as err:
        raise TedInputError(f"Cannot load model weights from {name_or_path!r}: {err}") from err
    if tokenizer is not None and task.kind.sequence_level:
        prepare_decoder_classifier(model, tokenizer)
    return dense(model, name_or_path) if gguf else model


def dense(model: PreTrainedModel, name: str) -> PreTrainedModel:
    """A GGUF model dequantised at load time as a plain model: the Trainer refuses a model with a quantizer
    attached, and its folder is written as stock float safetensors without a quantization_config."""
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is None:
        return model
    # transformers' legacy GGUF loader (`supported` False) always dequantises; the newer one may keep GGUF blocks.
    kept = getattr(quantizer, "supported", False) and not getattr(quantizer.quantization_config, "dequantize", False)
    if kept or any(not p.dtype.is_floating_point for p in model.parameters()):
        raise TedInputError(f"{name} loaded with its GGUF weights still quantized; a stage needs them dequantised.")
    quantizer.remove_quantization_config(model)  # transformers' own step for a model dequantised at load
    return model


def check_same_vocabulary(
    teacher_tokenizer: PreTrainedTokenizerBase, student_tokenizer: PreTrainedTokenizerBase, teacher: str, student: str
) -> None:
    """Teacher and student read the same token ids, so their vocabularies must be identical."""
    t_vocab, s_vocab = teacher_tokenizer.get_vocab(), student_tokenizer.get_vocab()
    if t_vocab == s_vocab:
        return
    only_t = len(set(t_vocab) - set(s_vocab))
    only_s = len(set(s_vocab) - set(t_vocab))
    moved = sum(1 for tok, i in s_vocab.items() if tok in t_vocab and t_vocab[tok] != i)
    raise TedInputError(
        f"Teacher {teacher!r} and student {student!r} use different vocabularies ({len(t_vocab)} vs "
        f"{len(s_vocab)} tokens; {only_t} only in the teacher, {only_s} only in the student, {moved} with "
        "different ids). Distillation feeds the same token ids to both models: pick a teacher and a student "
        "from the same tokenizer family."
    )


def num_layers(config: PretrainedConfig) -> int:
    for attr in ("num_hidden_layers", "n_layer", "num_layers"):
        if getattr(config, attr, None):
            return int(getattr(config, attr))
    raise TedInputError(f"Cannot tell how many layers a {type(config).__name__} model has.")
