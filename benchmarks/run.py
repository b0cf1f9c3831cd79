"""Speed benchmark of `ted`; one JSON object on stdout. Two kinds of model pair:

    python benchmarks/run.py [--model_pair TEACHER STUDENT] [--task rte] [--data_dir DIR] [--json OUT] [--quick]
    python benchmarks/run.py --kind causal_lm [--model_pair TEACHER STUDENT] [--text_file F] [--batch_size 4]
                             [--block_size 128] [--json OUT] [--quick]

`--kind causal_lm` (decoders) measures the Stage II overhead ratios of TED, KD and LWD on WikiText blocks and the
extra peak memory of the chunked token divergence against the naive full-vocabulary one on the same batch's real
logits; bench_causal_lm.py says how. The rest of this text is the encoder benchmark (`--kind encoder`, the default).

Defaults: the shared MiniLM pair (all-MiniLM-L6-v2 teacher, paraphrase-MiniLM-L3-v2 student) and the shared
GLUE TSV folders (`$TED_SHARED_DIR`, else `../shared` beside the repository). Every number comes from this
one process, measured side by side:

* `stage2_overhead_ratio`: median time of a Stage II TED training step divided by (median time of a plain
  fine-tuning step of the student + median time of one teacher forward under `torch.inference_mode()`), on
  the same batch. A "training step" is what `Trainer.train()` does per batch: `TedTrainer.training_step`
  (the objective's forward and the backward), gradient clipping, the optimizer and scheduler steps and
  `zero_grad`. Configurations are interleaved round by round (warm-up rounds first) so load changes on a
  shared machine hit all of them alike. KD and LWD steps are measured the same way.
* `stage1_cache_speedup`: wall time of Stage I training the paper's way (the frozen backbone runs in train mode
  on every batch of every epoch) divided by ours (`--stage1_backbone_mode eval`: one inference-mode backbone
  pass builds the token-0 cache, then the filters and heads train on it), same examples, 3 epochs, batch 32,
  both through `TedTrainer.train()` and without per-epoch evaluation (the paper's Stage I has none).
* `dynamic_padding_speedup`: fine-tuning samples/s on SST-2 training data with dynamic padding and
  length-grouped batches (`train_sampling_strategy=group_by_length`) divided by samples/s with every batch
  padded to max_seq_length 128. `dynamic_padding_only_speedup` is the same without length grouping.
* `teacher_cache_speedup` (`{"E3": .., "E6": ..}`): wall time of Stage II TED over E epochs with the teacher
  online divided by the same with `ted.method.teacher_cache` (float32), *including* building the cache;
  epochs of the two runs alternate (online epoch, cached epoch, ...) and each epoch's time includes collating
  its batches (the cached collator gathers the teacher rows from the memory-mapped files).
  `cached_step_ratio`: median time of a cached TED training step divided by a plain fine-tuning step of the student on
  the same batch (interleaved).
  Also `teacher_cache.bytes_per_example`, `build_seconds`, and the peak memory of an online and a cached epoch
  (`stage2_online_teacher`, `stage2_cached_teacher`; the cached one is measured after the build, teacher freed).
* peak memory of every configuration: on GPU `torch.cuda.max_memory_allocated`, reset before each one. On CPU
  (full run, or `--memory process`) the peak RSS of a fresh process that loads only what that configuration
  needs and runs it briefly (Stage II: two steps; Stage I: one epoch; padding: two batches);
  `--quick` (or `--memory inprocess`) reads this process's peak RSS instead, reset before each configuration
  (Linux VmHWM), so it includes what earlier configurations left loaded.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the parts beside this file, also when imported by path
import bench_causal_lm  # noqa: E402
from bench_encoder import STAGE2_CONFIGS, bench_stage2, bench_teacher_cache, load_data  # noqa: E402
from bench_encoder_stage1 import bench_padding, bench_stage1  # noqa: E402
from bench_measure import REPO, SHARED, Meter, environment, load_average, rss_peak_kb  # noqa: E402

DEFAULT_PAIR = (str(SHARED / "models" / "all-MiniLM-L6-v2"), str(SHARED / "models" / "paraphrase-MiniLM-L3-v2"))

# Full run: a few minutes on 2 CPU cores. Quick: under a minute.
SETTINGS = {
    "full": dict(
        stage2_batch=16,
        stage2_warmup=2,
        stage2_reps=9,
        stage1_examples=512,
        padding_examples=1024,
        padding_batch=32,
        padded_steps=5,
        cache_examples=96,
        cache_batch=16,
    ),
    "quick": dict(
        stage2_batch=8,
        stage2_warmup=1,
        stage2_reps=3,
        stage1_examples=32,
        padding_examples=96,
        padding_batch=16,
        padded_steps=2,
        cache_examples=24,
        cache_batch=8,
    ),
}
PARTS = ("stage2", "stage1", "padding", "teacher_cache")
CONFIG_PART = {
    **{name: "stage2" for name in STAGE2_CONFIGS},
    "stage1_train_backbone": "stage1",
    "stage1_eval_cache": "stage1",
    "finetune_pad_to_max": "padding",
    "finetune_dynamic": "padding",
    "finetune_dynamic_grouped": "padding",
    "stage2_online_teacher": "teacher_cache",
    "stage2_cached_teacher": "teacher_cache",
}
MAX_SEQ_LENGTH = 128
# Options of one kind only (default None, so that one given to the other kind is refused), and their defaults.
ENCODER_ONLY = {
    "task": "rte",
    "data_dir": str(SHARED / "data" / "glue"),
    "max_seq_length": MAX_SEQ_LENGTH,
    "only": list(PARTS),
    "memory": "auto",
}
CAUSAL_LM_ONLY = {
    "text_file": str(bench_causal_lm.DEFAULT_TEXT),
    "block_size": 128,
    "batch_size": 4,
    "student_layers": bench_causal_lm.STUDENT_LAYERS,
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--kind",
        choices=("encoder", "causal_lm"),
        default="encoder",
        help="encoder pair on GLUE (default), or causal_lm: a decoder pair on WikiText blocks",
    )
    parser.add_argument(
        "--model_pair",
        nargs=2,
        metavar=("TEACHER", "STUDENT"),
        default=None,
        help="teacher and student (hub ids or folders; same vocabulary). Default: the shared MiniLM pair; "
        "causal_lm: the shared SmolLM2 GGUF teacher and a 15-layer student made from it",
    )
    parser.add_argument("--task", help="GLUE task of the Stage I / II measurements (default rte)")
    parser.add_argument("--data_dir", help="GLUE TSV folders (default: the shared ones)")
    parser.add_argument("--json", dest="json_out", help="also write the JSON object to this file")
    parser.add_argument("--quick", action="store_true", help="small sizes (causal_lm: tiny models): under a minute")
    parser.add_argument(
        "--teacher_filter_interval",
        type=int,
        default=None,
        help="default: teacher layers / student layers, so every student layer is matched",
    )
    parser.add_argument(
        "--max_seq_length",
        type=int,
        help="truncation length, and the fixed length of the padded configuration (default 128)",
    )
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA) for every measured step")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=PARTS,
        help="measure only these parts (default: all; the headline ratios need all three)",
    )
    parser.add_argument(
        "--memory",
        choices=("auto", "process", "inprocess"),
        help="CPU peak memory per configuration: 'process' runs each configuration again in a fresh "
        "process and reads its peak RSS; 'inprocess' resets this process's peak before each "
        "configuration (memory kept from earlier ones counts). auto: process for the full run "
        "on CPU, inprocess otherwise (CUDA: max_memory_allocated, always per configuration)",
    )
    parser.add_argument("--text_file", help="causal_lm: the text cut into blocks (default: WikiText-2 valid)")
    parser.add_argument("--block_size", type=int, help="causal_lm: tokens per block (default 128)")
    parser.add_argument("--batch_size", type=int, help="causal_lm: blocks per batch (default 4)")
    parser.add_argument(
        "--student_layers", type=int, help="causal_lm without --model_pair: layers of the student (default 15)"
    )
    parser.add_argument("--memory_of", choices=sorted(CONFIG_PART), help=argparse.SUPPRESS)  # internal
    parser.add_argument("--seed", type=int, default=0)
    opts = parser.parse_args(argv)
    own, other = (ENCODER_ONLY, CAUSAL_LM_ONLY) if opts.kind == "encoder" else (CAUSAL_LM_ONLY, ENCODER_ONLY)
    given = [f"--{name}" for name in other if getattr(opts, name) is not None]
    if given:
        other_kind = "causal_lm" if opts.kind == "encoder" else "encoder"
        parser.error(f"{', '.join(given)}: only with --kind {other_kind}, not --kind {opts.kind}.")
    for name, default in own.items():
        if getattr(opts, name) is None:
            setattr(opts, name, default)
    return opts


# ---------------------------------------------------------------------------------------------- encoder


def memory_in_fresh_processes(argv, configs: list[str]) -> dict[str, float]:
    """Peak RSS of a new process that loads what one configuration needs and runs it briefly (Stage II: two
    steps; Stage I: one epoch; padding: one pass), for each configuration: no memory kept from others counts."""
    argv = list(sys.argv[1:] if argv is None else argv)
    peaks = {}
    for config in configs:
        cmd = [sys.executable, str(Path(__file__).resolve()), *strip_json_flag(argv), "--memory_of", config]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"memory run of {config} failed:\n{done.stderr[-3000:]}")
        peaks[config] = json.loads(done.stdout.strip().splitlines()[-1])["peak_rss_mb"]
    return peaks


def strip_json_flag(argv: list[str]) -> list[str]:
    out, skip = [], False
    for token in argv:
        if skip:
            skip = False
            continue
        if token == "--json":
            skip = True
            continue
        if not token.startswith("--json="):
            out.append(token)
    return out


def run_encoder(opts, argv, device, meter) -> dict:
    """Every encoder measurement; the result object without its environment ({} for an internal memory run)."""
    from ted.stages.models import check_same_vocabulary, load_tokenizer

    size = SETTINGS["quick" if opts.quick else "full"]
    if opts.memory_of:  # a memory run needs only a couple of steps
        size = {**size, "stage2_warmup": 1, "stage2_reps": 1, "padded_steps": 2}
    tokenizer = load_tokenizer(opts.model_pair[1])
    check_same_vocabulary(load_tokenizer(opts.model_pair[0]), tokenizer, *opts.model_pair)
    n_train = max(size["stage1_examples"], size["stage2_batch"], size["cache_examples"])
    task, data = load_data(opts.task, opts.data_dir, tokenizer, n_train, opts.max_seq_length)

    select = None if opts.memory_of is None else {opts.memory_of}
    benches = {
        "stage2": lambda: bench_stage2(opts, size, device, meter, tokenizer, task, data, select),
        "stage1": lambda: bench_stage1(opts, size, device, meter, tokenizer, task, data, select),
        "padding": lambda: bench_padding(opts, size, device, meter, tokenizer, select),
        "teacher_cache": lambda: bench_teacher_cache(opts, size, device, meter, tokenizer, task, data, select),
    }
    if opts.memory_of:  # internal: run one configuration briefly, report this fresh process's peak RSS
        with contextlib.redirect_stdout(sys.stderr):
            benches[CONFIG_PART[opts.memory_of]]()
        print(json.dumps({"config": opts.memory_of, "peak_rss_mb": round(rss_peak_kb() / 1024, 1)}))
        return {}
    result: dict = {}
    sps: dict = {}
    for name in PARTS:
        if name in opts.only:
            with contextlib.redirect_stdout(sys.stderr):  # the Trainer prints its logs; stdout is the JSON
                part = benches[name]()
            sps.update(part.pop("samples_per_second"))
            result.update(part)
    result["samples_per_second"] = sps
    result["peak_memory_mb"] = dict(meter.peaks)
    result["memory_kind"] = meter.kind if meter.cuda else f"{meter.kind}_in_process"
    if not meter.cuda and (opts.memory == "process" or (opts.memory == "auto" and not opts.quick)):
        result["peak_memory_mb"] = memory_in_fresh_processes(
            argv, [c for c, part in CONFIG_PART.items() if part in opts.only]
        )
        result["memory_kind"] = "rss_peak_fresh_process"
    checks = (
        ("stage2_overhead_ratio", "<=", 1.10),
        ("stage1_cache_speedup", ">=", 5),
        ("dynamic_padding_speedup", ">", 2),
        ("teacher_cache_speedup_E6", ">=", 1.4),
        ("cached_step_ratio", "<=", 1.10),
    )
    if "teacher_cache_speedup" in result:
        result["teacher_cache_speedup_E6"] = result["teacher_cache_speedup"]["E6"]
    result["targets"] = {
        f"{key}{op}{bound}": (
            result[key] <= bound if op == "<=" else result[key] >= bound if op == ">=" else result[key] > bound
        )
        for key, op, bound in checks
        if key in result
    }
    if opts.quick:  # 32 Stage I examples: building the cache dominates, so the speed-up reads low
        result["targets_note"] = "quick mode checks that every measurement runs; the targets apply to the full run"
    result["config"] = {
        "mode": "quick" if opts.quick else "full",
        "task": opts.task,
        "model_pair": opts.model_pair,
        "max_seq_length": opts.max_seq_length,
        "bf16": opts.bf16,
        **size,
    }
    return result


# ---------------------------------------------------------------------------------------------- main


def main(argv=None) -> dict:
    opts = parse_args(argv)
    if opts.kind == "encoder":
        opts.model_pair = opts.model_pair or list(DEFAULT_PAIR)
        needed = [*opts.model_pair, opts.data_dir]
        missing = [p for p in needed if p.startswith(str(SHARED)) and not Path(p).exists()]
        fix = "--model_pair TEACHER STUDENT and --data_dir GLUE_DIR"
    else:
        missing, fix = bench_causal_lm.missing_assets(opts), "--model_pair TEACHER STUDENT and --text_file TEXT"
    if missing:
        sys.exit(
            f"benchmarks/run.py: {', '.join(missing)} not found. The defaults use the shared assets in "
            f"{SHARED} (set TED_SHARED_DIR), or pass {fix}."
        )
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    started = time.perf_counter()
    load_before = load_average()
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    if opts.threads:
        torch.set_num_threads(opts.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    meter = Meter(device)
    if opts.kind == "causal_lm":
        result = bench_causal_lm.run(opts, device, meter)
    else:
        result = run_encoder(opts, argv, device, meter)
        if opts.memory_of:
            return {}
    result["environment"] = environment(device, started, load_before)
    text = json.dumps(result, indent=2)
    print(text)
    if opts.json_out:
        Path(opts.json_out).write_text(text + "\n")
    return result


if __name__ == "__main__":
    sys.path.insert(0, str(REPO / "src"))  # a fresh clone without `pip install -e .` still runs
    main()
    sys.exit(0)
