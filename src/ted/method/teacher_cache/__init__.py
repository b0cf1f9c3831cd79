"""Stage II without the teacher in the loop: the teacher's signal for every training example, computed once.

The teacher and its filters are frozen and in eval mode, so what the Stage II loss reads from them is a
deterministic function of (teacher weights, filters, the tokenized example, the compute precision). One
inference-mode pass over the training set (batches sorted by length) stores it per example:

* `logits`: classification / regression logits [N, C]; SQuAD start/end logits at each window's real tokens;
* `topk_logprobs` + `topk_ids`: a causal LM's k most likely next tokens and their log-probabilities at every
  scored position (a full [T, V] row per token would be far too large; `topk`);
* `states`: the selected layers at each example's distilled positions (real tokens; a causal LM's scored ones),
  through the teacher's filters (TED) or raw (LWD).

Token-level arrays are ragged: one flat array [all stored positions, ...] and `offsets` [N + 1]. Every array is
a `.npy` file read memory-mapped, so every process reads one copy in the page cache, and the gather per
batch runs in the DataLoader workers (`CachedSignalCollator`): shuffling, dynamic padding, length grouping
and several processes read the same rows unchanged. An entry lives in `ROOT/<component>-<key>/`, where the
key hashes the teacher's weights and config, its filters, the layers, the tokenized training rows by content
(so the tokenizer, max_seq_length, doc_stride, text columns, sample filters and the data files are all in it),
the compute precision and the stored dtype: any change reads another folder, never a stale one. Folders are
built under `.<name>.building` and renamed into place with their manifest written last.

A causal LM's KD term read from the top-k cache renormalises the teacher over its k tokens (see `topk`, which
also says which --kd_loss divergences it serves); its positions depend on the labels, so it is built through the
run's collator.

Modules: `identity` (content hashes), `plan` (components, keys, dtypes), `topk` (the causal-LM part),
`policy` (auto / off / DIR, budgets),
`store` (the on-disk format and its reader), `builder` (the teacher pass that fills it), `collate` (the
collator and teacher seam that read it in training), `wiring` (Stage II's entry: `prepare`, `remove_root`).
This package re-exports their public names, so `from ted.method import teacher_cache` reads as before.
"""

from __future__ import annotations

from ted.method.teacher_cache.builder import LOCK_FILE, build
from ted.method.teacher_cache.collate import (
    BATCH_KEYS,
    EXAMPLE_INDEX,
    LOGITS_KEY,
    STATES_KEY,
    TOPK_IDS_KEY,
    TOPK_VALUES_KEY,
    CachedSignalCollator,
    CachedTeacher,
    scatter_tokens,
    strip_batch_keys,
)
from ted.method.teacher_cache.identity import inputs_identity, module_identity, real_lengths
from ted.method.teacher_cache.plan import (
    DTYPE_CHOICES,
    DTYPES,
    FORMAT_VERSION,
    Component,
    compute_dtype,
    plan_components,
    resolve_dtype,
)
from ted.method.teacher_cache.policy import (
    AUTO_DISK_FRACTION,
    Decision,
    check_before_loading,
    decide,
    epochs_of,
    free_disk_bytes,
    kind_conflict,
    paper_compat_conflict,
    shared_root,
)
from ted.method.teacher_cache.store import MANIFEST, Store, is_complete, read_manifest
from ted.method.teacher_cache.topk import DEFAULT_TOPK, dense_teacher, divergence_conflict, top_log_probs
from ted.method.teacher_cache.wiring import ROOT_MARKER, Setup, default_root, prepare, remove_root

__all__ = [
    "AUTO_DISK_FRACTION",
    "BATCH_KEYS",
    "DEFAULT_TOPK",
    "DTYPES",
    "DTYPE_CHOICES",
    "EXAMPLE_INDEX",
    "FORMAT_VERSION",
    "LOCK_FILE",
    "LOGITS_KEY",
    "MANIFEST",
    "ROOT_MARKER",
    "STATES_KEY",
    "TOPK_IDS_KEY",
    "TOPK_VALUES_KEY",
    "CachedSignalCollator",
    "CachedTeacher",
    "Component",
    "Decision",
    "Setup",
    "Store",
    "build",
    "check_before_loading",
    "compute_dtype",
    "decide",
    "default_root",
    "dense_teacher",
    "divergence_conflict",
    "epochs_of",
    "free_disk_bytes",
    "kind_conflict",
    "inputs_identity",
    "is_complete",
    "module_identity",
    "paper_compat_conflict",
    "plan_components",
    "prepare",
    "read_manifest",
    "real_lengths",
    "remove_root",
    "resolve_dtype",
    "scatter_tokens",
    "shared_root",
    "strip_batch_keys",
    "top_log_probs",
]
