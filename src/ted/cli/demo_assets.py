"""Built-in offline assets for `ted demo`: a synthetic text task, a word-level tokenizer, tiny models.

The task is generated deterministically by this code (nothing is downloaded): short "reviews"
made of sentiment words, negations and filler, labelled positive when the negation-
aware polarity sum is positive. Negation scope makes it a little harder for a tiny 2-layer student
than for a 4-layer teacher, which is what a distillation demo needs. It is synthetic and says so.
"""

from __future__ import annotations

import csv
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

POSITIVE = ["good", "great", "fine", "lovely", "superb", "pleasant", "brilliant", "solid", "charming", "fun"]
NEGATIVE = ["bad", "awful", "poor", "dull", "boring", "weak", "messy", "clumsy", "bland", "grim"]
NEGATIONS = ["not", "never", "hardly"]
FILLER = [
    "the",
    "movie",
    "plot",
    "acting",
    "was",
    "and",
    "but",
    "quite",
    "a",
    "film",
    "story",
    "cast",
    "music",
    "ending",
    "it",
    "felt",
    "seemed",
    "overall",
    "still",
    "also",
]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
LABELS = ["negative", "positive"]


def _sentence(rng: random.Random) -> tuple[str, int]:
    words, score = [], 0
    for _ in range(rng.randint(1, 3)):
        words += rng.sample(FILLER, rng.randint(1, 2))
        negated = rng.random() < 0.35
        if negated:
            words.append(rng.choice(NEGATIONS))
        polarity = 1 if rng.random() < 0.5 else -1
        words.append(rng.choice(POSITIVE if polarity > 0 else NEGATIVE))
        score += polarity * (-1 if negated else 1)
    if score == 0:  # no ties: a final plain sentiment word decides
        polarity = 1 if rng.random() < 0.5 else -1
        words += ["overall", rng.choice(POSITIVE if polarity > 0 else NEGATIVE)]
        score = polarity
    return " ".join(words), int(score > 0)


def write_train_dev_csv(
    folder: Path, make_row: Callable[[int], Sequence[object]], n_train: int, n_dev: int
) -> tuple[Path, Path]:
    """folder/train.csv and folder/dev.csv with columns sentence,label; `make_row(i)` gives (text, label)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, n in (("train.csv", n_train), ("dev.csv", n_dev)):
        path = folder / name
        with path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["sentence", "label"])
            writer.writerows(make_row(i) for i in range(n))
        paths.append(path)
    return paths[0], paths[1]


def write_synthetic_task(folder: Path, n_train: int = 2000, n_dev: int = 400, seed: int = 0) -> tuple[Path, Path]:
    rng = random.Random(seed)

    def row(_: int) -> tuple[str, str]:
        text, label = _sentence(rng)
        return text, LABELS[label]

    return write_train_dev_csv(folder, row, n_train, n_dev)


def build_tokenizer(words: list[str] | None = None, model_max_length: int = 64) -> PreTrainedTokenizerFast:
    """A word-level tokenizer with BERT-style special tokens over `words` (default: the demo's vocabulary)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    if words is None:
        words = sorted(set(POSITIVE + NEGATIVE + NEGATIONS + FILLER + ["overall"]))
    vocab = {tok: i for i, tok in enumerate(SPECIALS + list(words))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=model_max_length,
    )


def write_tiny_model(folder: Path, tokenizer: PreTrainedTokenizerBase, layers: int, hidden: int, seed: int) -> Path:
    """A randomly initialised BERT encoder (no task head) saved with its tokenizer."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=hidden * 2,
        max_position_embeddings=64,
        pad_token_id=tokenizer.pad_token_id,
    )
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
