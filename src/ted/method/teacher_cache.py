"""Stage II without the teacher in the loop: the teacher's signal for every training example, computed once.

The teacher and its filters are frozen and in eval mode, so what the Stage II loss reads from them is a
deterministic function of (teacher weights, filters, the tokenized example, the compute precision). One
inference-mode pass over the training set (batches sorted by length) stores it per example:

* `logits`: classification / regression logits [N, C]; SQuAD start/end logits at each window's real tokens;
* `states`: the selected layers at each example's real tokens, through the teacher's filters (TED) or raw (LWD).

Token-level arrays are ragged: one flat array [all real tokens, ...] and `offsets` [N + 1]. Every array is
a `.npy` file read memory-mapped, so every process reads one copy in the page cache, and the gather per
batch runs in the DataLoader workers (`CachedSignalCollator`): shuffling, dynamic padding, length grouping
and several processes read the same rows unchanged. An entry lives in `ROOT/<component>-<key>/`, where the
key hashes the teacher's weights and config, its filters, the layers, the tokenized training rows by content
(so the tokenizer, max_seq_length, doc_stride, text columns, sample filters and the data files are all in it),
the compute precision and the stored dtype: any change reads another folder, never a stale one. Folders are
built under `.<name>.building` and renamed into place with their manifest written last.

Causal-LM teachers (future): a third component, `topk` (the top-k next-token log-probabilities per position
plus the tail mass, `--teacher_cache_topk K`), plugs in as another `Component`; ted has no causal-LM task
kind yet, so the option is refused for now (arguments.check_values).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from filelock import FileLock

from ted import artifacts
from ted.errors import TedInputError
from ted.method.kinds import get_kind

logger = logging.getLogger(__name__)

EXAMPLE_INDEX = "ted_example_index"
LOGITS_KEY, STATES_KEY = "ted_teacher_logits", "ted_teacher_states"
BATCH_KEYS = (EXAMPLE_INDEX, LOGITS_KEY, STATES_KEY)
MANIFEST = "manifest.json"
LOCK_FILE = ".ted_teacher_cache.lock"
FORMAT_VERSION = 1
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
DTYPE_CHOICES = ("auto", *DTYPES)
# `auto` stays below this fraction of the free disk when --teacher_cache_max_gb is not given.
AUTO_DISK_FRACTION = 0.5
_INPUT_COLUMNS = ("input_ids", "attention_mask", "token_type_ids")

# Set by the pipeline around a stage: where `auto` keeps its cache, shared by the stages of one run.
_SHARED_ROOT: ContextVar[Optional[str]] = ContextVar("ted_teacher_cache_root", default=None)


@contextmanager
def shared_root(path: str | Path):
    token = _SHARED_ROOT.set(str(path))
    try:
        yield
    finally:
        _SHARED_ROOT.reset(token)


# ------------------------------------------------------------------------------------------ identity


def _hash_tensor(h, name: str, tensor: torch.Tensor) -> None:
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


def _column_arrays(dataset, column: str) -> list[np.ndarray]:
    table = dataset.with_format("arrow")[:][column] if hasattr(dataset, "with_format") else None
    if table is None:
        return [np.asarray(dataset[column])]
    out = []
    for chunk in table.chunks:
        out += [np.asarray(chunk.offsets) - chunk.offsets[0].as_py(), np.asarray(chunk.flatten())]
    return out


def inputs_identity(dataset) -> str:
    """Content hash of the tokenized training rows the teacher reads, in order."""
    h = hashlib.sha256(str(len(dataset)).encode())
    for column in _INPUT_COLUMNS:
        if column in dataset.column_names:
            h.update(column.encode())
            for array in _column_arrays(dataset, column):
                h.update(np.ascontiguousarray(array, dtype=np.int64).tobytes())
    return h.hexdigest()[:24]


# ------------------------------------------------------------------------------------------ plan


@dataclass
class Component:
    """One stored part of the signal: `logits` or `states` (later: `topk`)."""

    name: str
    key: str
    per_token: bool  # ragged (real tokens) or one row per example
    row_shape: tuple[int, ...]
    dtype: str
    description: dict[str, Any] = field(default_factory=dict)

    @property
    def folder_name(self) -> str:
        return f"{self.name}-{self.key}"

    def nbytes(self, rows: int, tokens: int) -> int:
        itemsize = torch.empty(0, dtype=DTYPES[self.dtype]).element_size()
        count = tokens if self.per_token else rows
        return int(count * int(np.prod(self.row_shape)) * itemsize + (rows + 1) * 8)


def real_lengths(dataset) -> np.ndarray:
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


def plan_components(
    *,
    head: str,
    teacher,
    need_logits: bool,
    need_states: bool,
    dataset,
    compute_dtype: Optional[torch.dtype],
    store_dtype: str,
) -> list[Component]:
    """The components this run reads, each keyed by everything its values depend on."""
    base = {
        "format": FORMAT_VERSION,
        "teacher": module_identity(teacher.model),
        "inputs": inputs_identity(dataset),
        "compute": str(compute_dtype or "float32"),
        "head": head,
        "topk": None,  # the causal-LM hook (--teacher_cache_topk)
    }
    config = teacher.model.config
    out = []
    if need_logits:
        kind = get_kind(head)
        width = kind.num_labels([None] * int(getattr(config, "num_labels", 1)))  # span: start and end
        desc = {**base, "component": "logits", "dtype": "float32"}
        # A per-token head (span) stores logits per token, a sequence-level head one row per example.
        out.append(Component("logits", _key(desc), not kind.sequence_level, (width,), "float32", desc))
    if need_states:
        filters = teacher.filters
        width = filters.config.output_dim if filters is not None else config.hidden_size
        desc = {
            **base,
            "component": "states",
            "filters": module_identity(filters),
            "layers": list(teacher.layers),
            "dtype": store_dtype,
        }
        out.append(Component("states", _key(desc), True, (len(teacher.layers), int(width)), store_dtype, desc))
    return out


def _key(description: dict) -> str:
    return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:20]


def resolve_dtype(option: str, bf16: bool, fp16: bool) -> str:
    """`auto`: the run's own precision, so a float32 run's cache gives exactly the online teacher's losses."""
    if option != "auto":
        return option
    return "bfloat16" if bf16 else ("float16" if fp16 else "float32")


# ------------------------------------------------------------------------------------------ policy


@dataclass
class Decision:
    use: bool
    reason: str
    root: Optional[Path] = None
    nbytes: int = 0


def free_disk_bytes(path: Path) -> int:
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free


def epochs_of(training_args, batches_per_epoch: int) -> float:
    """Passes over the training set: --num_train_epochs, or what --max_steps amounts to."""
    if training_args.max_steps and training_args.max_steps > 0:
        return training_args.max_steps * training_args.gradient_accumulation_steps / max(batches_per_epoch, 1)
    return float(training_args.num_train_epochs)


def paper_compat_conflict(head: str, paper_compat: bool, need_states: bool, need_logits: bool) -> Optional[str]:
    """Why --paper_compat cannot read a cache: it reads the teacher at padding positions, which depend on the batch."""
    if not paper_compat:
        return None
    if need_states:
        return (
            "--paper_compat matches layers at padding positions too, and the teacher's states there depend on "
            "how each batch is padded, so they cannot be stored per example"
        )
    if need_logits and not get_kind(head).sequence_level:
        return "--paper_compat computes the SQuAD KL over padding positions, whose teacher logits depend on the batch"
    return None


def decide(
    *,
    option: str,
    components: list[Component],
    rows: int,
    tokens: int,
    epochs: float,
    max_gb: Optional[float],
    default_root: Path,
    conflict: Optional[str],
) -> Decision:
    """Whether this run reads a cache, where, and why; raises for an explicit DIR that cannot be used."""
    if option == "off":
        return Decision(False, "--teacher_cache off")
    if not components:
        return Decision(False, "the loss reads nothing from the teacher (kl_alpha and mse_alpha are 0)")
    explicit = option != "auto"
    root = Path(option) if explicit else Path(_SHARED_ROOT.get() or default_root)
    nbytes = sum(c.nbytes(rows, tokens) for c in components)
    size = f"{nbytes / 1e9:.3f} GB ({rows} examples, {tokens} real tokens)"
    if conflict:
        if explicit:
            raise TedInputError(f"--teacher_cache {option}: {conflict}. Use --teacher_cache off (or auto).")
        return Decision(False, conflict)
    missing = [c for c in components if not is_complete(root / c.folder_name, c)]
    needed = sum(c.nbytes(rows, tokens) for c in missing)
    free = free_disk_bytes(root)
    if explicit:
        if needed > free:
            raise TedInputError(
                f"--teacher_cache {option}: the cache needs {needed / 1e9:.3f} GB but only {free / 1e9:.3f} GB "
                "is free there. Free some disk, choose another folder, or pass --teacher_cache off."
            )
        if max_gb is not None and nbytes > max_gb * 1e9:
            raise TedInputError(
                f"--teacher_cache {option}: the cache takes {size}, over --teacher_cache_max_gb {max_gb}. "
                "Raise the budget, store states in 16 bits (--teacher_cache_dtype float16) or use off."
            )
        return Decision(True, f"--teacher_cache {option}: {size}", root, nbytes)
    if epochs <= 1 and missing:
        return Decision(False, f"a single epoch ({epochs:g}) reads each example once: caching saves nothing")
    budget = max_gb * 1e9 if max_gb is not None else AUTO_DISK_FRACTION * free
    if needed > budget:
        limit = f"--teacher_cache_max_gb {max_gb}" if max_gb is not None else f"half of the free disk at {root}"
        return Decision(False, f"the cache would take {size}, over {limit}")
    return Decision(True, f"auto: {epochs:g} epochs, {size}", root, nbytes)


# ------------------------------------------------------------------------------------------ files


def read_manifest(folder: Path) -> Optional[dict]:
    try:
        return json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def is_complete(folder: Path, component: Component) -> bool:
    manifest = read_manifest(folder)
    if not manifest or manifest.get("key") != component.key:
        return False
    files = manifest.get("files", {})
    try:
        return bool(files) and all((folder / name).stat().st_size == size for name, size in files.items())
    except OSError:
        return False


def _np_dtype(dtype: str):
    return np.uint16 if dtype == "bfloat16" else np.dtype(dtype)  # numpy has no bfloat16: its bits as uint16


def _dist() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _from_main_process(value):
    """Process 0's `value` in every process (torchrun); itself with one process."""
    if _dist()[1] == 1:
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def _barrier() -> None:
    if _dist()[1] > 1:
        torch.distributed.barrier()


def build(
    root: Path,
    components: list[Component],
    teacher,
    dataset,
    tokenizer,
    device: torch.device,
    batch_size: int = 64,
) -> dict[str, Any]:
    """Compute and store the missing components (each process a share of the batches); returns what was done.

    Process 0 holds a lock on ROOT while building: another run building into the same folder waits, then finds
    the entries complete (a killed build holds no lock, so its `.building` folder is safely started again)."""
    rank, _ = _dist()
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / LOCK_FILE)) if rank == 0 else contextlib.nullcontext():
        complete = {c.name for c in components if is_complete(root / c.folder_name, c)}
        missing = [c for c in components if c.name not in _from_main_process(complete)]
        report = {"built": [c.name for c in missing], "build_seconds": 0.0}
        if missing:
            start = time.perf_counter()
            _build_missing(root, missing, teacher, dataset, tokenizer, device, batch_size)
            report["build_seconds"] = round(time.perf_counter() - start, 3)
    return report


def _build_missing(root, missing, teacher, dataset, tokenizer, device, batch_size) -> None:
    rank, world = _dist()
    lengths = real_lengths(dataset)
    offsets = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    tmps = {c.name: root / f".{c.folder_name}.building" for c in missing}
    if rank == 0:
        for c in missing:
            _start_folder(tmps[c.name], c, len(lengths), int(offsets[-1]), offsets)
    _barrier()
    arrays = {c.name: np.load(tmps[c.name] / "values.npy", mmap_mode="r+") for c in missing}
    _fill(arrays, missing, teacher, dataset, tokenizer, device, batch_size, offsets, rank, world)
    for array in arrays.values():
        array.flush()
    del arrays
    _barrier()
    if rank == 0:
        for c in missing:
            _finish_folder(tmps[c.name], root / c.folder_name, c, len(lengths))
    _barrier()


def _start_folder(tmp: Path, c: Component, rows: int, tokens: int, offsets: np.ndarray) -> None:
    if tmp.exists():  # a build cut off by a kill: start it again
        logger.warning("Removing %s: a teacher cache build that was cut off.", tmp)
        artifacts.remove_marked_tree(tmp, artifacts.WRITING_MARKER)
    tmp.mkdir(parents=True)
    (tmp / artifacts.WRITING_MARKER).touch()
    shape = ((tokens if c.per_token else rows), *c.row_shape)
    np.lib.format.open_memmap(tmp / "values.npy", mode="w+", dtype=_np_dtype(c.dtype), shape=shape).flush()
    np.save(tmp / "offsets.npy", offsets)


def _finish_folder(tmp: Path, final: Path, c: Component, rows: int) -> None:
    (tmp / artifacts.WRITING_MARKER).unlink()
    files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.is_file()}
    manifest = {"key": c.key, "component": c.name, "rows": rows, "dtype": c.dtype, "files": files}
    manifest.update({"description": c.description, "versions": artifacts.versions()})
    artifacts.crash_point("teacher_cache_manifest")
    artifacts.atomic_write(tmp / MANIFEST, json.dumps(manifest, indent=1) + "\n")
    if final.exists():  # an entry with the same name but not complete (files lost): replace it
        artifacts.remove_marked_tree(final, MANIFEST)
    os.replace(tmp, final)


def _fill(arrays, components, teacher, dataset, tokenizer, device, batch_size, offsets, rank, world) -> None:
    """One inference-mode pass, batches sorted by length; process `rank` computes every `world`-th batch."""
    from ted.method.objectives import stack_predictions

    columns = [k for k in _INPUT_COLUMNS if k in dataset.column_names]
    sizes = [len(ids) for ids in dataset["input_ids"]]
    order = sorted(range(len(sizes)), key=sizes.__getitem__)
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    need_states = any(c.name == "states" for c in components)
    store = {c.name: c for c in components}
    teacher.to(device)
    for b, index in enumerate(batches):
        if b % world != rank:
            continue
        rows = dataset[index]
        batch = tokenizer.pad({k: rows[k] for k in columns}, return_tensors="pt")
        batch = {k: v.to(device) for k, v in batch.items()}
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


def _write(array, c: Component, values: torch.Tensor, index: list[int], offsets: np.ndarray) -> None:
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


# ------------------------------------------------------------------------------------------ reading


class Store:
    """Read-only, memory-mapped view of one component. Picklable (DataLoader workers open their own maps)."""

    def __init__(self, folder: Path, component: Component):
        self.folder, self.component = Path(folder), component
        self._values = self._offsets = None

    def __getstate__(self):
        return {"folder": self.folder, "component": self.component, "_values": None, "_offsets": None}

    def _open(self):
        if self._values is None:
            self._values = np.load(self.folder / "values.npy", mmap_mode="r")
            self._offsets = np.load(self.folder / "offsets.npy")

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(array))
        return t.view(torch.bfloat16) if self.component.dtype == "bfloat16" else t

    def rows(self, index: list[int]) -> torch.Tensor:
        self._open()
        return self._tensor(self._values[np.asarray(index)])

    def tokens(self, index: list[int]) -> torch.Tensor:
        """The real tokens of the rows, concatenated in order: [sum of lengths, *row_shape]."""
        self._open()
        spans = [np.arange(self._offsets[i], self._offsets[i + 1]) for i in index]
        flat = np.concatenate(spans) if spans else np.zeros(0, np.int64)
        return self._tensor(self._values[flat])


def scatter_tokens(flat: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Real-token rows [n, ...] back into the padded batch [B, T, ...] (zeros at padding)."""
    positions = mask.flatten().nonzero().squeeze(1).to(flat.device)
    out = flat.new_zeros((mask.numel(), *flat.shape[1:]))
    out.index_copy_(0, positions, flat)
    return out.view(*mask.shape, *flat.shape[1:])


class CachedSignalCollator:
    """The run's collator, plus the cached teacher signal of each row (looked up by its example index).

    Training rows carry EXAMPLE_INDEX; evaluation rows do not and pass through unchanged. States are
    emitted flat at the real tokens (`flat_states`: the CPU path of `DistillObjective`) or padded like
    the batch (accelerators, where the objective masks instead of gathering)."""

    def __init__(self, collator, stores: dict[str, Store], flat_states: bool):
        self.collator, self.stores, self.flat_states = collator, stores, flat_states

    def __call__(self, features: list[dict]) -> dict:
        if not features or EXAMPLE_INDEX not in features[0]:
            return self.collator(features)
        index = [int(f[EXAMPLE_INDEX]) for f in features]
        batch = self.collator([{k: v for k, v in f.items() if k != EXAMPLE_INDEX} for f in features])
        mask = batch.get("attention_mask")
        if mask is None:
            mask = torch.ones_like(batch["input_ids"])
        batch[EXAMPLE_INDEX] = torch.tensor(index)
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

    def __init__(self, head: str, layers: list[int]):
        self.head, self.kind, self.layers = head, get_kind(head), layers
        self.model = torch.nn.Module().eval()  # nothing on the device: no parameters
        self.filters = None
        self.autocast_dtype = None

    def to(self, device):
        return self

    def __call__(self, inputs: dict, with_states: bool, token_index: Optional[torch.Tensor] = None):
        if EXAMPLE_INDEX not in inputs:
            raise RuntimeError("a training batch without its cached teacher signal (no example index column)")
        preds = inputs.get(LOGITS_KEY)
        if preds is not None:
            preds = self.kind.unstack(preds)  # the stored, stacked logits -> what the objective compares
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


# ------------------------------------------------------------------------------------------ Stage II wiring

ROOT_MARKER = "ted_teacher_cache"  # marks a cache root ted made (only those are ever removed)


@dataclass
class Setup:
    """What Stage II runs with: the teacher seam, the collator, the training rows, and what to record."""

    teacher: Any
    collator: Any
    train: Any
    record: dict[str, Any]
    cleanup: Optional[Path] = None  # a per-run cache root, removed once the stage folder is written


def default_root(output_dir: Path) -> Path:
    return output_dir.parent / f".{output_dir.name}.teacher_cache"


def check_before_loading(option: str, head: str, paper_compat: bool, kl_alpha: float, mse_alpha: float) -> None:
    """An explicit DIR that --paper_compat cannot use is refused before any model loads."""
    conflict = paper_compat_conflict(head, paper_compat, mse_alpha > 0, kl_alpha > 0)
    if option not in ("auto", "off") and conflict:
        raise TedInputError(f"--teacher_cache {option}: {conflict}. Use --teacher_cache off (or auto).")


def prepare(*, distill_args, training_args, teacher, head: str, train, tokenizer, collator, output_dir: Path):
    """Decide, build if needed, and wire the cache; falls back to the online teacher with a logged reason."""
    option = distill_args.teacher_cache
    weights_on = (distill_args.kl_alpha > 0, distill_args.mse_alpha > 0)
    need_logits, need_states = weights_on
    online = Setup(teacher, collator, train, {"used": False})
    if option == "off":
        online.record["reason"] = "--teacher_cache off"
        return online
    device = training_args.device  # also sets up torch.distributed under torchrun
    teacher.to(device)
    teacher.autocast_dtype = compute_dtype(training_args)
    store_dtype = resolve_dtype(distill_args.teacher_cache_dtype, training_args.bf16, training_args.fp16)
    components = plan_components(
        head=head,
        teacher=teacher,
        need_logits=need_logits,
        need_states=need_states,
        dataset=train,
        compute_dtype=teacher.autocast_dtype,
        store_dtype=store_dtype,
    )
    lengths = real_lengths(train)
    world = max(training_args.world_size, 1)
    batches = -(-len(train) // (training_args.per_device_train_batch_size * world))  # per process and epoch
    decision = decide(
        option=option,
        components=components,
        rows=len(train),
        tokens=int(lengths.sum()),
        epochs=epochs_of(training_args, batches),
        max_gb=distill_args.teacher_cache_max_gb,
        default_root=default_root(output_dir),
        conflict=paper_compat_conflict(head, distill_args.paper_compat, need_states, need_logits),
    )
    decision = _from_main_process(decision)  # free disk is measured per process: all must take the same path
    if not decision.use:
        logger.info("Stage II runs the teacher online: %s.", decision.reason)
        online.record["reason"] = decision.reason
        return online
    logger.info("Stage II teacher cache: %s, in %s.", decision.reason, decision.root)
    root = decision.root
    made_root = not root.exists()
    if training_args.process_index == 0:
        root.mkdir(parents=True, exist_ok=True)
        if made_root:
            (root / ROOT_MARKER).touch()
    _barrier()
    report = build(root, components, teacher, train, tokenizer, device, training_args.per_device_eval_batch_size)
    stores = {c.name: Store(root / c.folder_name, c) for c in components}
    record = {
        "used": True,
        "reason": decision.reason,
        "root": str(root),
        "entries": {c.name: c.folder_name for c in components},
        "dtype": {c.name: c.dtype for c in components},
        "bytes": decision.nbytes,
        "bytes_per_example": round(decision.nbytes / max(len(train), 1), 1),
        **report,
    }
    per_run = option == "auto" and _SHARED_ROOT.get() is None and (root / ROOT_MARKER).is_file()
    flat = device.type == "cpu"  # DistillObjective gathers real tokens on CPU and masks on accelerators
    return Setup(
        CachedTeacher(head, list(teacher.layers)),
        CachedSignalCollator(collator, stores, flat_states=flat),
        train.add_column(EXAMPLE_INDEX, list(range(len(train)))),
        record,
        root if per_run else None,
    )


def compute_dtype(training_args) -> Optional[torch.dtype]:
    """The teacher's autocast in Stage II (TedTrainer's rule), which the cached values are computed under."""
    if training_args.bf16:
        return torch.bfloat16
    if training_args.fp16 and training_args.device.type == "cuda":
        return torch.float16
    return None


def remove_root(root: Optional[Path]) -> None:
    """Drop a per-run cache once its stage folder is written (never a folder ted did not make)."""
    if root is not None and (root / ROOT_MARKER).is_file():
        artifacts.remove_marked_tree(root, ROOT_MARKER)
