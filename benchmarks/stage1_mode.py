"""Does the cached eval-mode Stage I change results? Stage I (train vs eval backbone) and the TED run after it.

    python benchmarks/stage1_mode.py [--tasks rte mrpc] [--seeds 1 2] [--train_samples 600] [--out DIR] [--json OUT]

For each task: fine-tune the teacher (all-MiniLM-L6-v2) and the student (paraphrase-MiniLM-L3-v2) once;
then for each seed and each `--stage1_backbone_mode` (train: the paper, backbone dropout on, no cache;
eval: dropout off, token-0 features cached), run Stage I for both models and TED from those two Stage I
folders, all with the same seed. Prints one JSON object: per-layer Stage I dev scores (each filter head
scored alone), the TED dev score, and wall times.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TED_SHARED_DIR", REPO.parent / "shared"))
TEACHER = str(SHARED / "models" / "all-MiniLM-L6-v2")
STUDENT = str(SHARED / "models" / "paraphrase-MiniLM-L3-v2")
MSE_ALPHA = {"rte": 50, "mrpc": 100}  # the paper's TED alphas for these tasks (kl_alpha 20)
METRIC = {"rte": "accuracy", "mrpc": "f1"}  # the paper's selection metric


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=["rte", "mrpc"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--train_samples", type=int, default=1000, help="fine-tuning examples (the first N)")
    parser.add_argument(
        "--stage_samples",
        type=int,
        default=600,
        help="Stage I and Stage II examples (the first N of the fine-tuning ones)",
    )
    parser.add_argument("--reuse", action="store_true", help="keep fine-tuned models already in --out")
    parser.add_argument("--data_dir", default=str(SHARED / "data" / "glue"))
    parser.add_argument("--out", default="runs/stage1_mode")
    parser.add_argument("--json", dest="json_out")
    opts = parser.parse_args(argv)
    os.environ.setdefault("TQDM_DISABLE", "1")
    import ted

    out = Path(opts.out)
    common = dict(
        data_dir=opts.data_dir,
        max_seq_length=128,
        disable_tqdm=True,
        logging_steps=50,
        overwrite_output_dir=True,
        save_total_limit=1,
    )
    results: dict = {
        "config": {
            "train_samples": opts.train_samples,
            "stage_samples": opts.stage_samples,
            "seeds": opts.seeds,
            "teacher": TEACHER,
            "student": STUDENT,
        },
        "tasks": {},
    }
    for task in opts.tasks:
        root = out / task
        x = dict(common, task_name=task, max_train_samples=opts.stage_samples)
        ft = dict(
            common,
            task_name=task,
            max_train_samples=opts.train_samples,
            num_train_epochs=4,
            per_device_train_batch_size=16,
            seed=42,
        )
        t0 = time.time()
        task_result = {"runs": []}
        for who, path, lr in (("teacher", TEACHER, 5e-5), ("student", STUDENT, 1e-4)):
            folder = root / who
            if not (opts.reuse and (folder / "eval_results.json").is_file()):
                ted.finetune(model_name_or_path=path, output_dir=str(folder), learning_rate=lr, **ft)
            task_result[f"{who}_dev"] = json.loads((folder / "eval_results.json").read_text())
        task_result["finetune_seconds"] = round(time.time() - t0, 1)
        for seed in opts.seeds:
            for mode in ("train", "eval"):
                run = {"seed": seed, "mode": mode}
                # Stage I keeps its last epoch (the paper); one dev evaluation at the end scores every filter head.
                s1 = dict(
                    x,
                    seed=seed,
                    stage1_backbone_mode=mode,
                    learning_rate=3e-4,
                    num_train_epochs=3,
                    per_device_train_batch_size=32,
                    eval_strategy="no",
                    save_strategy="no",
                )
                start = time.time()
                t1 = ted.learn_filters(
                    model_name_or_path=str(root / "teacher"),
                    filter_interval=2,
                    output_dir=str(root / f"teacher_s1_{mode}_{seed}"),
                    **s1,
                )
                run["stage1_teacher_seconds"] = round(time.time() - start, 1)
                start = time.time()
                s1_student = ted.learn_filters(
                    model_name_or_path=str(root / "student"),
                    filter_interval=1,
                    output_dir=str(root / f"student_s1_{mode}_{seed}"),
                    **s1,
                )
                run["stage1_student_seconds"] = round(time.time() - start, 1)
                run["stage1_teacher_scores"] = t1.extra["layer_scores"]
                run["stage1_student_scores"] = s1_student.extra["layer_scores"]
                start = time.time()
                distilled = ted.distill(
                    model_name_or_path=str(root / f"student_s1_{mode}_{seed}"),
                    teacher_model_name_or_path=str(root / f"teacher_s1_{mode}_{seed}"),
                    teacher_filter_interval=2,
                    filter_interval=1,
                    kl_alpha=20,
                    mse_alpha=MSE_ALPHA.get(task, 50),
                    output_dir=str(root / f"ted_{mode}_{seed}"),
                    learning_rate=1e-4,
                    num_train_epochs=3,
                    per_device_train_batch_size=16,
                    **dict(x, seed=seed),
                )
                run["ted_seconds"] = round(time.time() - start, 1)
                run["ted_dev"] = {
                    k: v
                    for k, v in distilled.metrics.items()
                    if k.startswith("eval_") and not k.endswith(("runtime", "per_second"))
                }
                task_result["runs"].append(run)
                print(json.dumps({task: run}), file=sys.stderr, flush=True)
        task_result["summary"] = summarize(task_result["runs"], METRIC.get(task, "accuracy"))
        results["tasks"][task] = task_result
    text = json.dumps(results, indent=2)
    print(text)
    if opts.json_out:
        Path(opts.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(opts.json_out).write_text(text + "\n")


def summarize(runs: list[dict], metric: str) -> dict:
    """Mean over seeds, per mode: each Stage I layer's dev score, their mean, and the TED dev score."""
    summary = {}
    for mode in ("train", "eval"):
        mine = [r for r in runs if r["mode"] == mode]
        entry = {}
        for who in ("teacher", "student"):
            layers = mine[0][f"stage1_{who}_scores"]
            per_layer = {
                layer: statistics.mean(r[f"stage1_{who}_scores"][layer][metric] for r in mine) for layer in layers
            }
            entry[f"stage1_{who}_{metric}_per_layer"] = {k: round(v, 4) for k, v in per_layer.items()}
            entry[f"stage1_{who}_{metric}_mean"] = round(statistics.mean(per_layer.values()), 4)
            entry[f"stage1_{who}_seconds"] = round(statistics.mean(r[f"stage1_{who}_seconds"] for r in mine), 1)
        entry[f"ted_{metric}"] = round(statistics.mean(r["ted_dev"][f"eval_{metric}"] for r in mine), 4)
        entry["ted_accuracy"] = round(statistics.mean(r["ted_dev"]["eval_accuracy"] for r in mine), 4)
        entry[f"ted_{metric}_per_seed"] = [round(r["ted_dev"][f"eval_{metric}"], 4) for r in mine]
        summary[mode] = entry
    return summary


if __name__ == "__main__":
    sys.path.insert(0, str(REPO / "src"))
    main()
