"""`benchmarks/run.py` (encoders), Stage I and padding: the cached Stage I against the paper's, dynamic padding."""

from __future__ import annotations

import statistics
import tempfile
import time

from bench_encoder import columns, load_data
from bench_measure import make_trainer, sync, timed, train_step, training_args

STAGE1_EPOCHS, STAGE1_BATCH = 3, 32


def bench_stage1(opts, size, device, meter, tokenizer, task, data, select=None):
    import torch
    from transformers import DataCollatorWithPadding, default_data_collator

    from ted.method.feature_cache import cache_autocast_dtype, pooled_token_features
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
            cache = pooled_token_features(
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
