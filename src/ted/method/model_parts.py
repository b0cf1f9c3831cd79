"""Where a Hugging Face model keeps its layer stack and its final norm: found by shape and a few names, not by a
table of architectures, so any model of a known layout works (BERT `encoder.layer`, GPT-2 `transformer.h`,
Llama/Qwen2 `model.layers`; GPT-2's `ln_f`, Llama's and Qwen2's `norm`)."""

from __future__ import annotations

from typing import Optional

from torch import nn

# Where decoder families keep the norm applied to the last layer (beside the layer list or on the base model).
FINAL_NORM_NAMES = ("norm", "ln_f", "final_layernorm", "final_layer_norm", "norm_f")


def layer_list(model: nn.Module) -> Optional[tuple[str, nn.ModuleList]]:
    """(its name in `model`, the ModuleList of the model's layers), or None: the list of `num_hidden_layers` blocks of
    one class (GPT-2's `n_layer` answers to that name too); where several fit, the one with the most parameters."""
    total = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    if not isinstance(total, int):
        return None
    found = [
        (sum(p.numel() for p in module.parameters()), name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList)
        and len(module) == total
        and len({type(block) for block in module}) == 1
        and any(True for _ in module.parameters())
    ]
    if not found:
        return None
    _, name, module = max(found, key=lambda item: item[0])
    return name, module


def final_norm(model: nn.Module) -> Optional[nn.Module]:
    """The norm a decoder applies after its last layer (named as in FINAL_NORM_NAMES, beside the layer list or on the
    base model), or None."""
    found = layer_list(model)
    owners = [model.get_submodule(found[0].rpartition(".")[0])] if found else []
    owners.append(getattr(model, "base_model", model))
    for owner in owners:
        for name in FINAL_NORM_NAMES:
            norm = getattr(owner, name, None)
            if isinstance(norm, nn.Module) and not isinstance(norm, nn.ModuleList):
                return norm
    return None
