"""16-bit teacher cache against float32 on the MiniLM pair (RTE): Stage II TED loss terms and student weights
after N AdamW steps, every other input identical (docs/teacher-cache.md).

    OMP_NUM_THREADS=1 python benchmarks/teacher_cache_dtype.py      # shared assets: $TED_SHARED_DIR or ../shared
"""

from __future__ import annotations

import copy
import json
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TED_SHARED_DIR", REPO.parent / "shared"))
STEPS, BATCH, EXAMPLES = 12, 8, 64


def train_on_cache(dtype: str, setup: dict) -> dict:
    """STEPS AdamW steps of a dropout-free student on the cache stored in `dtype`; the losses and final weights."""
    import torch
    from transformers import DataCollatorWithPadding

    from ted.method import teacher_cache as tc
    from ted.method.objectives import DistillObjective, DistillWeights

    rows, train, teacher, layers = setup["rows"], setup["train"], setup["teacher"], setup["layers"]
    tmp = Path(tempfile.mkdtemp())
    plan = tc.plan_components(
        head="classification",
        teacher=teacher,
        need_logits=True,
        need_states=True,
        dataset=train,
        compute_dtype=None,
        store_dtype=dtype,
    )
    tc.build(tmp, plan, teacher, train, setup["tokenizer"], torch.device("cpu"))
    stores = {c.name: tc.Store(tmp / c.folder_name, c) for c in plan}
    collate = tc.CachedSignalCollator(DataCollatorWithPadding(setup["tokenizer"]), stores, flat_states=True)
    student = copy.deepcopy(setup["student"]).train()
    for module in student.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    optimizer = torch.optim.AdamW(student.parameters(), lr=5e-5)
    objective = DistillObjective("classification", tc.CachedTeacher("classification", layers), DistillWeights(20, 50))
    generator = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(STEPS):
        index = torch.randperm(len(rows), generator=generator)[:BATCH].tolist()
        total, terms, _ = objective(student, collate([rows[i] for i in index]))
        losses.append({"total": total.item(), "mse": terms["mse"].item(), "kl": terms["kl"].item()})
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
    return {"losses": losses, "weights": {k: v.detach().clone() for k, v in student.state_dict().items()}}


def main() -> dict:
    sys.path.insert(0, str(REPO / "src"))
    import torch

    from ted.method import teacher_cache as tc
    from ted.method.filters import new_filters, select_layers
    from ted.method.objectives import DistillStudent, Teacher
    from ted.settings.training_args import DataArguments
    from ted.stages.common import model_columns
    from ted.stages.models import config_for_task, load_task_model, load_tokenizer, num_layers
    from ted.tasks import load_task

    torch.manual_seed(0)
    t_path, s_path = str(SHARED / "models" / "all-MiniLM-L6-v2"), str(SHARED / "models" / "paraphrase-MiniLM-L3-v2")
    tokenizer = load_tokenizer(s_path)
    data_args = DataArguments(
        task_name="rte", data_dir=str(SHARED / "data" / "glue"), max_seq_length=128, max_train_samples=EXAMPLES
    )
    task, data = load_task(data_args, tokenizer)
    t_config, s_config = config_for_task(t_path, task), config_for_task(s_path, task)
    t_layers, s_layers = select_layers(num_layers(t_config), 2), select_layers(num_layers(s_config), 1)
    width = t_config.hidden_size
    teacher = Teacher(
        load_task_model(t_path, task), new_filters(t_config, t_layers, width, False, interval=2), t_layers, task.head
    )
    student = DistillStudent(load_task_model(s_path, task), new_filters(s_config, s_layers, width, False, interval=1))
    train = model_columns(data.train)
    train = train.add_column(tc.EXAMPLE_INDEX, list(range(len(train))))
    setup = {
        "rows": [train[i] for i in range(len(train))],
        "train": train,
        "teacher": teacher,
        "layers": t_layers,
        "student": student,
        "tokenizer": tokenizer,
    }
    runs = {dtype: train_on_cache(dtype, setup) for dtype in ("float32", "float16", "bfloat16")}
    reference = runs["float32"]
    report: dict = {"steps": STEPS, "batch": BATCH, "examples": len(train)}
    for dtype in ("float16", "bfloat16"):
        run = runs[dtype]
        pairs = list(zip(reference["losses"], run["losses"]))
        report[dtype] = {
            f"max_rel_diff_{key}": max(abs(a[key] - b[key]) / abs(a[key]) for a, b in pairs)
            for key in ("total", "mse", "kl")
        }
        report[dtype]["max_abs_weight_diff"] = max(
            (run["weights"][k] - v).abs().max().item() for k, v in reference["weights"].items() if v.is_floating_point()
        )
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
