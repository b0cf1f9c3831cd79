"""Model folders and model-dependent options: each mistake is one clear line (exit 2) before any weights load."""

from __future__ import annotations

import json

import pytest

import tiny
from ted.cli.main import main
from ted.errors import TedInputError
from ted.stages.distill import check_deepspeed_stage
from ted.stages.models import check_model_source, position_limit


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    tok = tiny.build_tokenizer()
    return {
        "data": tiny.write_data(root / "data", n_train=8, n_dev=8),
        "model": tiny.write_model(root / "m", tok, head_labels=["neg", "pos"]),
        "student": tiny.write_stage1_model(root / "s", tok, layers=2, filter_layers=[0, 1], interval=1, seed=2),
        "teacher": tiny.write_model(root / "t", tok, layers=2, head_labels=["neg", "pos"]),
    }


def refused(capsys, argv, *needles) -> str:
    """Runs the CLI, expects exit 2 with one line on stderr holding every needle, and no traceback."""
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


def finetune(assets, out, *extra):
    return [
        "finetune",
        "--model_name_or_path",
        assets["model"],
        "--output_dir",
        out,
        *extra,
        *tiny.train_flags(*assets["data"]),
    ]


def test_missing_local_model_folder_is_named(assets, tmp_path, capsys):
    missing = tmp_path / "runs" / "rte" / "teacher"
    refused(
        capsys,
        [
            "finetune",
            "--model_name_or_path",
            missing,
            "--output_dir",
            tmp_path / "out",
            *tiny.train_flags(*assets["data"]),
        ],
        f"Model folder {missing} does not exist",
    )
    assert not (tmp_path / "out").exists()


def test_folder_without_config_is_not_a_model(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(TedInputError, match="no config.json"):
        check_model_source(str(tmp_path / "empty"))


def test_truncated_weights_file_is_named_with_its_size(assets, tmp_path, capsys):
    import shutil

    damaged = tmp_path / "damaged"
    shutil.copytree(assets["model"], damaged)
    weights = damaged / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    refused(
        capsys,
        finetune({**assets, "model": damaged}, tmp_path / "out"),
        f"Weights file {weights} is damaged (1,000 bytes",
    )
    assert not (tmp_path / "out").exists()


def test_max_seq_length_beyond_the_position_embeddings_is_refused(assets, tmp_path, capsys):
    # The tiny BERT has 64 positions: 100 tokens would crash on a long text and pass on short ones.
    out = tmp_path / "out"
    refused(capsys, [*finetune(assets, out), "--max_seq_length", "100"], "--max_seq_length 100", "64 tokens")
    assert not out.exists() and not out.with_name("out.incomplete").exists()


def test_default_max_seq_length_is_checked_too(assets, tmp_path, capsys):
    argv = [
        "finetune",
        "--model_name_or_path",
        assets["model"],
        "--output_dir",
        tmp_path / "out",
        "--train_file",
        assets["data"][0],
        "--validation_file",
        assets["data"][1],
    ]
    refused(capsys, argv, "--max_seq_length 128")  # the default for sentence tasks


def test_position_limits_by_family():
    from transformers import BertConfig, DebertaV2Config, RobertaConfig

    assert position_limit(BertConfig(max_position_embeddings=512)) == 512
    assert position_limit(RobertaConfig(max_position_embeddings=514, pad_token_id=1)) == 512
    assert position_limit(DebertaV2Config(position_biased_input=False)) is None  # relative positions only
    assert position_limit(BertConfig(position_embedding_type="relative_key")) is None


def test_dropout_option_the_model_does_not_have_is_refused(assets, tmp_path, capsys):
    from transformers import DistilBertConfig

    from ted.stages.models import dropout_key

    with pytest.raises(TedInputError, match="hidden_dropout_prob.*'attention_dropout'.*'dropout'"):
        dropout_key(DistilBertConfig(), "hidden_dropout_prob", "distil")
    assert dropout_key(DistilBertConfig(), "attention_dropout", "distil") == "attention_dropout"
    from transformers import DebertaV2Config

    assert dropout_key(DebertaV2Config(), "classifier_dropout", "deberta") == "cls_dropout"


def test_lwd_refuses_a_projector_width_other_than_the_teachers(assets, tmp_path, capsys):
    argv = [
        "distill",
        "--method",
        "lwd",
        "--mse_alpha",
        "1",
        "--filter_disabled",
        "--model_name_or_path",
        assets["student"],
        "--teacher_model_name_or_path",
        assets["teacher"],
        "--filter_output_dim",
        "8",
        "--output_dir",
        tmp_path / "lwd",
        *tiny.train_flags(*assets["data"]),
    ]
    refused(capsys, argv, "--filter_output_dim 8", f"({tiny.HIDDEN} wide)")
    assert not (tmp_path / "lwd").exists()


@pytest.mark.parametrize("config", [{"zero_optimization": {"stage": 3}}, '{"zero_optimization": {"stage": 3}}'])
def test_deepspeed_zero3_is_refused_for_stage_two(config):
    with pytest.raises(TedInputError, match="ZeRO-3"):
        check_deepspeed_stage(config)


def test_deepspeed_zero2_file_passes(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"zero_optimization": {"stage": 2}}))
    check_deepspeed_stage(str(path))
    check_deepspeed_stage(None)
