"""`benchmarks/run.py` (encoders), Stage II: the overhead of TED, KD and LWD steps, and the teacher-signal cache."""

from __future__ import annotations

import contextlib
import copy
import statistics
import sys
import tempfile
from pathlib import Path

from bench_measure import interleaved_rounds, make_trainer, reset_rss_peak, timed, train_step, training_args

CACHE_EPOCHS = (3, 6)
STAGE2_CONFIGS = ("finetune", "ted", "kd", "lwd", "teacher_forward")


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


PAPER_RTE_ALPHAS = {"ted": (20, 50), "kd": (20, 0), "lwd": (20, 20)}  # (kl_alpha, mse_alpha)


def bench_stage2(opts, size, device, meter, tokenizer, task, data, select=None):
    """The encoder pair's Stage II steps on one padded batch of the task's training examples."""
    import torch
    from transformers import DataCollatorWithPadding

    from ted.stages.models import load_task_model

    teacher_path, student_path = opts.model_pair
    # A memory run (`select`) loads only what its configuration needs and does not copy the student.
    wanted = set(STAGE2_CONFIGS) if select is None else set(select)
    torch.manual_seed(opts.seed)
    teacher_model = load_task_model(teacher_path, task) if wanted - {"finetune"} else None
    student = load_task_model(student_path, task) if wanted - {"teacher_forward"} else None
    rows = columns(data.train).select(range(size["stage2_batch"]))
    batch = DataCollatorWithPadding(tokenizer)([rows[i] for i in range(len(rows))])
    models = (teacher_path, teacher_model, student_path, student)
    return stage2_steps(opts, size, device, meter, task, models, batch, PAPER_RTE_ALPHAS, select)


def stage2_steps(opts, size, device, meter, task, models, batch, alphas, select=None):
    """Median training-step times of plain fine-tuning and of TED, KD and LWD, and one teacher forward, on
    `batch`, interleaved; the overhead ratios. `models` = (teacher path, teacher model, student path, student);
    `alphas` = {method: (kl_alpha, mse_alpha)}. TED's filters are new ones: a step costs the same as with
    trained filters. With `select` (a memory run) only those configurations run and the student is not copied."""
    import torch

    from ted.method.filters import match_layers, new_filters, select_layers
    from ted.method.objectives import DistillObjective, DistillStudent, DistillWeights, TaskObjective, Teacher
    from ted.stages.models import config_for_task, num_layers

    teacher_path, teacher_model, student_path, student = models
    teacher_model = teacher_model.to(device) if teacher_model is not None else None
    t_config, s_config = config_for_task(teacher_path, task), config_for_task(student_path, task)
    clone = copy.deepcopy if select is None else (lambda module: module)
    s_layers = select_layers(num_layers(s_config), 1)
    interval = opts.teacher_filter_interval or num_layers(t_config) // num_layers(s_config)
    t_layers = select_layers(num_layers(t_config), interval)
    match_layers(s_layers, t_layers)
    dim = t_config.hidden_size
    torch.manual_seed(opts.seed)
    t_filters = new_filters(t_config, t_layers, dim, False, interval=interval)
    s_filters = new_filters(s_config, s_layers, dim, False, interval=1)
    projector = new_filters(s_config, s_layers, dim, False, interval=1, role="projector")
    batch = {k: v.to(device) for k, v in batch.items()}
    inputs = {k: v for k, v in batch.items() if k != "labels"}

    with tempfile.TemporaryDirectory() as tmp:
        args = training_args(tmp, device, opts.bf16)

        def distill(filters, teacher_filters, method):
            kl_alpha, mse_alpha = alphas[method]
            teacher = Teacher(teacher_model, teacher_filters, t_layers, task.head)
            module = DistillStudent(clone(student), clone(filters) if filters is not None else None)
            weights = DistillWeights(kl_alpha=kl_alpha, mse_alpha=mse_alpha)
            return make_trainer(module, DistillObjective(task.head, teacher, weights), args, teacher=teacher)

        builders = {
            "finetune": lambda: make_trainer(clone(student), TaskObjective(task.head), args),
            "ted": lambda: distill(s_filters, t_filters, "ted"),
            "kd": lambda: distill(None, None, "kd"),
            "lwd": lambda: distill(projector, None, "lwd"),
        }
        trainers = {name: build() for name, build in builders.items() if select is None or name in select}

        def teacher_forward():  # the irreducible teacher cost: one forward, inference mode, the run's autocast
            autocast = torch.autocast(device.type, dtype=torch.bfloat16) if opts.bf16 else contextlib.nullcontext()
            with torch.inference_mode(), autocast:
                teacher_model(**inputs)

        steps = {name: (lambda tr=tr: train_step(tr, batch)) for name, tr in trainers.items()}
        if select is None or "teacher_forward" in select:
            steps["teacher_forward"] = teacher_forward
        cpu_times: dict[str, list[float]] = {}
        times = interleaved_rounds(steps, size["stage2_warmup"], size["stage2_reps"], device, meter, cpu_times)
    if select is not None:
        return {}
    med = {name: statistics.median(values) for name, values in times.items()}
    base = med["finetune"] + med["teacher_forward"]
    cpu = {name: statistics.median(values) for name, values in cpu_times.items()}
    cpu_base = cpu["finetune"] + cpu["teacher_forward"]
    n = int(batch["input_ids"].shape[0])
    return {
        "stage2_overhead_ratio": round(med["ted"] / base, 4),
        "kd_overhead_ratio": round(med["kd"] / base, 4),
        "lwd_overhead_ratio": round(med["lwd"] / base, 4),
        # The same ratios of CPU time (median CPU seconds of this process per step): on a machine shared with
        # other jobs, wall times of one configuration can vary several-fold from round to round.
        "cpu_time_overhead_ratios": {m: round(cpu[m] / cpu_base, 4) for m in ("ted", "kd", "lwd")},
        "step_ms_median": {k: round(v * 1000, 1) for k, v in med.items()},
        "step_ms_all": {k: [round(x * 1000, 1) for x in v] for k, v in times.items()},
        "step_cpu_ms_median": {k: round(v * 1000, 1) for k, v in cpu.items()},
        "samples_per_second": {k: round(n / v, 2) for k, v in med.items()},
        "batch": {
            "size": n,
            "seq_len": int(batch["input_ids"].shape[1]),
            "real_tokens": int(batch["attention_mask"].sum()),
        },
        "layers": {"student": s_layers, "teacher": t_layers, "filter_output_dim": dim},
        "alphas": {name: list(pair) for name, pair in alphas.items()},
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
                reset_rss_peak()
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
