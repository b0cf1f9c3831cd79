"""Extra peak memory of packing a large causal-LM training split: in memory against the streamed, cached packing.

    python benchmarks/packing_memory.py                   # 40 copies of WikiText-2 valid (~10M tokens), SmolLM2
    python benchmarks/packing_memory.py --copies 200 --json out.json

A folder holding `train.jsonl` (the WikiText-2 valid lines, each non-blank line one document, repeated `--copies`
times) and a short `validation.jsonl` is read by `datasets.load_dataset` as a hub dataset is. Each configuration
runs in a fresh process: it loads the split and the tokenizer, resets the peak RSS, then packs the train split
into blocks of 1,024 tokens, either in memory (`datasets` caching off) or into the datasets cache (the path
`--dataset_name` takes); a third process then opens the cached file again, which is what every later stage does.
Extra peak memory = the peak minus the value before packing, of the anonymous resident memory (RssAnon, sampled
every 5 ms: the heap and arrays, which is what runs out) and of the whole RSS (VmHWM, which also counts the pages
of the memory-mapped split as it is read: the kernel drops those under pressure). The ratio (in memory over
cached, anonymous) is the point: the in-memory blocks grow with the corpus (4 bytes a token), the cached ones stay
one batch of documents.
The last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench_measure import SHARED, reset_rss_peak, rss_peak_kb

TEXT = SHARED / "data" / "lm" / "wikitext-2" / "valid.txt"
TOKENIZER = SHARED / "models" / "smollm2-135m-instruct-q4_1"
MB = 1 << 20


def write_corpus(folder: Path, copies: int) -> int:
    lines = [line for line in TEXT.read_text(encoding="utf-8").splitlines() if line.strip()]
    with open(folder / "train.jsonl", "w", encoding="utf-8") as out:
        for _ in range(copies):
            out.writelines(json.dumps({"text": line}) + "\n" for line in lines)
    (folder / "validation.jsonl").write_text("".join(json.dumps({"text": line}) + "\n" for line in lines[:50]))
    return copies * len(lines)


def anon_kb() -> int:
    """Anonymous resident memory (heap, arrays): RSS without the mapped file pages of the dataset being read."""
    return int(re.search(r"RssAnon:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


class AnonPeak(threading.Thread):
    """Samples anon_kb every 5 ms: Linux keeps no peak of it."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak, self.stop = anon_kb(), threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.005):
            self.peak = max(self.peak, anon_kb())


def worker(mode: str, folder: Path, cache: Path) -> dict:
    """In this fresh process: one packing of the train split (or one re-opening of its cached file)."""
    import datasets
    import psutil
    from transformers import AutoTokenizer

    from ted.tasks.lm_hub import text_batches
    from ted.tasks.packing import cached_packed_blocks

    datasets.config.HF_DATASETS_CACHE = cache
    if mode == "in_memory":
        datasets.disable_caching()
    rows = datasets.load_dataset(str(folder), split="train")
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER)
    before, before_anon = psutil.Process().memory_info().rss, anon_kb()
    reset_rss_peak()
    sampler = AnonPeak()
    sampler.start()
    started = time.perf_counter()
    blocks = cached_packed_blocks(rows, text_batches(rows, "text"), tokenizer, 1024, None, key="text")
    seconds = time.perf_counter() - started
    sampler.stop.set()
    sampler.join()
    return {
        "extra_peak_anon_mb": round((sampler.peak - before_anon) * 1024 / MB, 1),
        "extra_peak_rss_mb": round((rss_peak_kb() * 1024 - before) / MB, 1),
        "seconds": round(seconds, 2),
        "blocks": len(blocks),
        "on_disk": bool(blocks.cache_files),
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--copies", type=int, default=40, help="copies of WikiText-2 valid in the corpus")
    parser.add_argument("--json", dest="json_out", help="also write the JSON object to this file")
    parser.add_argument("--worker", choices=("in_memory", "cached", "reopen"), help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    if opts.worker:
        print(json.dumps(worker(opts.worker, Path(opts.folder), Path(opts.cache))))
        return {}
    if not TEXT.is_file() or not TOKENIZER.is_dir():
        sys.exit(f"packing_memory needs {TEXT} and {TOKENIZER} (../shared).")
    with tempfile.TemporaryDirectory() as tmp:
        folder, cache = Path(tmp) / "corpus", Path(tmp) / "cache"
        folder.mkdir()
        documents = write_corpus(folder, opts.copies)
        runs = {}
        for mode in ("in_memory", "cached", "reopen"):
            command = [sys.executable, __file__, "--worker", mode, "--folder", str(folder), "--cache", str(cache)]
            done = subprocess.run(command, capture_output=True, text=True, env={**os.environ})
            if done.returncode != 0:
                sys.exit(f"{mode} failed:\n{done.stderr[-3000:]}")
            runs[mode] = json.loads(done.stdout.strip().splitlines()[-1])
    result = {
        "documents": documents,
        "tokens": runs["in_memory"]["blocks"] * 1024,  # up to the last block's shortfall
        **runs,
        "memory_ratio_in_memory_over_cached": round(
            runs["in_memory"]["extra_peak_anon_mb"] / max(runs["cached"]["extra_peak_anon_mb"], 0.1), 2
        ),
    }
    print(json.dumps(result))
    if opts.json_out:
        Path(opts.json_out).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
