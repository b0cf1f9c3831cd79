"""`benchmarks/run.py --kind causal_lm`: a decoder pair's Stage II overhead, and the memory of the chunked token
divergence against the naive full-vocabulary one on that pair's real logits.

* Pair: `--model_pair TEACHER STUDENT`, else the shared SmolLM2-135M-Instruct GGUF teacher (30 layers, vocabulary
  49,152) and a student made from it in a temporary folder by `ted.init_student(num_layers=15,
  strategy="uniform")`: a layer-dropped copy. Block influence would keep better layers but needs data and time,
  and a step costs the same whichever layers are kept. `--quick`: a tiny Llama teacher (4 layers, hidden 32)
  with the SmolLM2 tokenizer, so the logits have the real vocabulary, and a 2-layer student made from it.
* Batch: the first `--batch_size` blocks of `--block_size` tokens of `--text_file` (default WikiText-2 valid,
  the text of the issue's acceptance run), packed as `--task_name causal_lm` packs them.
* Stage II: the encoder benchmark's measurement (`bench_encoder.stage2_steps`) on that batch: median training
  step of TED, KD and LWD divided by (a plain fine-tuning step of the student + one teacher forward in inference
  mode), interleaved round by round. Every student layer is matched (teacher layers every teacher/student
  layers); TED's filters are new ones on both models, which cost what trained filters cost.
* KD term: the initial student's and the teacher's logits on that batch are saved, and
  `chunked_divergence.py --logits` measures one forward+backward of the term over the scored next-token
  positions, naive (the divergence over the whole [B, T, V] at once) and chunked (as the causal-LM kind computes
  it), each in a fresh process, and their times in a third. On CPU both memory runs are repeated with
  `MALLOC_MMAP_THRESHOLD_=65536`: glibc then returns each freed chunk at once instead of keeping it in its heap,
  so `chunked_kd_memory_ratio_malloc_trimmed` compares what the two terms themselves hold.
* Peak memory of the Stage II configurations: this process's peak RSS, reset before each one (CUDA:
  `max_memory_allocated`), so it includes the models every configuration keeps loaded.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bench_encoder import stage2_steps
from bench_measure import SHARED

DEFAULT_TEACHER = SHARED / "models" / "smollm2-135m-instruct-q4_1"
DEFAULT_TEXT = SHARED / "data" / "lm" / "wikitext-2" / "valid.txt"
STUDENT_LAYERS = 15
LM_ALPHAS = {"ted": (1.0, 1.0), "kd": (1.0, 0.0), "lwd": (1.0, 1.0)}  # (kl_alpha, mse_alpha); no effect on time
SETTINGS = {
    "full": dict(stage2_warmup=1, stage2_reps=5, kd_rounds=3),
    "quick": dict(stage2_warmup=1, stage2_reps=2, kd_rounds=1),
}
TINY_LLAMA = dict(
    hidden_size=32, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
    max_position_embeddings=512, tie_word_embeddings=True,
)  # fmt: skip
QUICK_STUDENT_LAYERS = 2
QUICK_TEXT_CHARS = 100_000  # enough for 8 blocks of 128 tokens; tokenising all of WikiText-2 valid takes seconds
MMAP_THRESHOLD = 65536
CHUNKED_SCRIPT = Path(__file__).with_name("chunked_divergence.py")
TED_FILTERS = "new (untrained) filters on both models, as in the encoder benchmark: trained ones cost the same"


def missing_assets(opts) -> list[str]:
    """The shared files this run's defaults need that are not there."""
    needed = [opts.text_file] + ([] if opts.model_pair else [str(DEFAULT_TEACHER)])
    return [path for path in needed if path.startswith(str(SHARED)) and not Path(path).exists()]


def write_tiny_llama(folder: Path) -> Path:
    """A random 4-layer Llama with the shared SmolLM2 tokenizer (the real vocabulary), saved with it."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(DEFAULT_TEACHER)
    ids = {f"{name}_token_id": getattr(tokenizer, f"{name}_token_id") for name in ("bos", "eos", "pad")}
    config = AutoConfig.for_model("llama", vocab_size=len(tokenizer), **ids, **TINY_LLAMA)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def make_pair(opts, folder: Path) -> tuple[str, str, dict]:
    """(teacher, student, what they are): `--model_pair`, or a student made from the teacher by `ted.init_student`."""
    import ted

    if opts.model_pair:
        return opts.model_pair[0], opts.model_pair[1], {"teacher": opts.model_pair[0], "student": opts.model_pair[1]}
    teacher, layers, name = DEFAULT_TEACHER, opts.student_layers, str(DEFAULT_TEACHER)
    if opts.quick:
        teacher, layers = write_tiny_llama(folder / "teacher"), QUICK_STUDENT_LAYERS
        name = "a random tiny Llama with the SmolLM2 tokenizer"
    student = folder / "student"
    ted.init_student(
        teacher_model_name_or_path=str(teacher), num_layers=layers, strategy="uniform", output_dir=str(student)
    )
    return str(teacher), str(student), {"teacher": name, "student": f"init_student(num_layers={layers}, uniform)"}


def load_batch(opts, tokenizer, folder: Path) -> tuple:
    """(task, the batch): the first --batch_size full blocks of --text_file, collated as ted distill does."""
    from ted.errors import TedInputError
    from ted.settings.options import DataArguments
    from ted.tasks import load_task
    from ted.tasks.causal_lm import token_rows_collator

    text = opts.text_file
    if opts.quick:
        text = folder / "quick.txt"
        text.write_text(Path(opts.text_file).read_text(encoding="utf-8")[:QUICK_TEXT_CHARS], encoding="utf-8")
    data_args = DataArguments(
        task_name="causal_lm",
        train_file=str(text),
        validation_file=str(text),
        block_size=opts.block_size,
        max_train_samples=opts.batch_size,
        max_eval_samples=1,
    )
    task, data = load_task(data_args, tokenizer)
    rows = [{"input_ids": ids} for ids in data.train["input_ids"] if len(ids) == opts.block_size]
    if len(rows) < opts.batch_size:
        raise TedInputError(
            f"{opts.text_file} holds {len(rows)} full blocks of {opts.block_size} tokens, fewer than --batch_size "
            f"{opts.batch_size}: pass a longer --text_file, or a smaller --block_size or --batch_size."
        )
    return task, token_rows_collator(tokenizer, None)(rows)


def kd_term_memory(opts, rounds: int, device, teacher_model, student, batch, folder: Path) -> dict:
    """chunked_divergence.py on this batch's real logits (forward KL, temperature 2, ted distill's defaults): naive
    (dense) against chunked, each in a fresh process."""
    import torch

    from ted.method.losses import next_token_targets

    inputs = {k: v.to(device) for k, v in batch.items() if k != "labels"}
    with torch.inference_mode():
        logits = {
            "student": student.to(device)(**inputs).logits.float().cpu(),
            "teacher": teacher_model.to(device)(**inputs).logits.float().cpu(),
        }
    logits["mask"] = next_token_targets(batch["labels"]) != -100  # the positions the causal-LM kind scores
    path = folder / "logits.pt"
    torch.save(logits, path)
    del logits
    command = [sys.executable, str(CHUNKED_SCRIPT), "--logits", str(path), "--rounds", str(rounds)]
    command += ["--threads", str(opts.threads or 0)]
    result = last_json_line(command)
    if device.type == "cpu":
        # glibc keeps the chunks' freed memory in its heap, which counts in the process's peak RSS; with a fixed
        # mmap threshold it hands each block back when freed, so the peak is what the term itself holds.
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD)}
        trimmed = {w: last_json_line([*command, "--worker", w], env)["extra_peak_mb"] for w in ("dense", "chunked")}
        result["malloc_mmap_threshold"] = {
            "MALLOC_MMAP_THRESHOLD_": MMAP_THRESHOLD,
            "dense_extra_peak_mb": trimmed["dense"],
            "chunked_extra_peak_mb": trimmed["chunked"],
            "memory_ratio_dense_over_chunked": round(trimmed["dense"] / max(trimmed["chunked"], 1e-9), 2),
        }
    return result


def last_json_line(command: list[str], env: dict | None = None) -> dict:
    """The JSON object on the last line of a command's stdout."""
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(opts, device, meter) -> dict:
    """Every causal-LM measurement; the result object without its environment."""
    from ted.stages.models import check_same_vocabulary, load_task_model, load_tokenizer, num_layers

    size = SETTINGS["quick" if opts.quick else "full"]
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(sys.stderr):  # stdout is the JSON
        folder = Path(tmp)
        teacher_path, student_path, pair = make_pair(opts, folder)
        tokenizer = load_tokenizer(student_path)
        check_same_vocabulary(load_tokenizer(teacher_path), tokenizer, teacher_path, student_path)
        task, batch = load_batch(opts, tokenizer, folder)
        teacher_model = load_task_model(teacher_path, task)
        student = load_task_model(student_path, task)
        models = (teacher_path, teacher_model, student_path, student)
        stage2 = stage2_steps(opts, size, device, meter, task, models, batch, LM_ALPHAS)
        kd = kd_term_memory(opts, size["kd_rounds"], device, teacher_model, student, batch, folder)
    tokens = stage2["batch"]["real_tokens"]
    return {
        "kind": "causal_lm",
        "stage2_overhead_ratio": stage2.pop("stage2_overhead_ratio"),
        "kd_overhead_ratio": stage2.pop("kd_overhead_ratio"),
        "lwd_overhead_ratio": stage2.pop("lwd_overhead_ratio"),
        "ted_filters": TED_FILTERS,
        # The point of the chunked term: its extra peak memory against the naive one's, on the same logits.
        "chunked_kd_memory_ratio": kd["memory_ratio_dense_over_chunked"],
        "chunked_kd_beyond_gradient_ratio": kd["beyond_gradient_ratio"],
        "chunked_kd_time_ratio": kd["time_ratio_chunked_over_dense"],
        **(
            {"chunked_kd_memory_ratio_malloc_trimmed": kd["malloc_mmap_threshold"]["memory_ratio_dense_over_chunked"]}
            if "malloc_mmap_threshold" in kd
            else {}
        ),
        **stage2,
        "tokens_per_second": {k: round(tokens / v * 1000, 1) for k, v in stage2["step_ms_median"].items()},
        "kd_term": {"naive_is": "dense", **kd},
        "pair": {
            **pair,
            "layers": [num_layers(teacher_model.config), num_layers(student.config)],
            "vocab": int(teacher_model.config.vocab_size),
            "parameters": [sum(p.numel() for p in m.parameters()) for m in (teacher_model, student)],
        },
        "peak_memory_mb": dict(meter.peaks),
        "memory_kind": meter.kind if meter.cuda else f"{meter.kind}_in_process",
        "config": {
            "mode": "quick" if opts.quick else "full",
            "text_file": opts.text_file,
            "block_size": opts.block_size,
            "batch_size": opts.batch_size,
            "divergence": "forward_kl",
            "bf16": opts.bf16,
            **size,
        },
    }
