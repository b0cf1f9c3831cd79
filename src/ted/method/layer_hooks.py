"""The selected layers' hidden states of a frozen model, kept by forward hooks instead of `output_hidden_states`.

`model(**inputs, output_hidden_states=True)` keeps every layer's [B, T, d] hidden state until the forward ends; a
deep teacher distilled through a few layers reads only those. `LayerTaps` hooks just the selected layers for the
length of one call and returns what `hidden_states[i + 1]` would hold, keyed the same way (layer i -> i + 1).

Hugging Face's last `hidden_states` entry is the last layer's output *after the final norm* in decoder families
(GPT-2's `ln_f`, Llama's and Qwen2's `norm`), so for that layer the tap may be on the final norm instead. Which
module gives each selected entry is measured, not assumed: once, on up to `PROBE_TOKENS` real tokens of the first
batch, the model runs with every candidate hooked *and* `output_hidden_states=True`, and a candidate is taken only
when its output equals the entry exactly. A model whose layer stack is not found, or where no candidate matches,
runs with `output_hidden_states=True` as before (logged).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from typing import Any, Optional

import torch
from torch import nn

from ted.method.model_parts import final_norm, layer_list

logger = logging.getLogger(__name__)

PROBE_TOKENS = 8  # tokens of the first batch's first row the one-time check runs on


def hidden_of(value: Any) -> torch.Tensor:
    """The hidden states a layer returns: a tensor, or a tuple led by it."""
    return value[0] if isinstance(value, (tuple, list)) else value


def find_layer_stack(model: nn.Module) -> Optional[tuple[nn.ModuleList, Optional[nn.Module]]]:
    """(the model's layer list, its final norm or None), or None when there is no single layer list
    (ted.method.model_parts)."""
    found = layer_list(model)
    return None if found is None else (found[1], final_norm(model))


@contextlib.contextmanager
def capturing(modules: Mapping[Any, nn.Module], into: dict[Any, torch.Tensor]) -> Iterator[None]:
    """Forward hooks that store each module's output in `into[key]` while the block runs, removed after it."""

    def keep(key: Any) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            into[key] = hidden_of(output)

        return hook

    handles = [module.register_forward_hook(keep(key)) for key, module in modules.items()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def probe_inputs(inputs: Mapping[str, Any]) -> dict[str, Any]:
    """A small valid input: the first row's first PROBE_TOKENS real tokens (every [B, T, ...] input cut alike)."""
    ids = inputs["input_ids"]
    mask = inputs.get("attention_mask")
    real = mask[0] != 0 if mask is not None else torch.ones(ids.shape[1], dtype=torch.bool, device=ids.device)
    keep = real.nonzero().squeeze(1)[:PROBE_TOKENS]
    if keep.numel() == 0:
        keep = torch.zeros(1, dtype=torch.long, device=ids.device)
    out = {}
    for key, value in inputs.items():
        fits = torch.is_tensor(value) and value.dim() >= 2 and value.shape[:2] == ids.shape[:2]
        out[key] = value[:1].index_select(1, keep) if fits else value
    return out


class LayerTaps:
    """Runs a model and returns (its outputs, {i + 1: hidden state of layer i} for the selected layers only)."""

    def __init__(self, model: nn.Module, layers: list[int]) -> None:
        self.model = model
        self.indices = sorted({i + 1 for i in layers})  # hidden-states indices, as HF numbers them
        self.sources: Optional[dict[int, nn.Module]] = None  # index -> the module whose output it is
        self.checked = not self.indices  # nothing to tap: never probed, always the plain call
        self.candidates: dict[int, list[nn.Module]] = {}
        stack = find_layer_stack(model) if self.indices else None
        if self.indices and stack is None:
            name = type(model).__name__
            logger.debug("%s: no layer list found; its layers are read with output_hidden_states.", name)
            self.checked = True
        elif stack is not None:
            layer_list, norm = stack
            last = len(layer_list)
            for index in self.indices:
                if not 1 <= index <= last:
                    raise ValueError(f"layer {index - 1} is out of range: the model has {last} layers")
                self.candidates[index] = [layer_list[index - 1]]
                if index == last and norm is not None:  # HF's last entry is after the final norm in decoders
                    self.candidates[index].insert(0, norm)

    @property
    def hooked(self) -> bool:
        """Whether calls read the selected layers by hooks (False: output_hidden_states)."""
        return self.sources is not None

    def check(self, inputs: Mapping[str, Any]) -> None:
        """Pick, for each selected entry, the candidate whose output equals `hidden_states[index]` exactly."""
        self.checked = True
        flat = {(index, k): module for index, options in self.candidates.items() for k, module in enumerate(options)}
        captured: dict[Any, torch.Tensor] = {}
        with capturing(flat, captured):
            reference = self.model(**probe_inputs(inputs), output_hidden_states=True).hidden_states
        sources = {}
        for index, options in self.candidates.items():
            match = next((m for k, m in enumerate(options) if _same(captured.get((index, k)), reference[index])), None)
            if match is None:
                logger.info(
                    "%s: the output of no module equals hidden_states[%d]; its layers are read with "
                    "output_hidden_states (more memory, same values).",
                    type(self.model).__name__,
                    index,
                )
                return
            sources[index] = match
        self.sources = sources

    def __call__(self, inputs: Mapping[str, Any]) -> tuple[Any, Mapping[int, torch.Tensor]]:
        """(the model's outputs, the selected hidden states keyed like HF's `hidden_states`)."""
        if not self.checked:
            self.check(inputs)
        if self.sources is None:
            outputs = self.model(**inputs, output_hidden_states=True)
            return outputs, outputs.hidden_states
        captured: dict[Any, torch.Tensor] = {}
        with capturing(self.sources, captured):
            outputs = self.model(**inputs)
        return outputs, captured


def _same(found: Optional[torch.Tensor], expected: Optional[torch.Tensor]) -> bool:
    return found is not None and expected is not None and found.shape == expected.shape and torch.equal(found, expected)
