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


def load_run():
    """benchmarks/run.py as a module (it puts its folder on sys.path for its parts)."""
    spec = importlib.util.spec_from_file_location("ted_benchmark_run", RUN)
    run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run)
    return run


@requires_shared
@pytest.mark.usefixtures("one_thread")
def test_quick_benchmark_prints_every_key(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    run = load_run()
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


LM_SHARED = (SHARED / "models" / "smollm2-135m-instruct-q4_1", SHARED / "data" / "lm" / "wikitext-2" / "valid.txt")


@pytest.mark.slow
@pytest.mark.skipif(not all(p.exists() for p in LM_SHARED), reason=f"shared LM assets not found in {SHARED}")
@pytest.mark.usefixtures("one_thread")
def test_quick_causal_lm_benchmark(tmp_path, capsys, monkeypatch):
    """--kind causal_lm --quick: a tiny Llama pair with the SmolLM2 vocabulary on 4 WikiText blocks of 128 tokens;
    stdout is one JSON object with positive ratios, and the chunked KD term equals the naive one on real logits."""
    monkeypatch.setenv("TQDM_DISABLE", "1")
    out = tmp_path / "bench.json"
    printed = load_run().main(["--kind", "causal_lm", "--quick", "--threads", "1", "--json", str(out)])
    assert json.loads(capsys.readouterr().out) == printed == json.loads(out.read_text())
    ratios = ("stage2_overhead_ratio", "kd_overhead_ratio", "lwd_overhead_ratio", "chunked_kd_memory_ratio",
              "chunked_kd_beyond_gradient_ratio", "chunked_kd_time_ratio",
              "chunked_kd_memory_ratio_malloc_trimmed")  # fmt: skip
    for key in ratios:
        assert isinstance(printed[key], float) and printed[key] > 0, key
    assert set(printed["cpu_time_overhead_ratios"]) == {"ted", "kd", "lwd"}
    assert all(v > 0 for v in printed["cpu_time_overhead_ratios"].values())
    configs = {"finetune", "teacher_forward", "ted", "kd", "lwd"}
    assert set(printed["step_ms_median"]) == set(printed["peak_memory_mb"]) == configs
    assert all(v > 0 for v in printed["step_ms_median"].values())
    # A TED / KD / LWD step does at least what a plain student step does, and more.
    assert min(printed["step_ms_median"][m] for m in ("ted", "kd", "lwd")) > printed["step_ms_median"]["finetune"]
    assert printed["batch"] == {"size": 4, "seq_len": 128, "real_tokens": 4 * 128}
    assert printed["layers"] == {"student": [0, 1], "teacher": [1, 3], "filter_output_dim": 32}
    assert printed["pair"]["layers"] == [4, 2] and printed["pair"]["vocab"] == 49_152
    kd = printed["kd_term"]
    # Packed blocks score every token but the first: position t predicts token t + 1, so 127 positions a row.
    assert kd["shape"] == [4, 128, 49_152] and kd["scored_positions"] == 4 * 127
    assert kd["relative_value_difference"] < 1e-5 and kd["chunked"]["chunk_tokens"] == (1 << 22) // 49_152
    assert kd["dense"]["inputs_mb"] == 2 * 4 * 128 * 49_152 * 4 / 2**20  # float32 student + teacher logits
    assert printed["config"]["mode"] == "quick" and printed["kind"] == "causal_lm"


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--kind", "causal_lm", "--task", "rte"], "--task: only with --kind encoder"),
        (["--block_size", "64", "--batch_size", "2"], "--block_size, --batch_size: only with --kind causal_lm"),
    ],
)
def test_options_of_the_other_kind_are_refused(argv, words, capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_run().parse_args(argv)
    assert exit_info.value.code == 2 and words in capsys.readouterr().err


@pytest.mark.skipif(not all(p.exists() for p in LM_SHARED), reason=f"shared LM assets not found in {SHARED}")
def test_packing_memory_benchmark(tmp_path, capsys, monkeypatch):
    """benchmarks/packing_memory.py on one copy of WikiText-2 valid: the same blocks in memory, in the cache and
    re-opened from it, and a positive memory ratio."""
    monkeypatch.syspath_prepend(str(RUN.parent))  # its helpers, as when it runs as a script
    spec = importlib.util.spec_from_file_location("ted_packing_memory", RUN.with_name("packing_memory.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    printed = bench.main(["--copies", "1", "--json", str(tmp_path / "p.json")])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == printed
    assert printed["in_memory"]["blocks"] == printed["cached"]["blocks"] == printed["reopen"]["blocks"] > 200
    assert [printed[m]["on_disk"] for m in ("in_memory", "cached", "reopen")] == [False, True, True]
    assert isinstance(printed["memory_ratio_in_memory_over_cached"], float)
    assert printed["memory_ratio_in_memory_over_cached"] > 0
