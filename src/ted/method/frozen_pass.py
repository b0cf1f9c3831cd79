"""One pass of a frozen model over a tokenized dataset: length-sorted padded batches, each process a share."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Optional

import torch

if TYPE_CHECKING:
    import datasets
    from transformers import PreTrainedTokenizerBase

INPUT_COLUMNS = ("input_ids", "attention_mask", "token_type_ids")


def process_share() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside torch.distributed."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def autocast_dtype(device: torch.device, bf16: bool = False, fp16: bool = False) -> Optional[torch.dtype]:
    """The precision a frozen model runs in: the run's own (bf16 under --bf16, fp16 under --fp16 on CUDA only,
    since fp16 autocast is CUDA-only), else None (float32), so a float32 run's cache equals the uncached run."""
    if bf16:
        return torch.bfloat16
    if fp16 and device.type == "cuda":
        return torch.float16
    return None


def length_sorted_batches(dataset: datasets.Dataset, batch_size: int) -> list[list[int]]:
    """Row indices in batches of similar length (least padding), shortest first."""
    sizes = [len(ids) for ids in dataset["input_ids"]]
    order = sorted(range(len(sizes)), key=sizes.__getitem__)
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def padded_batches(
    dataset: datasets.Dataset,
    tokenizer: PreTrainedTokenizerBase,
    device: torch.device,
    batch_size: int,
    rank: int = 0,
    world: int = 1,
) -> Iterator[tuple[list[int], dict[str, torch.Tensor]]]:
    """(row indices, padded model inputs on `device`) for every `world`-th length-sorted batch, from `rank`."""
    columns = [k for k in INPUT_COLUMNS if k in dataset.column_names]
    for b, index in enumerate(length_sorted_batches(dataset, batch_size)):
        if b % world != rank:
            continue
        rows = dataset[index]
        batch = tokenizer.pad({k: rows[k] for k in columns}, return_tensors="pt")
        yield index, {k: v.to(device) for k, v in batch.items()}
