"""Building the missing entries: one inference-mode pass of the teacher, each process writing a share of the rows."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import torch
from filelock import FileLock

from ted import artifacts
from ted.method.frozen_pass import padded_batches, process_share
from ted.method.teacher_cache.identity import real_lengths
from ted.method.teacher_cache.plan import DTYPES, Component
from ted.method.teacher_cache.store import finish_folder, is_complete, start_folder

if TYPE_CHECKING:
    import datasets
    from transformers import PreTrainedTokenizerBase

    from ted.method.modules import Teacher

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
) -> dict[str, Any]:
    """Compute and store the missing components (each process a share of the batches); returns what was done.

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
            _build_missing(root, missing, teacher, dataset, tokenizer, device, batch_size)
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
) -> None:
    rank, world = process_share()
    lengths = real_lengths(dataset)
    offsets = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    tmps = {c.name: root / f".{c.folder_name}.building" for c in missing}
    if rank == 0:
        for c in missing:
            start_folder(tmps[c.name], c, len(lengths), int(offsets[-1]), offsets)
    barrier()
    arrays = {c.name: np.load(tmps[c.name] / "values.npy", mmap_mode="r+") for c in missing}
    _fill(arrays, missing, teacher, dataset, tokenizer, device, batch_size, offsets, rank, world)
    for array in arrays.values():
        array.flush()
    del arrays
    barrier()
    if rank == 0:
        for c in missing:
            finish_folder(tmps[c.name], root / c.folder_name, c, len(lengths))
    barrier()


def _fill(
    arrays: dict[str, np.ndarray],
    components: list[Component],
    teacher: Teacher,
    dataset: datasets.Dataset,
    tokenizer: PreTrainedTokenizerBase,
    device: torch.device,
    batch_size: int,
    offsets: np.ndarray,
    rank: int,
    world: int,
) -> None:
    """One inference-mode pass, batches sorted by length; process `rank` computes every `world`-th batch."""
    from ted.method.objectives import stack_predictions  # objectives imports the cache's batch keys

    need_states = any(c.name == "states" for c in components)
    store = {c.name: c for c in components}
    teacher.to(device)
    for index, batch in padded_batches(dataset, tokenizer, device, batch_size, rank, world):
        mask = batch.get("attention_mask", torch.ones_like(batch["input_ids"]))
        token_index = mask.flatten().nonzero().squeeze(1)
        preds, states = teacher(batch, with_states=need_states, token_index=token_index)
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
