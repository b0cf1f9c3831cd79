"""Tiny offline assets for the stage tests: a word-level tokenizer, toy CSV data, tiny HF encoders.

Nothing here touches the network or the shared folder. Models are hidden 32, 2-4 layers, vocabulary
~25 tokens, so a whole fine-tune -> Stage I -> Stage II chain runs in seconds on one CPU thread.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from ted.cli.demo_assets import write_train_dev_csv

POSITIVE = ["good", "great", "fine"]
NEGATIVE = ["bad", "awful", "poor"]
FILLER = ["the", "movie", "was", "not", "very", "plot", "a", "film", "it"]
WORDS = POSITIVE + NEGATIVE + FILLER
HIDDEN = 32
MAX_LEN = 32


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread: on a shared 2-core machine OpenMP spinning makes tiny models ~10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def build_tokenizer(extra: tuple[str, ...] = (), reverse: bool = False):
    """A BERT-style word-level fast tokenizer over WORDS (+ `extra`); `reverse` permutes the word ids."""
    from ted.cli.demo_assets import build_tokenizer as word_level_tokenizer

    words = WORDS + list(extra)
    return word_level_tokenizer(words[::-1] if reverse else words, model_max_length=MAX_LEN)


def _sentence(rng: random.Random) -> tuple[str, int]:
    words = rng.choices(WORDS, k=rng.randint(3, 10))  # varied lengths: batches carry padding
    score = sum(w in POSITIVE for w in words) - sum(w in NEGATIVE for w in words)
    return " ".join(words), score


def write_data(
    folder: Path, n_train: int = 32, n_dev: int = 16, regression: bool = False, seed: int = 0
) -> tuple[Path, Path]:
    """train.csv / dev.csv with columns sentence,label: labels pos/neg, or float scores (STS-B-like)."""
    rng = random.Random(seed)

    def row(i):
        text, score = _sentence(rng)
        if regression:
            return text, f"{score / 2 + 0.25 + 0.01 * (i % 7):.3f}"  # never all whole numbers
        return text, "pos" if score > 0 else "neg"

    return write_train_dev_csv(folder, row, n_train, n_dev)


def model_config(arch: str, vocab_size: int, layers: int, pad_token_id: int, **extra):
    from transformers import BertConfig, DebertaV2Config, RobertaConfig

    common = dict(
        vocab_size=vocab_size,
        hidden_size=HIDDEN,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * HIDDEN,
        max_position_embeddings=64,
        pad_token_id=pad_token_id,
        **extra,
    )
    if arch == "bert":
        return BertConfig(**common)
    if arch == "roberta":
        # RoBERTa positions start at pad_token_id + 1: 64 positions cover MAX_LEN tokens with room to spare.
        return RobertaConfig(type_vocab_size=2, **common)
    if arch == "deberta-v2":
        return DebertaV2Config(
            relative_attention=True,
            pos_att_type=["p2c", "c2p"],
            position_biased_input=False,
            position_buckets=16,
            type_vocab_size=0,
            **common,
        )
    raise ValueError(arch)


def write_model(
    folder: Path,
    tokenizer,
    arch: str = "bert",
    layers: int = 2,
    seed: int = 0,
    head_labels: list[str] | None = None,
    **extra,
) -> Path:
    """A randomly initialised encoder saved with `tokenizer`; with `head_labels`, a *trained-looking*
    sequence-classification model (architectures = ...ForSequenceClassification) with those labels."""
    from transformers import AutoModel, AutoModelForSequenceClassification

    torch.manual_seed(seed)
    config = model_config(arch, len(tokenizer), layers, tokenizer.pad_token_id, **extra)
    if head_labels is None:
        model = AutoModel.from_config(config)
    else:
        config.num_labels = len(head_labels)
        config.id2label = dict(enumerate(head_labels))
        config.label2id = {name: i for i, name in enumerate(head_labels)}
        model = AutoModelForSequenceClassification.from_config(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def train_flags(train: Path, dev: Path, **overrides) -> list[str]:
    """Common CLI flags of a fast tiny run."""
    flags = {
        "train_file": str(train),
        "validation_file": str(dev),
        "max_seq_length": MAX_LEN,
        "num_train_epochs": 1,
        "per_device_train_batch_size": 16,
        "per_device_eval_batch_size": 16,
        "dataloader_pin_memory": False,
        "logging_steps": 1,
        "learning_rate": 1e-3,
        "seed": 0,
        "disable_tqdm": True,
    }
    flags.update(overrides)
    argv: list[str] = []
    for key, value in flags.items():
        argv += [f"--{key}", str(value)]
    return argv


def state_dict_of(folder: Path) -> dict[str, torch.Tensor]:
    """The weights file of a model folder, keyed by parameter name. some transformers 5.x releases write LayerNorm
    parameters under their legacy names (gamma/beta) when given a state dict; both names load the same."""
    from safetensors.torch import load_file

    legacy = {"LayerNorm.gamma": "LayerNorm.weight", "LayerNorm.beta": "LayerNorm.bias"}
    state = load_file(str(Path(folder) / "model.safetensors"))
    return {
        next((key.replace(old, new) for old, new in legacy.items() if key.endswith(old)), key): value
        for key, value in state.items()
    }


def write_stage1_model(
    folder: Path, tokenizer, layers: int, filter_layers: list[int], interval: int, seed: int, filter_dim: int = 16
) -> Path:
    """A fine-tuned-looking model without dropout, plus Stage I filters, as `ted learn-filters` would write."""
    from transformers import AutoConfig

    from ted.method.filters import new_filters

    write_model(
        folder,
        tokenizer,
        layers=layers,
        seed=seed,
        head_labels=["neg", "pos"],
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    torch.manual_seed(seed)
    new_filters(AutoConfig.from_pretrained(folder), filter_layers, filter_dim, False, interval=interval).save(folder)
    return folder


# Tiny decoders for the causal-LM tests (4 layers unless a test says otherwise): GPT-2 (tied embeddings), Llama
# (GQA, untied) and Qwen2 (GQA, tied). Ids 0/1/2 are pad/bos/eos, as in the decoder tokenizers of the tests.
DECODERS = {
    "gpt2": dict(n_embd=32, n_layer=4, n_head=2, n_positions=64),
    "llama": dict(
        hidden_size=32, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
        max_position_embeddings=64, tie_word_embeddings=False,
    ),
    "qwen2": dict(
        hidden_size=32, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
        max_position_embeddings=64, tie_word_embeddings=True,
    ),
}  # fmt: skip


def decoder(arch: str, vocab: int, seed: int = 0, **overrides):
    """A randomly initialised tiny `AutoModelForCausalLM` of `arch` (a DECODERS key), in eval mode."""
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    ids = dict(bos_token_id=1, eos_token_id=2, pad_token_id=0)
    config = AutoConfig.for_model(arch, vocab_size=vocab, **ids, **{**DECODERS[arch], **overrides})
    return AutoModelForCausalLM.from_config(config).eval()
