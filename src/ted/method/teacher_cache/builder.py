"""Building the missing entries: one inference-mode pass of the teacher, each process writing a share of the rows."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, TypeVar

import numpy as np
import torch
from filelock import FileLock

from ted import artifacts
from ted.method.frozen_pass import padded_batches, process_share
from ted.method.teacher_cache.identity import real_lengths
from ted.method.teacher_cache.plan import DTYPES, Component
from ted.method.teacher_cache.store import finish_folder, is_complete, start_folder
from ted.method.teacher_cache.topk import (
    TOPK_IDS,
    TOPK_VALUES,
    collated_batches,
    distilled_mask,
    position_counts,
    top_log_probs,
)

if TYPE_CHECKING:
    import datasets
    from transformers import PreTrainedTokenizerBase

    from ted.method.modules import Teacher
    from ted.method.teacher_cache.collate import Collator

T = TypeVar("T")

LOCK_FILE = ".ted_teacher_cache.lock"


def from_main_process(value: T) -> T:
    """Process 0's `value` in every process (torchrun); itself with one process."""
    if process_share()[1] == 1:
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if process_share()[1] > 1:
        torch.distributed.barrier()


def build(
    root: Path,
    components: list[Component],
    teacher: Teacher,
    dataset: datasets.Dataset,
    tokenizer: PreTrainedTokenizerBase,
    device: torch.device,
    batch_size: int = 64,
    collator: Optional[Collator] = None,
) -> dict[str, Any]:
    """Compute and store the missing components (each process a share of the batches); returns what was done.

    `collator`: the run's, for a kind whose labels decide the stored positions (a causal LM); batches are then
    padded exactly as in training. Without it the tokenizer pads the model inputs alone.
    Process 0 holds a lock on ROOT while building: another run building into the same folder waits, then finds
    the entries complete (a killed build holds no lock, so its `.building` folder is safely started again)."""
    rank, _ = process_share()
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / LOCK_FILE)) if rank == 0 else contextlib.nullcontext():
        complete = {c.name for c in components if is_complete(root / c.folder_name, c)}
        missing = [c for c in components if c.name not in from_main_process(complete)]
        report = {"built": [c.name for c in missing], "build_seconds": 0.0}
        if missing:
            start = time.perf_counter()
            _build_missing(root, missing, teacher, dataset, tokenizer, device, batch_size, collator)
            report["build_seconds"] = round(time.perf_counter() - start, 3)
    return report


def _build_missing(
    root: Path,
    missing: list[Component],
    teacher: Teacher,
    dataset: datasets.Dataset,
    tokenizer: PreTrainedTokenizerBase,
    device: torch.device,
    batch_size: int,
    collator: Optional[Collator] = None,
) -> None:
    rank, world = process_share()
    lengths = stored_lengths(dataset, teacher, collator)
    offsets = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    tmps = {c.name: root / f".{c.folder_name}.building" for c in missing}
    if rank == 0:
        for c in missing:
            start_folder(tmps[c.name], c, len(lengths), int(offsets[-1]), offsets)
    barrier()
    arrays = {c.name: np.load(tmps[c.name] / "values.npy", mmap_mode="r+") for c in missing}
    teacher.to(device)
    if collator is not None:
        batches = collated_batches(dataset, collator, device, batch_size, rank, world)
    else:
        batches = padded_batches(dataset, tokenizer, device, batch_size, rank, world)
    _fill(arrays, missing, teacher, batches, offsets)
    for array in arrays.values():
        array.flush()
    del arrays
    barrier()
    if rank == 0:
        for c in missing:
            finish_folder(tmps[c.name], root / c.folder_name, c, len(lengths))
    barrier()


def stored_lengths(dataset: datasets.Dataset, teacher: Teacher, collator: Optional[Collator]) -> np.ndarray:
    """Per row, the positions a per-token component stores: the kind's distilled positions (through the run's
    collator when it is given: a causal LM's scored next tokens), else the real tokens."""
    return real_lengths(dataset) if collator is None else position_counts(dataset, teacher.kind, collator)


def _fill(
    arrays: dict[str, np.ndarray],
    components: list[Component],
    teacher: Teacher,
    batches: Iterator[tuple[list[int], dict[str, torch.Tensor]]],
    offsets: np.ndarray,
) -> None:
    """One inference-mode pass over this process's share of the length-sorted batches."""
    from ted.method.objectives import stack_predictions  # objectives imports the cache's batch keys

    need_states = any(c.name == "states" for c in components)
    store = {c.name: c for c in components}
    for index, batch in batches:
        positions = distilled_mask(teacher.kind, batch)
        token_index = positions.flatten().nonzero().squeeze(1)
        inputs, _ = teacher.kind.split_labels(batch)
        preds, states = teacher(inputs, with_states=need_states, token_index=token_index)
        if TOPK_VALUES in store:  # [B, T, V] -> the top k at the stored positions, flat
            values, ids = top_log_probs(preds.flatten(0, 1), token_index, store[TOPK_IDS].row_shape[0])
            _write(arrays[TOPK_VALUES], store[TOPK_VALUES], values, index, offsets)
            _write(arrays[TOPK_IDS], store[TOPK_IDS], ids, index, offsets)
        if "logits" in store:
            preds = stack_predictions(teacher.head, preds)
            if store["logits"].per_token:  # [B, T, 2] -> the real tokens, flat
                preds = preds.flatten(0, 1).index_select(0, token_index)
            _write(arrays["logits"], store["logits"], preds, index, offsets)
        if "states" in store:
            _write(arrays["states"], store["states"], torch.stack(list(states), dim=1), index, offsets)
        artifacts.crash_point("teacher_cache_batch")


def _write(array: np.ndarray, c: Component, values: torch.Tensor, index: list[int], offsets: np.ndarray) -> None:
    values = values.detach().to(DTYPES[c.dtype]).cpu()
    values = values.view(torch.uint16) if c.dtype == "bfloat16" else values
    values = values.numpy()
    if not c.per_token:
        array[np.asarray(index)] = values
        return
    cursor = 0
    for i in index:  # real tokens of the batch come row by row, each row's in position order
        n = int(offsets[i + 1] - offsets[i])
        array[offsets[i] : offsets[i + 1]] = values[cursor : cursor + n]
        cursor += n
