"""`benchmarks/run.py --quick` end to end, with tiny models on the shared GLUE files: every key is there."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

import tiny
from helpers import SHARED, requires_shared
from tiny import one_thread  # noqa: F401  (module fixture)

RUN = Path(__file__).resolve().parents[1] / "benchmarks" / "run.py"
KEYS = (
    "stage2_overhead_ratio",
    "stage1_cache_speedup",
    "dynamic_padding_speedup",
    "samples_per_second",
    "peak_memory_mb",
    "environment",
)
CONFIGS = (
    "finetune",
    "teacher_forward",
    "ted",
    "kd",
    "lwd",
    "stage1_train_backbone",
    "stage1_eval_cache",
    "finetune_pad_to_max",
    "finetune_dynamic",
    "finetune_dynamic_grouped",
)


@requires_shared
@pytest.mark.usefixtures("one_thread")
def test_quick_benchmark_prints_every_key(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    spec = importlib.util.spec_from_file_location("ted_benchmark_run", RUN)
    run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run)
    tok = tiny.build_tokenizer()
    teacher = tiny.write_model(tmp_path / "t", tok, layers=4, seed=0)
    student = tiny.write_model(tmp_path / "s", tok, layers=2, seed=1)
    out = tmp_path / "bench.json"
    run.main(
        [
            "--quick",
            "--model_pair",
            str(teacher),
            str(student),
            "--data_dir",
            str(SHARED / "data" / "glue"),
            "--max_seq_length",
            str(tiny.MAX_LEN),
            "--json",
            str(out),
        ]
    )
    printed = json.loads(capsys.readouterr().out)  # stdout is exactly one JSON object
    assert printed == json.loads(out.read_text())
    for key in KEYS:
        assert key in printed, key
    assert set(CONFIGS) <= set(printed["samples_per_second"]) and set(CONFIGS) <= set(printed["peak_memory_mb"])
    assert all(v > 0 for v in printed["samples_per_second"].values())
    assert printed["config"]["mode"] == "quick" and "full run" in printed["targets_note"]
    assert printed["layers"] == {"student": [0, 1], "teacher": [1, 3], "filter_output_dim": tiny.HIDDEN}
    # The tiny models take 64 positions: the padded configuration pads to --max_seq_length 32 here.
    assert printed["padding"]["finetune_pad_to_max"]["mean_padded_length"] == tiny.MAX_LEN
    assert printed["padding"]["finetune_dynamic_grouped"]["mean_padded_length"] < tiny.MAX_LEN


def test_random_pair_has_the_papers_model_sizes():
    """benchmarks/random_pair.py: DeBERTaV3-base / -xsmall shapes (184M / 71M parameters with embeddings)."""
    import torch
    from transformers import AutoModel

    spec = importlib.util.spec_from_file_location("ted_random_pair", RUN.parent / "random_pair.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    configs = module.pair_configs("deberta-v3", pad_token_id=0)
    with torch.device("meta"):  # shapes only: no memory, no time
        sizes = {role: sum(p.numel() for p in AutoModel.from_config(c).parameters()) for role, c in configs.items()}
    assert sizes == {"teacher": 183_831_552, "student": 70_682_112}
    assert configs["teacher"].num_hidden_layers == configs["student"].num_hidden_layers == 12
