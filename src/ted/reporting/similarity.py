"""Linear CKA (Kornblith et al., 2019) between matched teacher and student layers, for `ted report`.

CKA compares two sets of representations of the same examples, [n, d1] and [n, d2], independent of their
widths, rotations and scales: 1 means the same geometry up to a linear map that preserves angles, 0 none.
Each example is one vector: its layer's hidden states averaged over its real tokens.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Optional

import numpy as np

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA of two [n, d] representation matrices of the same n examples."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or len(x) != len(y):
        raise ValueError("linear_cka needs two [n, d] arrays with the same n")
    x = x - x.mean(axis=0)
    y = y - y.mean(axis=0)
    cross = np.linalg.norm(y.T @ x) ** 2  # ||Y^T X||_F^2 = HSIC(K, L) up to a constant
    norm = np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)
    return float(cross / norm) if norm > 0 else 0.0


def pooled_layers(
    model: PreTrainedModel, batches: Iterable[Mapping[str, torch.Tensor]], layers: list[int]
) -> dict[int, np.ndarray]:
    """Mean over real tokens of each 0-based layer's hidden states, one row per example."""
    import torch

    out: dict[int, list[np.ndarray]] = {layer: [] for layer in layers}
    model.eval()
    with torch.inference_mode():
        for batch in batches:
            mask = batch["attention_mask"].unsqueeze(-1).float()
            inputs = {k: v for k, v in batch.items() if k not in ("labels", "idx")}
            hidden = model(**inputs, output_hidden_states=True).hidden_states
            for layer in layers:
                pooled = (hidden[layer + 1].float() * mask).sum(1) / mask.sum(1).clamp_min(1.0)
                out[layer].append(pooled.numpy())
    return {layer: np.concatenate(parts) for layer, parts in out.items()}


def layer_cka(
    teacher: str, students: dict[str, str], pairs: list[list[int]], args: dict, max_examples: int = 256
) -> Optional[dict[str, list[float]]]:
    """CKA of each (student layer, teacher layer) pair on up to `max_examples` dev examples of the stage's task,
    for each named student folder (e.g. before / after Stage II). None when the data cannot be loaded."""
    from transformers import AutoModel

    from ted.errors import TedInputError
    from ted.settings.options import DataArguments
    from ted.stages.common import make_collator, model_columns
    from ted.stages.models import load_tokenizer
    from ted.tasks import load_task

    names = {f for f in DataArguments.__dataclass_fields__ if not f.startswith("_")}
    data_args = DataArguments(**{k: v for k, v in args.items() if k in names})
    data_args.max_eval_samples = max_examples
    tokenizer = load_tokenizer(teacher)
    try:
        _, data = load_task(data_args, tokenizer)
    except (TedInputError, OSError, ValueError):
        return None
    dev = model_columns(next(iter(data.eval_sets.values())))
    collate = make_collator(tokenizer, _NoMixedPrecision())
    rows = [dev[i] for i in range(len(dev))]
    batches = [collate(rows[i : i + 32]) for i in range(0, len(rows), 32)]
    t_layers, s_layers = [p[1] for p in pairs], [p[0] for p in pairs]
    t_states = pooled_layers(AutoModel.from_pretrained(teacher), batches, t_layers)
    out = {}
    for name, folder in students.items():
        s_states = pooled_layers(AutoModel.from_pretrained(folder), batches, s_layers)
        out[name] = [linear_cka(s_states[s], t_states[t]) for s, t in zip(s_layers, t_layers)]
    return out


class _NoMixedPrecision:
    fp16 = bf16 = False
