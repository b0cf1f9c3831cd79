"""Inference latency and throughput of a model folder, timed with `torch.utils.benchmark.Timer`.

Random token ids (fixed generator) of one batch size and sequence length, no padding, the model in
eval mode under `torch.inference_mode()`; a few warm-up calls, then the median of timed calls.
Used by `ted report` and by the model card `ted export` writes, so both state the same numbers.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from transformers import PreTrainedModel


@dataclass
class Speed:
    device: str
    batch_size: int
    seq_len: int
    latency_ms: float  # median time of one forward pass of the whole batch
    throughput: float  # sequences per second
    iterations: int
    threads: int

    def as_dict(self) -> dict:
        return asdict(self)


# The columns of a speed row, shared by `ted report`'s table and the model card.
SPEED_HEADER = (
    "model",
    "parameters",
    "device",
    "batch × seq len",
    "latency (ms / batch)",
    "throughput (seq / s)",
)


def speed_cells(row: dict, parameters: int) -> list[str]:
    """One row of `compare` as table cells under SPEED_HEADER."""
    device = f"CPU ({row['threads']} threads)" if row["device"] == "cpu" else row["device"]
    return [
        row["role"],
        f"{parameters:,}",
        device,
        f"{row['batch_size']} × {row['seq_len']}",
        f"{row['latency_ms']:.1f}",
        f"{row['throughput']:.1f}",
    ]


def devices() -> list[str]:
    """CPU, plus the first GPU when there is one."""
    import torch

    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def load_for_inference(folder: str | Path) -> PreTrainedModel:
    """The model of a folder with its task head when it has one (config `architectures`); a folder holding one
    GGUF file is a causal LM (dequantised to float32)."""
    from transformers import AutoConfig, AutoModel

    from ted.method.kinds import kind_of_model
    from ted.stages.gguf_files import resolve_gguf_file

    if Path(folder).is_dir() and resolve_gguf_file(Path(folder)):
        from ted.stages.models import load_causal_lm

        return load_causal_lm(str(folder))
    config = AutoConfig.from_pretrained(folder)
    kind = kind_of_model(config.architectures, config.num_labels)
    has_head = any(arch.endswith(kind.architecture_suffix) for arch in config.architectures or [])
    cls = kind.auto_class() if has_head else AutoModel
    return cls.from_pretrained(folder).eval()


def _batch(model: PreTrainedModel, batch_size: int, seq_len: int, device: str) -> dict:
    import torch

    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (batch_size, seq_len), generator=gen)
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device)}


def measure_many(
    folders: dict[str, str | Path],
    batch_size: int = 8,
    seq_len: int = 128,
    device: str = "cpu",
    iterations: int = 10,
    warmup: int = 2,
) -> dict[str, Speed]:
    """Several models timed in interleaved rounds, so a busy shared machine slows them alike."""
    import torch
    from torch.utils.benchmark import Timer

    models = {name: load_for_inference(folder).to(device) for name, folder in folders.items()}
    for model in models.values():
        seq_len = min(seq_len, getattr(model.config, "max_position_embeddings", None) or seq_len)
    # torch's Timer synchronises CUDA around each call; one call per model per round keeps the rounds
    # interleaved (torch's own autorange would time each model in one block).
    timers = {
        name: Timer("model(**batch)", globals={"model": model, "batch": _batch(model, batch_size, seq_len, device)})
        for name, model in models.items()
    }
    times: dict[str, list[float]] = {name: [] for name in models}
    with torch.inference_mode():
        for i in range(warmup + iterations):
            for name, timer in timers.items():
                seconds = timer.timeit(1).mean
                if i >= warmup:
                    times[name].append(seconds)
    label = "cpu" if device == "cpu" else torch.cuda.get_device_name(0)
    out = {}
    for name, values in times.items():
        latency = statistics.median(values)
        out[name] = Speed(
            device=label,
            batch_size=batch_size,
            seq_len=seq_len,
            latency_ms=1000 * latency,
            throughput=batch_size / latency,
            iterations=iterations,
            threads=torch.get_num_threads(),
        )
    return out


def compare(
    student: str | Path, teacher: Optional[str | Path], batch_size: int = 8, seq_len: int = 128, iterations: int = 10
) -> list[dict]:
    """Teacher and student on every available device (rows for a table: role, device, latency, ...)."""
    folders = {"teacher": teacher, "student": student} if teacher is not None else {"student": student}
    rows = []
    for device in devices():
        for role, speed in measure_many(folders, batch_size, seq_len, device, iterations).items():
            rows.append({"role": role, **speed.as_dict()})
    return rows
