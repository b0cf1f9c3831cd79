"""Content hashes that key a cache entry: the teacher's (or filters') weights and the tokenized training rows."""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Optional

import numpy as np
import torch

from ted.method.frozen_pass import INPUT_COLUMNS

if TYPE_CHECKING:
    from _hashlib import HASH

    import datasets


def _hash_tensor(h: HASH, name: str, tensor: torch.Tensor) -> None:
    t = tensor.detach().cpu().contiguous()
    h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
    raw = t.view(torch.uint8).numpy() if t.numel() else np.zeros(0, np.uint8)
    block = 1 << 20
    if raw.size <= 4 * block:
        h.update(raw.tobytes())
    else:  # big matrices: evenly spread 1 MiB blocks (any training changes all of them)
        for i in range(8):
            start = (raw.size - block) * i // 7
            h.update(raw[start : start + block].tobytes())


def module_identity(module: Optional[torch.nn.Module]) -> Optional[str]:
    """Content hash of a module's weights (and config, when it has one), not of the files it came from."""
    if module is None:
        return None
    h = hashlib.sha256()
    config = getattr(module, "config", None)
    if config is not None and hasattr(config, "to_diff_dict"):
        cfg = {k: v for k, v in config.to_diff_dict().items() if k not in ("_name_or_path", "transformers_version")}
        h.update(json.dumps(cfg, sort_keys=True, default=str).encode())
    elif config is not None:
        h.update(json.dumps(getattr(config, "__dict__", str(config)), sort_keys=True, default=str).encode())
    for name, tensor in sorted(module.state_dict().items()):
        _hash_tensor(h, name, tensor)
    return h.hexdigest()[:24]


def _column_arrays(dataset: datasets.Dataset, column: str) -> list[np.ndarray]:
    table = dataset.with_format("arrow")[:][column] if hasattr(dataset, "with_format") else None
    if table is None:
        return [np.asarray(dataset[column])]
    out = []
    for chunk in table.chunks:
        out += [np.asarray(chunk.offsets) - chunk.offsets[0].as_py(), np.asarray(chunk.flatten())]
    return out


def inputs_identity(dataset: datasets.Dataset) -> str:
    """Content hash of the tokenized training rows the teacher reads, in order."""
    h = hashlib.sha256(str(len(dataset)).encode())
    for column in INPUT_COLUMNS:
        if column in dataset.column_names:
            h.update(column.encode())
            for array in _column_arrays(dataset, column):
                h.update(np.ascontiguousarray(array, dtype=np.int64).tobytes())
    return h.hexdigest()[:24]


def labels_identity(dataset: datasets.Dataset) -> Optional[str]:
    """Content hash of per-token labels (a causal LM's -100 marks decide which positions are stored), or None."""
    if "labels" not in dataset.column_names:
        return None
    h = hashlib.sha256(b"labels")
    for array in _column_arrays(dataset, "labels"):
        h.update(np.ascontiguousarray(array, dtype=np.int64).tobytes())
    return h.hexdigest()[:24]


def real_lengths(dataset: datasets.Dataset) -> np.ndarray:
    """Real tokens per row: the row's own attention mask (padding when --pad_to_max_length), else its length."""
    column = "attention_mask" if "attention_mask" in dataset.column_names else "input_ids"
    arrays = _column_arrays(dataset, column)
    lengths = []
    for offsets, values in zip(arrays[::2], arrays[1::2]):
        if column == "attention_mask":
            totals = np.concatenate([[0], np.cumsum(values, dtype=np.int64)])
            lengths.append(totals[offsets[1:]] - totals[offsets[:-1]])
        else:
            lengths.append(np.diff(offsets))
    return np.concatenate(lengths).astype(np.int64) if lengths else np.zeros(0, np.int64)
