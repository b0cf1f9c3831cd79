"""What every `benchmarks/run.py` measurement shares: peak memory per configuration, timing, the Trainer step.

Imported by run.py and its parts (bench_encoder*.py, bench_causal_lm.py), which put this folder on sys.path.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TED_SHARED_DIR", REPO.parent / "shared"))


class Meter:
    """Peak memory of a configuration: VmHWM (reset per configuration) on CPU, max_memory_allocated on CUDA."""

    def __init__(self, device):
        import torch

        self.torch = torch
        self.cuda = device.type == "cuda"
        self.can_reset = not self.cuda and reset_rss_peak()
        cpu_kind = "rss_peak" if self.can_reset else "rss_peak_since_start"
        self.kind = "cuda_max_memory_allocated" if self.cuda else cpu_kind
        self.peaks: dict[str, float] = {}

    @contextlib.contextmanager
    def track(self, name: str):
        if self.cuda:
            self.torch.cuda.synchronize()
            self.torch.cuda.reset_peak_memory_stats()
        elif self.can_reset:
            reset_rss_peak()
        try:
            yield
        finally:
            if self.cuda:
                self.torch.cuda.synchronize()
                peak = self.torch.cuda.max_memory_allocated() / 2**20
            else:
                peak = rss_peak_kb() / 1024
            self.peaks[name] = round(max(self.peaks.get(name, 0.0), peak), 1)


def reset_rss_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def rss_peak_kb() -> float:
    try:
        return float(re.search(r"VmHWM:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))
    except (OSError, AttributeError):
        import resource

        return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


# ---------------------------------------------------------------------------------------------- set-up


def training_args(output_dir: str, device, bf16: bool, **overrides):
    from ted.settings.training_args import TedTrainingArguments

    values = dict(
        output_dir=output_dir,
        report_to=["none"],
        eval_strategy="no",
        save_strategy="no",
        logging_steps=10**6,
        disable_tqdm=True,
        dataloader_pin_memory=device.type == "cuda",
        use_cpu=device.type == "cpu",
        bf16=bf16,
        seed=0,
        remove_unused_columns=False,
        learning_rate=5e-5,
        max_steps=10**6,
    )
    values.update(overrides)
    return TedTrainingArguments(**values)


def make_trainer(module, objective, args, teacher=None, **kwargs):
    from ted.method.trainer import TedTrainer

    trainer = TedTrainer(model=module, args=args, objective=objective, teacher=teacher, **kwargs)
    trainer.create_optimizer_and_scheduler(num_training_steps=10**6)
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer.train() otherwise
    return trainer


def train_step(trainer, batch) -> None:
    """What Trainer.train() does for one batch: forward + backward, clip, optimizer + scheduler step, zero_grad."""
    model = trainer.model
    trainer.training_step(model, batch)
    trainer.accelerator.clip_grad_norm_(model.parameters(), trainer.args.max_grad_norm)
    trainer.optimizer.step()
    trainer.lr_scheduler.step()
    model.zero_grad()


def interleaved_rounds(
    steps: dict, warmup: int, reps: int, device, meter: Meter, cpu_times: dict | None = None
) -> dict[str, list[float]]:
    """Seconds of each step over `reps` rounds after `warmup` ones; every round runs every step once, the first
    one rotating, so load changes on a shared machine hit all configurations alike. Each step's peak memory
    goes to `meter` under its name. `cpu_times`, when given, gets each step's CPU seconds (all threads of this
    process): less disturbed than wall time by other jobs on the machine, though spinning threads count too."""
    names = list(steps)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(warmup + reps):
        order = names[round_ % len(names) :] + names[: round_ % len(names)]
        for name in order:
            cpu_start = time.process_time()
            with meter.track(name):
                elapsed = timed(steps[name], device)
            if round_ >= warmup:
                times[name].append(elapsed)
                if cpu_times is not None:
                    cpu_times.setdefault(name, []).append(time.process_time() - cpu_start)
    return times


def environment(device, started: float, load_before: list[float]) -> dict:
    """The machine and versions a result was measured with, and the load average before and after."""
    import torch
    import transformers

    return {
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)",
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
