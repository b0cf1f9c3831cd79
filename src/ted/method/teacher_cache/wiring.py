"""Stage II's entry to the cache: decide, build if needed, and hand back the teacher seam, collator and rows."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from ted import artifacts
from ted.method.kinds import get_kind
from ted.method.teacher_cache.builder import barrier, build, from_main_process, stored_lengths
from ted.method.teacher_cache.collate import EXAMPLE_INDEX, CachedSignalCollator, CachedTeacher
from ted.method.teacher_cache.plan import compute_dtype, plan_components, resolve_dtype
from ted.method.teacher_cache.policy import (
    check_before_loading,
    decide,
    epochs_of,
    kind_conflict,
    paper_compat_conflict,
    pipeline_root,
)
from ted.method.teacher_cache.store import Store
from ted.method.teacher_cache.topk import TOPK_VALUES, mean_mass

if TYPE_CHECKING:
    import datasets
    from transformers import PreTrainedTokenizerBase, TrainingArguments

    from ted.method.modules import Teacher
    from ted.method.teacher_cache.collate import Collator
    from ted.settings.options import DistillArguments

logger = logging.getLogger(__name__)

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


def prepare(
    *,
    distill_args: DistillArguments,
    training_args: TrainingArguments,
    teacher: Teacher,
    head: str,
    train: datasets.Dataset,
    tokenizer: PreTrainedTokenizerBase,
    collator: Collator,
    output_dir: Path,
    kd_loss: Optional[str] = None,
) -> Setup:
    """Decide, build if needed, and wire the cache; falls back to the online teacher with a logged reason.
    `kd_loss`: the run's divergence spec (--kd_loss or the method's), which a causal LM's top-k cache must serve."""
    option = distill_args.teacher_cache
    need_logits, need_states = distill_args.kl_alpha > 0, distill_args.mse_alpha > 0
    kd_loss = kd_loss or distill_args.kd_loss
    online = Setup(teacher, collator, train, {"used": False})
    if option == "off":
        online.record["reason"] = "--teacher_cache off"
        return online
    refusal = kind_conflict(head, kd_loss, distill_args.kl_alpha, distill_args.temperature)
    if refusal:  # auto: the online teacher (an explicit DIR was refused before any model loaded)
        check_before_loading(
            option, head, distill_args.paper_compat, distill_args.kl_alpha, distill_args.mse_alpha, kd_loss,
            temperature=distill_args.temperature,
        )  # fmt: skip
        logger.info("Stage II runs the teacher online: %s.", refusal)
        online.record["reason"] = refusal
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
        topk=distill_args.teacher_cache_topk,
    )
    # A kind whose labels decide the stored positions (a causal LM's scored tokens) is built through the run's
    # collator, padded as in training; the others from the model inputs alone.
    run_collator = collator if get_kind(head).token_labels else None
    lengths = stored_lengths(train, teacher, run_collator)
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
    decision = from_main_process(decision)  # free disk is measured per process: all must take the same path
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
    barrier()
    batch_size = training_args.per_device_eval_batch_size
    report = build(root, components, teacher, train, tokenizer, device, batch_size, collator=run_collator)
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
    vocab = None
    if TOPK_VALUES in stores:  # how much of the teacher's distribution the kept k tokens hold
        topk = stores[TOPK_VALUES]
        vocab = topk.component.description["vocab"]
        record.update(topk=topk.component.row_shape[0], topk_mass=mean_mass(topk.values(), topk.component.dtype))
    per_run = option == "auto" and pipeline_root() is None and (root / ROOT_MARKER).is_file()
    flat = device.type == "cpu"  # DistillObjective gathers real tokens on CPU and masks on accelerators
    return Setup(
        CachedTeacher(head, list(teacher.layers), vocab_size=vocab),
        CachedSignalCollator(collator, stores, flat_states=flat, head=head),
        train.add_column(EXAMPLE_INDEX, list(range(len(train)))),
        record,
        root if per_run else None,
    )


def remove_root(root: Optional[Path]) -> None:
    """Drop a per-run cache once its stage folder is written (never a folder ted did not make)."""
    if root is not None and (root / ROOT_MARKER).is_file():
        artifacts.remove_marked_tree(root, ROOT_MARKER)
