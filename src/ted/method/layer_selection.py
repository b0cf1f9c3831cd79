"""Which teacher layers a layer-dropped student keeps: uniform, first, last, explicit indices or block influence.

Every strategy returns the kept teacher layer indices, unique and in increasing order; the student's layer k is
the teacher's layer `kept[k]`. `uniform` keeps layer `i * L // N` for i = 0..N-1: every k-th layer from layer 0
when N divides L (DistilBERT's 0,2,...,10 of 12; 0,2,...,28 of 30), never the last layer unless N == L.
`block_influence` is ShortGPT's score (Men et al., 2024): BI_l = 1 - mean over real tokens of cos(h_in, h_out)
for layer l, measured with forward hooks on the layers themselves (Hugging Face's last `hidden_states` entry is
already after the final norm in GPT-2 / Llama-family models, so it is not the last layer's output); the N
layers with the highest BI are kept, ties to the lower index.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Optional

from ted.errors import TedInputError

if TYPE_CHECKING:
    import torch
    from torch import nn

STRATEGIES = ("uniform", "first", "last", "block_influence")
EXPLICIT = "explicit"  # the strategy recorded when the user names the layers (--layers)


def parse_layers(text: str) -> list[int]:
    """`"0,3,5"` -> [0, 3, 5] (spaces allowed); a clear error for anything else."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        return [int(p) for p in parts if p]
    except ValueError:
        raise TedInputError(
            f"--layers {text!r} is not a comma-separated list of layer indices; write e.g. --layers 0,3,5."
        ) from None


def check_num_layers(num_layers: int, total: int) -> int:
    """A student depth in 1..total (total itself: a plain copy, useful as a check)."""
    if isinstance(num_layers, bool) or not isinstance(num_layers, int) or not 1 <= num_layers <= total:
        raise TedInputError(
            f"--num_layers {num_layers!r}: the teacher has {total} layers, so the student keeps 1 to {total} "
            f"of them (fewer than {total} to make it smaller)."
        )
    return num_layers


def check_layers(layers: Iterable[int], total: int) -> list[int]:
    """Explicit indices, sorted: unique, each in 0..total-1, at least one."""
    layers = list(layers)
    if not layers:
        raise TedInputError(f"--layers is empty; name the teacher layers to keep (0 to {total - 1}), e.g. 0,3,5.")
    bad = [i for i in layers if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < total]
    if bad:
        raise TedInputError(f"--layers {bad} out of range: the teacher has {total} layers, numbered 0 to {total - 1}.")
    repeated = sorted({i for i in layers if layers.count(i) > 1})
    if repeated:
        raise TedInputError(f"--layers names layer(s) {repeated} more than once; name each kept layer once.")
    return sorted(layers)


def uniform_layers(total: int, num_layers: int) -> list[int]:
    """Layer `i * total // num_layers` for i = 0..num_layers-1 (every k-th from layer 0 when k = total/num_layers)."""
    check_num_layers(num_layers, total)
    return [i * total // num_layers for i in range(num_layers)]


def first_layers(total: int, num_layers: int) -> list[int]:
    """Layers 0..num_layers-1."""
    return list(range(check_num_layers(num_layers, total)))


def last_layers(total: int, num_layers: int) -> list[int]:
    """The top num_layers layers, total-num_layers..total-1."""
    return list(range(total - check_num_layers(num_layers, total), total))


def top_influence_layers(scores: Sequence[float], num_layers: int) -> list[int]:
    """The num_layers layers with the highest block influence (ties: the lower index), in increasing order."""
    check_num_layers(num_layers, len(scores))
    ranked = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    return sorted(ranked[:num_layers])


def select_layers(
    total: int,
    num_layers: Optional[int] = None,
    strategy: str = "uniform",
    layers: Optional[Iterable[int]] = None,
    scores: Optional[Sequence[float]] = None,
) -> list[int]:
    """The kept layers: `layers` when given (explicit), else `num_layers` chosen by `strategy`."""
    if layers is not None:
        if num_layers is not None:
            raise TedInputError("Pass either --layers or --num_layers (with --strategy), not both.")
        return check_layers(layers, total)
    if num_layers is None:
        raise TedInputError("Say how many layers the student keeps: --num_layers N, or name them: --layers 0,3,5.")
    if strategy == "block_influence":
        if scores is None:
            raise TedInputError(
                "--strategy block_influence measures the layers on sample text: pass --train_file with plain text."
            )
        if len(scores) != total:
            raise TedInputError(f"{len(scores)} block-influence scores for a teacher with {total} layers.")
        return top_influence_layers(scores, num_layers)
    choose = {"uniform": uniform_layers, "first": first_layers, "last": last_layers}.get(strategy)
    if choose is None:
        raise TedInputError(f"--strategy {strategy!r} is not one of {', '.join(STRATEGIES)}.")
    return choose(total, num_layers)


def _hidden(value: object) -> torch.Tensor:
    """The hidden states of a layer's input or output (layers return a tensor or a tuple led by it)."""
    return value[0] if isinstance(value, (tuple, list)) else value


def block_influence(
    model: nn.Module, layer_list: nn.ModuleList, batches: Iterable[dict[str, torch.Tensor]]
) -> list[float]:
    """ShortGPT block influence of every layer in `layer_list`: 1 - mean over real tokens of cos(h_in, h_out).

    `batches`: model inputs (input_ids and optionally attention_mask; a missing mask means every token is real).
    Cosines are taken in float32 and averaged over all real tokens of all batches together.
    """
    import torch

    total = len(layer_list)
    sums = torch.zeros(total, dtype=torch.float64)
    count = 0
    inputs: dict[int, torch.Tensor] = {}
    mask: list[torch.Tensor] = []

    def pre_hook(index: int) -> object:
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            inputs[index] = _hidden(args[0] if args else kwargs["hidden_states"])

        return hook

    def post_hook(index: int) -> object:
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: object) -> None:
            h_in, h_out = inputs.pop(index).float(), _hidden(output).float()
            cos = torch.nn.functional.cosine_similarity(h_in, h_out, dim=-1)  # [batch, length]
            sums[index] += cos[mask[0]].double().sum()

        return hook

    handles = []
    for index, layer in enumerate(layer_list):
        handles.append(layer.register_forward_pre_hook(pre_hook(index), with_kwargs=True))
        handles.append(layer.register_forward_hook(post_hook(index), with_kwargs=True))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in batches:
                ids = batch["input_ids"]
                real = batch.get("attention_mask")
                mask[:] = [torch.ones_like(ids, dtype=torch.bool) if real is None else real.bool()]
                model(**batch)
                count += int(mask[0].sum())
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if count == 0:
        raise TedInputError("No tokens to measure block influence on: the sample text is empty.")
    return [float(1.0 - s / count) for s in sums]
