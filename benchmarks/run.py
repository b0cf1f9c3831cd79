"""Speed benchmark of `ted`: Stage II overhead, cached Stage I, dynamic padding; one JSON object on stdout.

    python benchmarks/run.py [--model_pair TEACHER STUDENT] [--task rte] [--data_dir DIR] [--json OUT] [--quick]

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
import copy
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TED_SHARED_DIR", REPO.parent / "shared"))
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
STAGE1_EPOCHS, STAGE1_BATCH = 3, 32
PARTS = ("stage2", "stage1", "padding", "teacher_cache")
CACHE_EPOCHS = (3, 6)
STAGE2_CONFIGS = ("finetune", "ted", "kd", "lwd", "teacher_forward")
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


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model_pair",
        nargs=2,
        metavar=("TEACHER", "STUDENT"),
        default=DEFAULT_PAIR,
        help="teacher and student (hub ids or folders; same vocabulary)",
    )
    parser.add_argument("--task", default="rte", help="GLUE task of the Stage I / II measurements (default rte)")
    parser.add_argument("--data_dir", default=str(SHARED / "data" / "glue"), help="GLUE TSV folders")
    parser.add_argument("--json", dest="json_out", help="also write the JSON object to this file")
    parser.add_argument("--quick", action="store_true", help="small sizes: finishes in under a minute")
    parser.add_argument(
        "--teacher_filter_interval",
        type=int,
        default=None,
        help="default: teacher layers / student layers, so every student layer is matched",
    )
    parser.add_argument(
        "--max_seq_length",
        type=int,
        default=MAX_SEQ_LENGTH,
        help="truncation length, and the fixed length of the padded configuration (default 128)",
    )
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA) for every measured step")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=PARTS,
        default=list(PARTS),
        help="measure only these parts (default: all; the headline ratios need all three)",
    )
    parser.add_argument(
        "--memory",
        choices=("auto", "process", "inprocess"),
        default="auto",
        help="CPU peak memory per configuration: 'process' runs each configuration again in a fresh "
        "process and reads its peak RSS; 'inprocess' resets this process's peak before each "
        "configuration (memory kept from earlier ones counts). auto: process for the full run "
        "on CPU, inprocess otherwise (CUDA: max_memory_allocated, always per configuration)",
    )
    parser.add_argument("--memory_of", choices=sorted(CONFIG_PART), help=argparse.SUPPRESS)  # internal
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------------------------- measuring


class Meter:
    """Peak memory of a configuration: VmHWM (reset per configuration) on CPU, max_memory_allocated on CUDA."""

    def __init__(self, device):
        import torch

        self.torch = torch
        self.cuda = device.type == "cuda"
        self.can_reset = not self.cuda and _reset_rss_peak()
        cpu_kind = "rss_peak" if self.can_reset else "rss_peak_since_start"
        self.kind = "cuda_max_memory_allocated" if self.cuda else cpu_kind
        self.peaks: dict[str, float] = {}

    @contextlib.contextmanager
    def track(self, name: str):
        if self.cuda:
            self.torch.cuda.synchronize()
            self.torch.cuda.reset_peak_memory_stats()
        elif self.can_reset:
            _reset_rss_peak()
        try:
            yield
        finally:
            if self.cuda:
                self.torch.cuda.synchronize()
                peak = self.torch.cuda.max_memory_allocated() / 2**20
            else:
                peak = _rss_peak_kb() / 1024
            self.peaks[name] = round(max(self.peaks.get(name, 0.0), peak), 1)


def _reset_rss_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _rss_peak_kb() -> float:
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


def load_data(task_name, data_dir, tokenizer, n_train, max_seq_length, pad_to_max_length=False):
    from ted.settings.training_args import DataArguments
    from ted.tasks import load_task

    data_args = DataArguments(
        task_name=task_name,
        data_dir=data_dir,
        max_seq_length=max_seq_length,
        max_train_samples=n_train,
        max_eval_samples=8,
        pad_to_max_length=pad_to_max_length,
    )
    return load_task(data_args, tokenizer)


def columns(dataset):
    from ted.stages.common import model_columns

    return model_columns(dataset)


# ---------------------------------------------------------------------------------------------- Stage II


def bench_stage2(opts, size, device, meter, tokenizer, task, data, select=None):
    import torch
    from transformers import DataCollatorWithPadding

    from ted.method.filters import match_layers, new_filters, select_layers
    from ted.method.objectives import DistillObjective, DistillStudent, DistillWeights, TaskObjective, Teacher
    from ted.stages.models import config_for_task, load_task_model, num_layers

    teacher_path, student_path = opts.model_pair
    t_config, s_config = config_for_task(teacher_path, task), config_for_task(student_path, task)
    # A memory run (`select`) loads only what its configuration needs and does not copy the student.
    wanted = set(STAGE2_CONFIGS) if select is None else set(select)
    torch.manual_seed(opts.seed)
    teacher_model = load_task_model(teacher_path, task).to(device) if wanted - {"finetune"} else None
    student = load_task_model(student_path, task) if wanted - {"teacher_forward"} else None
    clone = copy.deepcopy if select is None else (lambda module: module)
    s_layers = select_layers(num_layers(s_config), 1)
    interval = opts.teacher_filter_interval or num_layers(t_config) // num_layers(s_config)
    t_layers = select_layers(num_layers(t_config), interval)
    match_layers(s_layers, t_layers)
    dim = t_config.hidden_size
    t_filters = new_filters(t_config, t_layers, dim, False, interval=interval)
    s_filters = new_filters(s_config, s_layers, dim, False, interval=1)
    projector = new_filters(s_config, s_layers, dim, False, interval=1, role="projector")

    rows = columns(data.train).select(range(size["stage2_batch"]))
    batch = DataCollatorWithPadding(tokenizer)([rows[i] for i in range(len(rows))])
    batch = {k: v.to(device) for k, v in batch.items()}
    inputs = {k: v for k, v in batch.items() if k != "labels"}

    with tempfile.TemporaryDirectory() as tmp:
        args = training_args(tmp, device, opts.bf16)

        def distill(filters, teacher_filters, weights):
            teacher = Teacher(teacher_model, teacher_filters, t_layers, task.head)
            module = DistillStudent(clone(student), clone(filters) if filters is not None else None)
            return make_trainer(module, DistillObjective(task.head, teacher, weights), args, teacher=teacher)

        builders = {
            "finetune": lambda: make_trainer(clone(student), TaskObjective(task.head), args),
            "ted": lambda: distill(s_filters, t_filters, DistillWeights(kl_alpha=20, mse_alpha=50)),
            "kd": lambda: distill(None, None, DistillWeights(kl_alpha=20, mse_alpha=0)),
            "lwd": lambda: distill(projector, None, DistillWeights(kl_alpha=20, mse_alpha=20)),
        }
        trainers = {name: build() for name, build in builders.items() if select is None or name in select}

        def teacher_forward():  # the irreducible teacher cost: one forward, inference mode, the run's autocast
            autocast = torch.autocast(device.type, dtype=torch.bfloat16) if opts.bf16 else contextlib.nullcontext()
            with torch.inference_mode(), autocast:
                teacher_model(**inputs)

        steps = {name: (lambda tr=tr: train_step(tr, batch)) for name, tr in trainers.items()}
        if select is None or "teacher_forward" in select:
            steps["teacher_forward"] = teacher_forward
        names = list(steps)
        times: dict[str, list[float]] = {name: [] for name in names}
        for round_ in range(size["stage2_warmup"] + size["stage2_reps"]):
            order = names[round_ % len(names) :] + names[: round_ % len(names)]  # rotate who goes first
            for name in order:
                with meter.track(name):
                    elapsed = timed(steps[name], device)
                if round_ >= size["stage2_warmup"]:
                    times[name].append(elapsed)
    if select is not None:
        return {}
    med = {name: statistics.median(values) for name, values in times.items()}
    base = med["finetune"] + med["teacher_forward"]
    n = size["stage2_batch"]
    return {
        "stage2_overhead_ratio": round(med["ted"] / base, 4),
        "kd_overhead_ratio": round(med["kd"] / base, 4),
        "lwd_overhead_ratio": round(med["lwd"] / base, 4),
        "step_ms_median": {k: round(v * 1000, 1) for k, v in med.items()},
        "step_ms_all": {k: [round(x * 1000, 1) for x in v] for k, v in times.items()},
        "samples_per_second": {k: round(n / v, 2) for k, v in med.items()},
        "batch": {
            "size": n,
            "seq_len": int(batch["input_ids"].shape[1]),
            "real_tokens": int(batch["attention_mask"].sum()),
        },
        "layers": {"student": s_layers, "teacher": t_layers, "filter_output_dim": dim},
        "alphas": {"ted": [20, 50], "kd": [20, 0], "lwd": [20, 20]},
    }


# ---------------------------------------------------------------------------------------------- teacher cache


def bench_teacher_cache(opts, size, device, meter, tokenizer, task, data, select=None):
    """Stage II TED over E epochs, online teacher against `ted.method.teacher_cache` (built inside the timing)."""
    import gc

    import torch
    from transformers import DataCollatorWithPadding

    from ted.method import teacher_cache as tc
    from ted.method.filters import new_filters, select_layers
    from ted.method.objectives import DistillObjective, DistillStudent, DistillWeights, TaskObjective, Teacher
    from ted.stages.models import config_for_task, load_task_model, num_layers

    teacher_path, student_path = opts.model_pair
    t_config, s_config = config_for_task(teacher_path, task), config_for_task(student_path, task)
    wanted = {"stage2_online_teacher", "stage2_cached_teacher"} if select is None else set(select)
    torch.manual_seed(opts.seed)
    s_layers = select_layers(num_layers(s_config), 1)
    interval = opts.teacher_filter_interval or num_layers(t_config) // num_layers(s_config)
    t_layers = select_layers(num_layers(t_config), interval)
    dim = t_config.hidden_size
    teacher = Teacher(
        load_task_model(teacher_path, task),
        new_filters(t_config, t_layers, dim, False, interval=interval),
        t_layers,
        task.head,
    )
    student = load_task_model(student_path, task)
    s_filters = new_filters(s_config, s_layers, dim, False, interval=1)
    weights = DistillWeights(kl_alpha=20, mse_alpha=50)
    train = columns(data.train).select(range(min(size["cache_examples"], len(data.train))))
    train = train.add_column(tc.EXAMPLE_INDEX, list(range(len(train))))
    rows = [train[i] for i in range(len(train))]
    plain_collator = DataCollatorWithPadding(tokenizer)
    batch_size = size["cache_batch"]

    def plain(features):
        return plain_collator([{k: v for k, v in f.items() if k != tc.EXAMPLE_INDEX} for f in features])

    def epoch_batches(epoch):
        order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(epoch)).tolist()
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]

    with tempfile.TemporaryDirectory() as tmp:
        args = training_args(tmp, device, opts.bf16)

        def trainer_for(objective_teacher):
            module = DistillStudent(copy.deepcopy(student), copy.deepcopy(s_filters))
            objective = DistillObjective(task.head, objective_teacher, weights)
            return make_trainer(module, objective, args, teacher=objective_teacher)

        def run_epoch(trainer, collate, epoch):
            for index in epoch_batches(epoch):
                batch = collate([rows[i] for i in index])
                train_step(trainer, {k: v.to(device) for k, v in batch.items()})

        components = tc.plan_components(
            head=task.head,
            teacher=teacher,
            need_logits=True,
            need_states=True,
            dataset=train,
            compute_dtype=torch.bfloat16 if opts.bf16 else None,
            store_dtype="bfloat16" if opts.bf16 else "float32",
        )
        teacher.autocast_dtype = torch.bfloat16 if opts.bf16 else None
        online = trainer_for(teacher) if "stage2_online_teacher" in wanted else None
        build_seconds = 0.0
        if "stage2_cached_teacher" in wanted:
            with meter.track("teacher_cache_build"):
                build_seconds = timed(
                    lambda: tc.build(Path(tmp), components, teacher, train, tokenizer, device, batch_size=64), device
                )
            stores = {c.name: tc.Store(Path(tmp) / c.folder_name, c) for c in components}
            cached_collate = tc.CachedSignalCollator(plain_collator, stores, flat_states=device.type == "cpu")
            cached = trainer_for(tc.CachedTeacher(task.head, t_layers))
        if select is not None:  # a memory run: one epoch of one configuration
            if "stage2_cached_teacher" in wanted:
                del teacher  # a cached run holds no teacher after the build
                gc.collect()
                _reset_rss_peak()
                run_epoch(cached, cached_collate, 0)
            else:
                run_epoch(online, plain, 0)
            return {}
        times = {"online": [], "cached": []}
        for epoch in range(max(CACHE_EPOCHS)):  # alternate: load changes hit both runs alike
            with meter.track("stage2_online_teacher"):
                times["online"].append(timed(lambda e=epoch: run_epoch(online, plain, e), device))
            with meter.track("stage2_cached_teacher"):
                times["cached"].append(timed(lambda e=epoch: run_epoch(cached, cached_collate, e), device))
            print(
                f"teacher cache: epoch {epoch + 1}: {times['online'][-1]:.1f} s online, "
                f"{times['cached'][-1]:.1f} s cached",
                file=sys.stderr,
            )

        # One batch, side by side: a cached TED step against a plain student step (collation outside the timing).
        index = list(range(min(batch_size, len(rows))))
        cached_batch = {k: v.to(device) for k, v in cached_collate([rows[i] for i in index]).items()}
        plain_batch = {k: v.to(device) for k, v in plain([rows[i] for i in index]).items()}
        finetune = make_trainer(copy.deepcopy(student), TaskObjective(task.head), args)
        steps = {
            "finetune": lambda: train_step(finetune, plain_batch),
            "cached": lambda: train_step(cached, cached_batch),
        }
        step_times: dict[str, list[float]] = {name: [] for name in steps}
        for round_ in range(size["stage2_warmup"] + size["stage2_reps"]):
            for name in list(steps)[round_ % 2 :] + list(steps)[: round_ % 2]:
                elapsed = timed(steps[name], device)
                if round_ >= size["stage2_warmup"]:
                    step_times[name].append(elapsed)
        nbytes = sum((Path(tmp) / c.folder_name / "values.npy").stat().st_size for c in components)
    med = {name: statistics.median(v) for name, v in step_times.items()}
    speedup = {
        f"E{e}": round(sum(times["online"][:e]) / (build_seconds + sum(times["cached"][:e])), 3) for e in CACHE_EPOCHS
    }
    n = len(rows)
    return {
        "teacher_cache_speedup": speedup,
        "cached_step_ratio": round(med["cached"] / med["finetune"], 4),
        "teacher_cache": {
            "examples": n,
            "batch": batch_size,
            "epoch_seconds": {k: [round(x, 3) for x in v] for k, v in times.items()},
            "build_seconds": round(build_seconds, 3),
            "bytes_per_example": round(nbytes / n, 1),
            "dtype": components[1].dtype,
            "step_ms_median": {k: round(v * 1000, 1) for k, v in med.items()},
        },
        "samples_per_second": {
            "stage2_online_teacher": round(n / statistics.median(times["online"]), 2),
            "stage2_cached_teacher": round(n / statistics.median(times["cached"]), 2),
        },
    }


# ---------------------------------------------------------------------------------------------- Stage I


def bench_stage1(opts, size, device, meter, tokenizer, task, data, select=None):
    import torch
    from transformers import DataCollatorWithPadding, default_data_collator

    from ted.method.feature_cache import cache_autocast_dtype, first_token_features
    from ted.method.filters import new_filters, select_layers
    from ted.method.heads import new_heads
    from ted.method.objectives import CachedFilterLearner, FilterLearner, FilterObjective
    from ted.stages.models import load_task_model, num_layers

    backbone = load_task_model(opts.model_pair[0], task)  # the teacher: Stage I's most expensive model
    layers = select_layers(num_layers(backbone.config), 1)  # the paper's Stage I: a filter on every layer
    train = columns(data.train)
    n = len(train)

    def fresh():
        torch.manual_seed(opts.seed)
        filters = new_filters(backbone.config, layers, None, False, interval=1)
        heads = new_heads(task.head, len(layers), filters.config.output_dim, task.num_labels, backbone.config)
        return filters, heads

    epochs = STAGE1_EPOCHS if select is None else 1  # memory runs: one epoch reaches the same peak
    out = {"examples": n, "epochs": epochs, "batch_size": STAGE1_BATCH, "filters": len(layers)}
    with tempfile.TemporaryDirectory() as tmp:
        args = training_args(
            tmp,
            device,
            opts.bf16,
            max_steps=-1,
            num_train_epochs=epochs,
            per_device_train_batch_size=STAGE1_BATCH,
            per_device_eval_batch_size=STAGE1_BATCH,
        )
        from ted.method.trainer import TedTrainer

        # The paper's way: the frozen backbone (dropout on) runs on every batch of every epoch.
        if select is None or "stage1_train_backbone" in select:
            filters, heads = fresh()
            learner = FilterLearner(backbone, filters, heads, backbone_mode="train")
            trainer = TedTrainer(
                model=learner,
                args=args,
                objective=FilterObjective(task.head),
                train_dataset=train,
                data_collator=DataCollatorWithPadding(tokenizer),
            )
            with meter.track("stage1_train_backbone"):
                paper = timed(trainer.train, device)

        # Ours: one inference-mode pass builds the token-0 cache; filters + heads train on it.
        filters, heads = fresh()
        dtype = cache_autocast_dtype(device, bf16=opts.bf16)

        def cached_run():
            start = time.perf_counter()
            cache = first_token_features(
                backbone.to(device),
                train,
                layers,
                tokenizer,
                device,
                batch_size=args.per_device_eval_batch_size,
                autocast_dtype=dtype,
            )
            sync(device)
            out["cache_build_seconds"] = round(time.perf_counter() - start, 3)
            TedTrainer(
                model=CachedFilterLearner(filters, heads),
                args=args,
                objective=FilterObjective(task.head),
                train_dataset=cache,
                data_collator=default_data_collator,
            ).train()

        if select is None or "stage1_eval_cache" in select:
            with meter.track("stage1_eval_cache"):
                cached = timed(cached_run, device)
    if select is not None:
        return {}
    out.update(
        paper_seconds=round(paper, 3),
        cached_seconds=round(cached, 3),
        cache_train_seconds=round(cached - out["cache_build_seconds"], 3),
    )
    return {
        "stage1_cache_speedup": round(paper / cached, 3),
        "stage1": out,
        "samples_per_second": {
            "stage1_train_backbone": round(n * STAGE1_EPOCHS / paper, 2),
            "stage1_eval_cache": round(n * STAGE1_EPOCHS / cached, 2),
        },
    }


# ---------------------------------------------------------------------------------------------- padding


def bench_padding(opts, size, device, meter, tokenizer, select=None):
    import torch

    from ted.method.objectives import TaskObjective
    from ted.stages.models import load_task_model

    results, info = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, pad, strategy in (
            ("finetune_pad_to_max", True, "random"),
            ("finetune_dynamic", False, "random"),
            ("finetune_dynamic_grouped", False, "group_by_length"),
        ):
            if select is not None and name not in select:
                continue
            task, data = load_data(
                "sst2", opts.data_dir, tokenizer, size["padding_examples"], opts.max_seq_length, pad_to_max_length=pad
            )
            torch.manual_seed(opts.seed)
            model = load_task_model(opts.model_pair[1], task)
            args = training_args(
                tmp,
                device,
                opts.bf16,
                per_device_train_batch_size=size["padding_batch"],
                train_sampling_strategy=strategy,
            )
            from ted.stages.common import make_collator

            trainer = make_trainer(
                model,
                TaskObjective(task.head),
                args,
                train_dataset=columns(data.train),
                data_collator=make_collator(tokenizer, args),
            )
            batches = [trainer._prepare_inputs(b) for b in trainer.get_train_dataloader()]
            train_step(trainer, batches[0])  # warm-up
            if pad:  # every batch has the same shape: the median of a few steps is exact enough
                with meter.track(name):
                    timed_batches = batches[1 : 1 + size["padded_steps"]]
                    times = [timed(lambda b=b, t=trainer: train_step(t, b), device) for b in timed_batches]
                seconds_per_sample = statistics.median(times) / size["padding_batch"]
                measured = len(times)
            else:  # batch shapes vary: one full pass over the examples
                with meter.track(name):
                    total = sum(timed(lambda b=b, t=trainer: train_step(t, b), device) for b in batches)
                seconds_per_sample = total / sum(len(b["input_ids"]) for b in batches)
                measured = len(batches)
            results[name] = round(1 / seconds_per_sample, 2)
            lengths = [int(b["input_ids"].shape[1]) for b in batches]
            info[name] = {"batches_timed": measured, "mean_padded_length": round(statistics.mean(lengths), 1)}
    if select is not None:
        return {}
    return {
        "dynamic_padding_speedup": round(results["finetune_dynamic_grouped"] / results["finetune_pad_to_max"], 3),
        "dynamic_padding_only_speedup": round(results["finetune_dynamic"] / results["finetune_pad_to_max"], 3),
        "padding": {"examples": size["padding_examples"], "batch_size": size["padding_batch"], **info},
        "samples_per_second": results,
    }


# ---------------------------------------------------------------------------------------------- main


def memory_in_fresh_processes(argv, configs: list[str]) -> dict[str, float]:
    """Peak RSS of a new process that loads what one configuration needs and runs it briefly (Stage II: two
    steps; Stage I: one epoch; padding: one pass), for each configuration: no memory kept from others counts."""
    import subprocess

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


def main(argv=None) -> dict:
    opts = parse_args(argv)
    missing = [p for p in (*opts.model_pair, opts.data_dir) if p.startswith(str(SHARED)) and not Path(p).exists()]
    if missing:
        sys.exit(
            f"benchmarks/run.py: {', '.join(missing)} not found. The defaults use the shared assets in "
            f"{SHARED} (set TED_SHARED_DIR), or pass --model_pair TEACHER STUDENT and --data_dir GLUE_DIR."
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
    from ted.stages.models import check_same_vocabulary, load_tokenizer

    size = SETTINGS["quick" if opts.quick else "full"]
    if opts.memory_of:  # a memory run needs only a couple of steps
        size = {**size, "stage2_warmup": 1, "stage2_reps": 1, "padded_steps": 2}
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    meter = Meter(device)
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
        print(json.dumps({"config": opts.memory_of, "peak_rss_mb": round(_rss_peak_kb() / 1024, 1)}))
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
    result["environment"] = {
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)",
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if opts.json_out:
        Path(opts.json_out).write_text(text + "\n")
    return result


if __name__ == "__main__":
    sys.path.insert(0, str(REPO / "src"))  # a fresh clone without `pip install -e .` still runs
    main()
    sys.exit(0)
