"""Reading the cache in training: the collator that adds each row's cached signal, and the teacher seam over it."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Optional, Union

import torch

from ted.method.kinds import get_kind
from ted.method.teacher_cache.store import Store
from ted.method.teacher_cache.topk import TOPK_IDS, TOPK_VALUES, dense_teacher, distilled_mask

if TYPE_CHECKING:
    from ted.method.kinds import Predictions

# A data collator: feature rows -> one batch (transformers' DataCollatorWithPadding and the like).
Collator = Callable[[list[dict[str, Any]]], dict[str, Any]]

EXAMPLE_INDEX = "ted_example_index"
LOGITS_KEY, STATES_KEY = "ted_teacher_logits", "ted_teacher_states"
TOPK_VALUES_KEY, TOPK_IDS_KEY = "ted_teacher_topk_logprobs", "ted_teacher_topk_ids"
BATCH_KEYS = (EXAMPLE_INDEX, LOGITS_KEY, STATES_KEY, TOPK_VALUES_KEY, TOPK_IDS_KEY)


def scatter_tokens(flat: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Real-token rows [n, ...] back into the padded batch [B, T, ...] (zeros at padding)."""
    positions = mask.flatten().nonzero().squeeze(1).to(flat.device)
    out = flat.new_zeros((mask.numel(), *flat.shape[1:]))
    out.index_copy_(0, positions, flat)
    return out.view(*mask.shape, *flat.shape[1:])


class CachedSignalCollator:
    """The run's collator, plus the cached teacher signal of each row (looked up by its example index).

    Training rows carry EXAMPLE_INDEX; evaluation rows do not and pass through unchanged. Per-token values
    belong to the kind's distilled positions of the batch (`head`; the real tokens without it; a causal LM's
    scored next tokens). States are emitted flat (`flat_states`: the CPU path of `DistillObjective`) or padded
    like the batch (accelerators, where the objective masks instead of gathering); a causal LM's top-k rows
    always padded, [B, T, k], for `CachedTeacher` to rebuild the teacher's distribution on the device."""

    def __init__(
        self, collator: Collator, stores: dict[str, Store], flat_states: bool, head: Optional[str] = None
    ) -> None:
        self.collator, self.stores, self.flat_states = collator, stores, flat_states
        self.kind = get_kind(head) if head is not None else None

    def __call__(self, features: list[dict]) -> dict:
        if not features or EXAMPLE_INDEX not in features[0]:
            return self.collator(features)
        index = [int(f[EXAMPLE_INDEX]) for f in features]
        batch = self.collator([{k: v for k, v in f.items() if k != EXAMPLE_INDEX} for f in features])
        if self.kind is not None:
            mask = distilled_mask(self.kind, batch)
        else:
            mask = batch.get("attention_mask")
            mask = torch.ones_like(batch["input_ids"]) if mask is None else mask
        batch[EXAMPLE_INDEX] = torch.tensor(index)
        if TOPK_VALUES in self.stores:
            batch[TOPK_VALUES_KEY] = scatter_tokens(self.stores[TOPK_VALUES].tokens(index), mask)
            batch[TOPK_IDS_KEY] = scatter_tokens(self.stores[TOPK_IDS].tokens(index), mask)
        logits = self.stores.get("logits")
        if logits is not None:
            if logits.component.per_token:
                batch[LOGITS_KEY] = scatter_tokens(logits.tokens(index), mask)
            else:
                batch[LOGITS_KEY] = logits.rows(index)
        states = self.stores.get("states")
        if states is not None:
            flat = states.tokens(index)
            batch[STATES_KEY] = flat if self.flat_states else scatter_tokens(flat, mask)
        return batch


class CachedTeacher:
    """The Teacher seam without the teacher: returns what `Teacher.__call__` would, read from the batch."""

    def __init__(self, head: str, layers: list[int], vocab_size: Optional[int] = None) -> None:
        self.head, self.kind, self.layers = head, get_kind(head), layers
        self.vocab_size = vocab_size  # a causal LM's: the width of the teacher distribution rebuilt from its top k
        self.model = torch.nn.Module().eval()  # nothing on the device: no parameters
        self.filters = None
        self.autocast_dtype = None

    def to(self, device: Union[torch.device, str]) -> CachedTeacher:
        return self

    def __call__(
        self, inputs: dict[str, torch.Tensor], with_states: bool, token_index: Optional[torch.Tensor] = None
    ) -> tuple[Optional[Predictions], Optional[list[torch.Tensor]]]:
        if EXAMPLE_INDEX not in inputs:
            raise RuntimeError("a training batch without its cached teacher signal (no example index column)")
        preds = inputs.get(LOGITS_KEY)
        if preds is not None:
            preds = self.kind.unstack(preds)  # the stored, stacked logits -> what the objective compares
        elif TOPK_VALUES_KEY in inputs:
            if self.vocab_size is None:
                raise RuntimeError("a top-k teacher cache read without the teacher's vocabulary size")
            preds = dense_teacher(inputs[TOPK_VALUES_KEY], inputs[TOPK_IDS_KEY], self.vocab_size)
        states = None
        if with_states:
            stored = inputs[STATES_KEY]
            if token_index is not None and stored.dim() == 4:  # padded, but the objective reads real tokens
                stored = stored.flatten(0, 1).index_select(0, token_index)
            elif token_index is None and stored.dim() == 3:  # flat, but the objective masks a padded batch
                stored = scatter_tokens(stored, inputs["attention_mask"])
            states = list(stored.unbind(dim=-2))
        return preds, states


def strip_batch_keys(inputs: dict) -> dict:
    """The model inputs without what the cache added to the batch."""
    return {k: v for k, v in inputs.items() if k not in BATCH_KEYS}
