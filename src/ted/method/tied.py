"""Trained modules that hold a model with tied weights (a causal LM's LM head tied to its input embeddings)."""

from __future__ import annotations

from typing import Any

from torch import nn


class TiedWeights(nn.Module):
    """A mixin for ted's wrapper modules (Stage I learners, the Stage II student): each weight saved once.

    The names under which a tied parameter appears again are left out of the state dict, so the Trainer's
    checkpoints (safetensors refuses shared tensors) hold each weight once; a checkpoint missing just these keys
    is loaded and then re-tied (`tie_weights`, which the Trainer calls)."""

    @property
    def _keys_to_ignore_on_save(self) -> list[str]:
        first: dict[int, str] = {}
        again = []
        for name, param in self.named_parameters(remove_duplicate=False):
            if first.setdefault(id(param), name) != name:
                again.append(name)
        return again

    def tie_weights(self) -> None:
        for child in self.children():
            if hasattr(child, "tie_weights"):
                child.tie_weights()

    def state_dict(self, *args: Any, destination: Any = None, prefix: str = "", keep_vars: bool = False) -> Any:
        state = super().state_dict(*args, destination=destination, prefix=prefix, keep_vars=keep_vars)
        for name in self._keys_to_ignore_on_save:
            state.pop(prefix + name, None)
        return state
