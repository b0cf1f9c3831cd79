"""Whether a Stage II run reads a teacher cache (auto / off / DIR), where, and within which disk budget."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from ted.errors import TedInputError
from ted.method.kinds import get_kind
from ted.method.teacher_cache.plan import Component
from ted.method.teacher_cache.store import is_complete
from ted.method.teacher_cache.topk import check_topk_option, divergence_conflict

if TYPE_CHECKING:
    from transformers import TrainingArguments

# `auto` stays below this fraction of the free disk when --teacher_cache_max_gb is not given.
AUTO_DISK_FRACTION = 0.5

# Set by the pipeline around a stage: where `auto` keeps its cache, shared by the stages of one run.
_SHARED_ROOT: ContextVar[Optional[str]] = ContextVar("ted_teacher_cache_root", default=None)


@contextmanager
def shared_root(path: str | Path) -> Iterator[None]:
    token = _SHARED_ROOT.set(str(path))
    try:
        yield
    finally:
        _SHARED_ROOT.reset(token)


def pipeline_root() -> Optional[str]:
    """The cache root the pipeline shares between its stages, or None outside a pipeline."""
    return _SHARED_ROOT.get()


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


def epochs_of(training_args: TrainingArguments, batches_per_epoch: int) -> float:
    """Passes over the training set: --num_train_epochs, or what --max_steps amounts to."""
    if training_args.max_steps and training_args.max_steps > 0:
        return training_args.max_steps * training_args.gradient_accumulation_steps / max(batches_per_epoch, 1)
    return float(training_args.num_train_epochs)


def kind_conflict(
    head: str, kd_loss: Optional[str] = None, kl_alpha: float = 0.0, temperature: float = 1.0
) -> Optional[str]:
    """Why the cache cannot store the teacher signal of this head kind, or None: the kind's own refusal, or what a
    causal LM's top-k cache cannot serve: a --kd_loss that needs the teacher's other tokens (they get probability
    0), or a temperature other than 1."""
    kind = get_kind(head)
    if kind.teacher_cache_refusal:
        return kind.teacher_cache_refusal
    if kind.teacher_cache_logits == "topk" and kl_alpha > 0:
        if temperature != 1:
            # Softening flattens the teacher: its top k hold far less of the mass than at T=1, and renormalising
            # over them distorts the term (shared SmolLM2, k=64: 82% of the mass at T=1, 21% at T=2, term 3.5x).
            return (
                f"the top-k cache keeps the teacher's k most likely tokens, which at --temperature {temperature:g} "
                "hold too little of its softened distribution for the KD term to be right (docs/teacher-cache.md); "
                "use --temperature 1 to cache a causal-LM teacher"
            )
        return divergence_conflict(kd_loss)
    return None


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


def check_before_loading(
    option: str,
    head: str,
    paper_compat: bool,
    kl_alpha: float,
    mse_alpha: float,
    kd_loss: Optional[str] = None,
    topk: Optional[int] = None,
    temperature: float = 1.0,
) -> None:
    """An explicit DIR that --paper_compat, the task's kind or its --kd_loss cannot use is refused before any model
    loads, and so is --teacher_cache_topk for a teacher whose output is not a vocabulary."""
    check_topk_option(topk, get_kind(head))
    conflict = kind_conflict(head, kd_loss, kl_alpha, temperature)
    conflict = conflict or paper_compat_conflict(head, paper_compat, mse_alpha > 0, kl_alpha > 0)
    if option not in ("auto", "off") and conflict:
        raise TedInputError(f"--teacher_cache {option}: {conflict}. Use --teacher_cache off (or auto).")


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
    root = Path(option) if explicit else Path(pipeline_root() or default_root)
    nbytes = sum(c.nbytes(rows, tokens) for c in components)
    size = f"{nbytes / 1e9:.3f} GB ({rows} examples, {tokens} stored token positions)"
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
