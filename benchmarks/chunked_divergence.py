"""Peak memory and time of one forward+backward of the token divergence term, dense against chunked.

    python benchmarks/chunked_divergence.py                          # B=4, T=512, V=49,152 (SmolLM2), forward_kl
    python benchmarks/chunked_divergence.py --vocab 151936 --length 256 --divergence jsd:0.5 --json out.json
    python benchmarks/chunked_divergence.py --logits FILE.pt    # real logits (benchmarks/run.py --kind causal_lm)

Each configuration runs in a fresh process: its student logits (a leaf, as a model's output would be, so the
gradient w.r.t. them is part of both) and teacher logits are made first (random, or read from `--logits`: a
`torch.save`d dict of `student` and `teacher` [B, T, V] logits and a [B, T] `mask` of the scored positions), then
the term's forward+backward runs once. Extra peak memory = the process's peak minus what it held after making
the inputs: on CPU peak RSS minus RSS (psutil), the peak reset after the inputs are made where Linux allows it
(/proc/self/clear_refs; else `ru_maxrss`, the process's lifetime peak); on CUDA `max_memory_allocated` minus
`memory_allocated`. Time: a third process alternates dense and chunked for `--rounds` rounds (so load changes
hit both alike), medians. The last line of stdout is one JSON object with both configurations and the ratios.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench_measure import reset_rss_peak, rss_peak_kb

REPO = Path(__file__).resolve().parents[1]
MB = 1 << 20


def measure(args: argparse.Namespace) -> dict:
    """In this (fresh) process: make the inputs, then either one run of one configuration and its extra peak
    memory (`--worker dense|chunked`), or interleaved rounds of both and their times (`--worker time`)."""
    import psutil
    import torch

    from ted.method.chunked import chunked, default_chunk_tokens
    from ted.method.divergences import DIVERGENCES

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    student, teacher, mask = make_inputs(args, device, getattr(torch, args.dtype))
    shape = tuple(student.shape)
    divergence = DIVERGENCES.resolve(args.divergence)
    chunk_tokens = args.chunk_tokens or default_chunk_tokens(shape[-1])
    terms = {
        "dense": lambda s, t, m: divergence(s, t, args.temperature, m),
        "chunked": lambda s, t, m: chunked(divergence, s, t, args.temperature, m, chunk_tokens),
    }
    names = ["dense", "chunked"] if args.worker == "time" else [args.worker]

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def run(name: str) -> tuple[float, float]:
        """One forward+backward of the term: (seconds, value)."""
        student.grad = None
        start = time.perf_counter()
        value = terms[name](student, teacher, mask)
        value.backward()
        sync()
        return time.perf_counter() - start, value.item()

    # Warm-up on a few tokens: lazy initialisation stays out of the timings and the memory baseline.
    for name in names:
        small = student[:1, :4].detach().clone().requires_grad_(True)
        terms[name](small, teacher[:1, :4], mask[:1, :4]).backward()
    del small
    sync()
    result = {"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads()}
    result.update(shape=list(shape), scored_positions=int(mask.ne(0).sum()))
    if args.worker != "dense":
        result["chunk_tokens"] = chunk_tokens
    if args.worker == "time":
        times: dict[str, list[float]] = {name: [] for name in names}
        for _ in range(args.rounds):
            for name in names:
                times[name].append(run(name)[0])
        for name in names:
            result[f"{name}_seconds"] = [round(t, 3) for t in times[name]]
            result[f"{name}_median_seconds"] = round(statistics.median(times[name]), 3)
        return result

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        reset = reset_rss_peak()  # reading --logits may have peaked above what the inputs hold now
        before = psutil.Process().memory_info().rss
    seconds, value = run(args.worker)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = rss_peak_kb() * 1024 if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    gradient = student.numel() * student.element_size()
    return {
        **result,
        "inputs_mb": round(2 * gradient / MB, 1),
        "extra_peak_mb": round((peak - before) / MB, 1),
        # The gradient w.r.t. the student logits is part of the extra peak of both; the rest is the term's own.
        "beyond_gradient_mb": round((peak - before - gradient) / MB, 1),
        "seconds": round(seconds, 3),
        "value": value,
    }


def make_inputs(args: argparse.Namespace, device, dtype) -> tuple:
    """(student logits as a leaf that requires grad, teacher logits, mask of scored positions)."""
    import torch

    if args.logits:
        saved = torch.load(args.logits, map_location=device)
        student, teacher = (saved[name].to(dtype) for name in ("student", "teacher"))
        mask = saved["mask"].to(torch.long)
        if student.shape != teacher.shape or mask.shape != student.shape[:-1]:
            sys.exit(f"{args.logits}: student {tuple(student.shape)}, teacher {tuple(teacher.shape)} and mask "
                     f"{tuple(mask.shape)} logits must be [B, T, V], [B, T, V] and [B, T].")  # fmt: skip
        del saved
        return student.requires_grad_(True), teacher, mask
    generator = torch.Generator(device=device).manual_seed(0)
    shape = (args.batch, args.length, args.vocab)
    # Made in place (no temporaries), so the peak before the term is exactly the inputs.
    student = torch.empty(shape, dtype=dtype, device=device).normal_(0.0, 2.0, generator=generator)
    teacher = torch.empty(shape, dtype=dtype, device=device).normal_(0.0, 2.0, generator=generator)
    mask = torch.ones(shape[:-1], dtype=torch.long, device=device)
    return student.requires_grad_(True), teacher, mask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--vocab", type=int, default=49_152)
    parser.add_argument("--divergence", default="forward_kl", help="a --kd_loss spec, e.g. jsd:0.5")
    parser.add_argument("--temperature", type=float, default=2.0)
    parser.add_argument("--chunk_tokens", type=int, default=None, help="default: ted's default for the vocab")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--device", default="auto", help="auto (CUDA where there is one), cpu, cuda")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds of both")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--logits", default=None, help="real logits to use instead of random ones (see above)")
    parser.add_argument("--json", default=None, help="also write the result here")
    parser.add_argument("--worker", choices=["dense", "chunked", "time"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure(args)))
        return

    results = {}
    for worker in ("dense", "chunked", "time"):
        command = [sys.executable, __file__, *sys.argv[1:], "--worker", worker]
        done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, check=False)
        if done.returncode != 0:
            sys.exit(f"{worker} run failed:\n{done.stderr[-4000:]}")
        results[worker] = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"{worker}: {results[worker]}", file=sys.stderr)
    dense, chunk, timing = results["dense"], results["chunked"], results["time"]
    out = {
        "shape": dense["shape"],
        "scored_positions": dense["scored_positions"],
        "divergence": args.divergence,
        "dtype": args.dtype,
        "memory_ratio_dense_over_chunked": round(dense["extra_peak_mb"] / max(chunk["extra_peak_mb"], 1e-9), 2),
        "beyond_gradient_ratio": round(dense["beyond_gradient_mb"] / max(chunk["beyond_gradient_mb"], 1e-9), 2),
        "time_ratio_chunked_over_dense": round(timing["chunked_median_seconds"] / timing["dense_median_seconds"], 3),
        "relative_value_difference": abs(chunk["value"] - dense["value"]) / max(abs(dense["value"]), 1e-30),
        "dense": dense,
        "chunked": chunk,
        "time": timing,
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
    }
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
