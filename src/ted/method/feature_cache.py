"""Cached Stage I features for classification / regression.

With the frozen backbone in eval mode (`--stage1_backbone_mode eval`), a Stage I head only reads one
position of its filter's output (token 0 for encoders, each row's last real token for decoders: the rule of
`ted.method.pooling`), and a filter is position-wise. So the backbone is run once over the data, under
`torch.inference_mode()` in the run's own precision (bf16 autocast only under --bf16, fp16 only under --fp16
on CUDA, else float32), keeping that token of each selected layer's hidden state; the filters and heads then
train on these [K, hidden] features for all epochs through the same `TedTrainer` (`modules.CachedFilterLearner`).

Batches for the single backbone pass are sorted by length (least padding). Under DDP every process
computes a share of the batches and the shares are summed across processes, so the pass is split
across devices instead of repeated. Memory: N examples x K layers x hidden x 4 bytes (2 with bf16),
kept in host memory by every process; e.g. RTE with a 12-layer base teacher: 2,490 x 12 x 768 x 4 B = 92 MB,
MNLI: 14.5 GB (7.2 GB in bf16). When the caches of all processes on a machine would take more than half of
its available memory, Stage I runs the eval-mode backbone on every batch instead (same results, slower).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Optional

import torch
from accelerate.utils import reduce
from torch.utils.data import Dataset

from ted.method import frozen_pass
from ted.method.frozen_pass import padded_batches, process_share
from ted.method.pooling import pool, pooled_token

if TYPE_CHECKING:
    import datasets
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

# The precision of the one backbone pass: the run's own (a float32 run caches float32 features, so the cached
# Stage I equals the uncached eval-mode one). The name stays for the stages and benchmarks that import it.
cache_autocast_dtype = frozen_pass.autocast_dtype
_REDUCE_ROWS = 4096  # rows summed across processes at a time (bounds device memory under DDP)


class CachedFeatures(Dataset):
    """Rows {"features": [K, hidden], "labels": label} for `CachedFilterLearner` + `FilterObjective`."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        if len(features) != len(labels):
            raise ValueError(f"{len(features)} feature rows but {len(labels)} labels")
        self.features = features
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"features": self.features[index], "labels": self.labels[index]}


def cache_bytes(rows: int, layers: int, hidden_size: int, dtype: Optional[torch.dtype]) -> int:
    """Host memory of one process's cache (every process holds all rows: the sampler shuffles over all)."""
    itemsize = 2 if dtype == torch.bfloat16 else 4
    return rows * layers * hidden_size * itemsize


def available_memory_bytes() -> int:
    """Memory this machine can still give without swapping (psutil, a dependency of accelerate)."""
    import psutil

    return int(psutil.virtual_memory().available)


def cache_fits(needed_per_process: int, processes_on_node: int, fraction: float = 0.5) -> tuple[bool, str]:
    """Whether the caches of all processes on this machine fit in `fraction` of its available memory, and why."""
    total = needed_per_process * processes_on_node
    available = available_memory_bytes()
    gib = 1024**3
    why = (
        f"the Stage I feature cache needs {total / gib:.2f} GiB ({processes_on_node} process(es) x "
        f"{needed_per_process / gib:.2f} GiB)"
    )
    return total <= fraction * available, why + f" of {available / gib:.2f} GiB available"


def pooled_token_features(
    backbone: torch.nn.Module,
    dataset: datasets.Dataset,
    layers: list[int],
    tokenizer: PreTrainedTokenizerBase,
    device: torch.device,
    batch_size: int = 64,
    autocast_dtype: Optional[torch.dtype] = None,
) -> CachedFeatures:
    """The token a Stage I head reads (`ted.method.pooling.pooled_token` of the backbone: token 0, or each row's
    last real token) of `hidden_states[i + 1]` for every selected layer i, for every row of a tokenized dataset.

    Stored in bf16 under bf16 autocast, else float32 (an fp16 pass is stored in float32)."""
    rule = pooled_token(backbone.config)
    n = len(dataset)
    labels = torch.tensor(dataset["labels"])
    rank, world = process_share()
    hidden_size = backbone.config.hidden_size
    store_dtype = autocast_dtype if autocast_dtype == torch.bfloat16 else torch.float32
    features = torch.zeros(n, len(layers), hidden_size, dtype=store_dtype)
    was_training = backbone.training
    backbone.eval()
    autocast = (
        torch.autocast(device.type, dtype=autocast_dtype)
        if autocast_dtype is not None
        else torch.autocast(device.type, enabled=False)
    )
    try:
        with autocast:
            for index, batch in padded_batches(dataset, tokenizer, device, batch_size, rank, world):
                with torch.inference_mode():
                    hidden = backbone(**batch, output_hidden_states=True).hidden_states
                    mask = batch.get("attention_mask")
                    read = torch.stack([pool(hidden[i + 1], rule, mask) for i in layers], dim=1)
                # Copied into an ordinary tensor: the cache feeds autograd later (inference tensors cannot).
                features[index] = read.to(store_dtype).cpu()
    finally:
        backbone.train(was_training)
    if world > 1:
        _gather_rows(features, device)
    return CachedFeatures(features, labels)


def _gather_rows(features: torch.Tensor, device: torch.device) -> None:
    """Each row was computed by exactly one process (zeros elsewhere): a sum across processes gathers them all."""
    reduce_device = device if torch.distributed.get_backend() != "gloo" else torch.device("cpu")
    for start in range(0, len(features), _REDUCE_ROWS):
        chunk = features[start : start + _REDUCE_ROWS].to(reduce_device)
        features[start : start + _REDUCE_ROWS] = reduce(chunk, reduction="sum").cpu()
