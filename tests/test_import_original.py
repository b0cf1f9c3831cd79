"""`ted import-original`: checkpoints in the layout of the paper's original code -> ted stage folders.

The checkpoints are written here in that layout (model_type ted-deberta-v2, filters inside the
layers, Stage I heads at filter_pooler.* / filter_head.*) from tiny random DeBERTa-v2 models; the
shared golden DeBERTa weights and filters are also repacked that way when available.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForQuestionAnswering, AutoModelForSequenceClassification

import tiny
from helpers import SHARED
from ted.cli.main import main
from ted.errors import TedInputError
from ted.method.filters import TaskAwareFilters, select_layers
from ted.method.heads import StageOneHeads
from ted.stages.import_original import import_original
from tiny import one_thread  # noqa: F401  (module fixture)

pytestmark = pytest.mark.usefixtures("one_thread")
GOLDEN = SHARED / "golden" / "ted-original"


def write_original(
    folder: Path,
    tok,
    layers: int,
    interval: int = 1,
    out_dim: int | None = None,
    nonlinear: bool = False,
    heads: bool = True,
    qa: bool = False,
    bin_format: bool = False,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """A checkpoint as the original code saves it; returns its full state dict."""
    from transformers import DebertaV2ForQuestionAnswering, DebertaV2ForSequenceClassification

    torch.manual_seed(seed)
    config = tiny.model_config("deberta-v2", len(tok), layers, tok.pad_token_id)
    model = (DebertaV2ForQuestionAnswering if qa else DebertaV2ForSequenceClassification)(config)
    state = {k: v.clone().contiguous() for k, v in model.state_dict().items()}
    hidden, out = config.hidden_size, out_dim or config.hidden_size
    chosen = select_layers(layers, interval)
    for i in chosen:
        prefix = f"deberta.encoder.layer.{i}.filter."
        shapes = {"0": (hidden, hidden), "2": (out, hidden)} if nonlinear else {"": (out, hidden)}
        for sub, shape in shapes.items():
            name = prefix + (sub + "." if sub else "")
            state[name + "weight"], state[name + "bias"] = torch.randn(shape), torch.randn(shape[0])
    for k in range(len(chosen) if heads else 0):
        if not qa:
            state[f"filter_pooler.{k}.dense.weight"], state[f"filter_pooler.{k}.dense.bias"] = (
                torch.randn(out, out),
                torch.randn(out),
            )
        n_out = 2 if qa else config.num_labels
        state[f"filter_head.{k}.weight"], state[f"filter_head.{k}.bias"] = torch.randn(n_out, out), torch.randn(n_out)
    cfg = config.to_dict()
    cfg.update(
        model_type="ted-deberta-v2",
        train_filters=heads,
        filter_interval=interval,
        filter_output_dim=out_dim,
        filter_nonlinear=nonlinear,
        filter_disabled=False,
        transformers_version="4.28.0",
        architectures=["TEDDebertaV2ForQuestionAnswering" if qa else "TEDDebertaV2ForSequenceClassification"],
    )
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    if bin_format:
        torch.save(state, folder / "pytorch_model.bin")
    else:
        save_file(state, str(folder / "model.safetensors"))
    tok.save_pretrained(folder)
    return state


def test_stage1_checkpoints_import_and_distill(tmp_path):
    """Teacher (4 layers, interval 2) and student (2 layers, out dim 32) Stage I -> import -> ted distill."""
    tok = tiny.build_tokenizer()
    t_state = write_original(tmp_path / "orig_t", tok, layers=4, interval=2, seed=0)
    s_state = write_original(tmp_path / "orig_s", tok, layers=2, interval=1, out_dim=32, seed=1)
    assert main(["import-original", str(tmp_path / "orig_t"), "--output_dir", str(tmp_path / "t1")]) == 0
    import_original(str(tmp_path / "orig_s"), str(tmp_path / "s1"), task_name="custom")

    t1 = tmp_path / "t1"
    info = json.loads((t1 / "ted_stage.json").read_text())
    assert info["stage"] == "learn_filters" and info["lineage"]["imported_from"] == str((tmp_path / "orig_t").resolve())
    config = json.loads((t1 / "config.json").read_text())
    assert config["model_type"] == "deberta-v2" and config["architectures"] == ["DebertaV2ForSequenceClassification"]
    assert not {"train_filters", "filter_interval"} & set(config)
    weights = load_file(str(t1 / "model.safetensors"))
    assert not any("filter" in k for k in weights)
    assert all(torch.equal(weights[k], t_state[k]) for k in weights)
    filters = TaskAwareFilters.load(t1)
    assert filters.config.layers == [1, 3] and filters.config.interval == 2 and not filters.config.nonlinear
    assert torch.equal(filters.filters["3"].weight, t_state["deberta.encoder.layer.3.filter.weight"])
    heads = StageOneHeads.load(t1)
    assert heads.config.num_heads == 2 and heads.config.kind == "classification"
    assert torch.equal(heads.filter_head[1].weight, t_state["filter_head.1.weight"])
    assert torch.equal(heads.filter_pooler[0].dense.bias, t_state["filter_pooler.0.dense.bias"])
    assert (t1 / "tokenizer.json").is_file()
    # A stock model, predicting exactly like the original weights.
    model = AutoModelForSequenceClassification.from_pretrained(t1).eval()
    assert torch.equal(model.classifier.weight, t_state["classifier.weight"])
    assert json.loads((tmp_path / "s1" / "filters.json").read_text())["output_dim"] == 32
    assert torch.equal(
        load_file(str(tmp_path / "s1" / "filters.safetensors"))["filters.1.bias"],
        s_state["deberta.encoder.layer.1.filter.bias"],
    )

    train, dev = tiny.write_data(tmp_path / "data", n_train=16, n_dev=8)
    out = tmp_path / "ted"
    assert (
        main(
            [
                "distill",
                "--model_name_or_path",
                str(tmp_path / "s1"),
                "--teacher_model_name_or_path",
                str(t1),
                "--teacher_filter_interval",
                "2",
                "--filter_interval",
                "1",
                "--kl_alpha",
                "1",
                "--mse_alpha",
                "10",
                "--output_dir",
                str(out),
                *tiny.train_flags(train, dev),
            ]
        )
        == 0
    )
    assert json.loads((out / "ted_stage.json").read_text())["lineage"]["layer_pairs"] == [[0, 1], [1, 3]]
    assert (out / "filters.safetensors").is_file()


def test_nonlinear_qa_pytorch_bin_without_heads(tmp_path):
    tok = tiny.build_tokenizer()
    state = write_original(tmp_path / "orig", tok, layers=2, nonlinear=True, heads=False, qa=True, bin_format=True)
    out = import_original(str(tmp_path / "orig"), str(tmp_path / "out"), method="ted")
    info = json.loads((out / "ted_stage.json").read_text())
    assert (info["stage"], info["method"], info["task"]["head"]) == ("distill", "ted", "span")
    filters = TaskAwareFilters.load(out)
    assert filters.config.nonlinear and filters.config.layers == [0, 1] and filters.config.output_dim == 32
    assert torch.equal(filters.filters["0"][2].weight, state["deberta.encoder.layer.0.filter.2.weight"])
    assert not (out / "stage1_heads.safetensors").exists()
    model = AutoModelForQuestionAnswering.from_pretrained(out)
    assert torch.equal(model.qa_outputs.weight, state["qa_outputs.weight"])


def test_bad_checkpoints_are_refused(tmp_path):
    tok = tiny.build_tokenizer()
    plain = tiny.write_model(tmp_path / "bert", tok, "bert", layers=2)
    with pytest.raises(TedInputError, match="not a checkpoint of the original TED code"):
        import_original(str(plain), str(tmp_path / "o1"))
    assert main(["import-original", str(plain), "--output_dir", str(tmp_path / "o1")]) == 2
    with pytest.raises(TedInputError, match="not a folder"):
        import_original(str(tmp_path / "missing"), str(tmp_path / "o2"))
    write_original(tmp_path / "orig", tok, layers=2)
    (tmp_path / "orig" / "model.safetensors").unlink()
    with pytest.raises(TedInputError, match="no weights"):
        import_original(str(tmp_path / "orig"), str(tmp_path / "o3"))
    # Filters on layers that filter_interval does not select: inconsistent, refused.
    write_original(tmp_path / "odd", tok, layers=2, interval=1)
    cfg = json.loads((tmp_path / "odd" / "config.json").read_text())
    (tmp_path / "odd" / "config.json").write_text(json.dumps({**cfg, "filter_interval": 2}))
    with pytest.raises(TedInputError, match="inconsistent"):
        import_original(str(tmp_path / "odd"), str(tmp_path / "o4"))
    assert not (tmp_path / "o4").exists()
    (tmp_path / "o5").mkdir()
    (tmp_path / "o5" / "x").write_text("x")
    write_original(tmp_path / "ok", tok, layers=2)
    with pytest.raises(TedInputError, match="already exists"):
        import_original(str(tmp_path / "ok"), str(tmp_path / "o5"))


@pytest.mark.skipif(not (GOLDEN / "models" / "teacher-cls").is_dir(), reason=f"golden data not found at {GOLDEN}")
def test_golden_weights_repacked_in_the_original_layout(tmp_path):
    """The golden teacher (4 layers) + its interval-2, 64-wide Stage I filters and heads, as the original saves them."""
    model = load_file(str(GOLDEN / "models" / "teacher-cls" / "model.safetensors"))
    extra = load_file(str(GOLDEN / "filters" / "cls-teacher-i2-d64-linear.safetensors"))
    state = dict(model)
    for key, tensor in extra.items():
        if key.startswith("filters."):
            _, layer, rest = key.split(".", 2)
            state[f"deberta.encoder.layer.{layer}.filter.{rest}"] = tensor
        else:
            state[key] = tensor
    cfg = json.loads((GOLDEN / "models" / "teacher-cls" / "config.json").read_text())
    cfg.update(
        model_type="ted-deberta-v2",
        architectures=["TEDDebertaV2ForSequenceClassification"],
        train_filters=True,
        filter_interval=2,
        filter_output_dim=64,
        filter_nonlinear=False,
        filter_disabled=False,
    )
    orig = tmp_path / "orig"
    orig.mkdir()
    (orig / "config.json").write_text(json.dumps(cfg))
    save_file(state, str(orig / "model.safetensors"))
    out = import_original(str(orig), str(tmp_path / "out"))
    filters, heads = load_file(str(out / "filters.safetensors")), load_file(str(out / "stage1_heads.safetensors"))
    assert set(filters) | set(heads) == set(extra)
    assert all(torch.equal({**filters, **heads}[k], extra[k]) for k in extra)
    weights = load_file(str(out / "model.safetensors"))
    assert set(weights) == set(model) and all(torch.equal(weights[k], model[k]) for k in model)
    assert json.loads((out / "filters.json").read_text())["layers"] == [1, 3]
