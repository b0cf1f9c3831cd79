"""`--torch_compile` on Stage II: the compiled student trains to the same dev loss as the eager one, and its
stage folder is written with plain parameter names (no `_orig_mod.` prefix), so every later stage reads it.

Needs a C++ compiler (torch inductor on CPU); ~20 s of compilation on a 2-core CPU.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

import tiny
from ted.cli.main import main
from tiny import one_thread  # noqa: F401  (module fixture)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.skipif(
        not (shutil.which("c++") or shutil.which("g++") or shutil.which("gcc")),
        reason="torch.compile on CPU needs a C++ compiler (none found on PATH)",
    ),
]


def test_compiled_distill_matches_eager(tmp_path, monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    tok = tiny.build_tokenizer()
    train, dev = tiny.write_data(tmp_path / "data", n_train=32, n_dev=16)
    teacher = tiny.write_stage1_model(tmp_path / "t", tok, 4, [1, 3], 2, seed=0)
    student = tiny.write_stage1_model(tmp_path / "s", tok, 2, [0, 1], 1, seed=1)
    common = [
        "distill",
        "--teacher_model_name_or_path",
        str(teacher),
        "--model_name_or_path",
        str(student),
        "--teacher_filter_interval",
        "2",
        "--filter_output_dim",
        "16",
        "--kl_alpha",
        "1",
        "--mse_alpha",
        "10",
        "--classifier_dropout",
        "0",
        *tiny.train_flags(train, dev, num_train_epochs="1", learning_rate="5e-3"),
    ]
    assert main(common + ["--output_dir", str(tmp_path / "eager")]) == 0
    assert main(common + ["--torch_compile", "true", "--output_dir", str(tmp_path / "compiled")]) == 0

    eager = json.loads((tmp_path / "eager" / "eval_results.json").read_text())
    compiled = json.loads((tmp_path / "compiled" / "eval_results.json").read_text())
    assert compiled["eval_loss"] == pytest.approx(eager["eval_loss"], abs=1e-4)
    stage = json.loads((tmp_path / "compiled" / "ted_stage.json").read_text())
    assert stage["args"]["torch_compile"] is True
    weights = tiny.state_dict_of(tmp_path / "compiled")
    assert not any("_orig_mod" in key for key in weights)
    reference = tiny.state_dict_of(tmp_path / "eager")
    assert weights.keys() == reference.keys()
    assert all(torch.allclose(weights[k], reference[k], atol=1e-4) for k in weights)
    assert any(not torch.equal(weights[k], tiny.state_dict_of(student)[k]) for k in weights)  # it trained
    filters = {name: load_file(str(tmp_path / name / "filters.safetensors")) for name in ("eager", "compiled")}
    assert filters["compiled"].keys() == filters["eager"].keys()
