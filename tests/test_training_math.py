"""Training mechanics that the loss formulas alone do not show: gradient accumulation, temperatures other
than 2, label smoothing and gradient checkpointing through the stages."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy.special import log_softmax as np_log_softmax
from scipy.special import rel_entr

import tiny
from ted.cli.main import main
from ted.method import losses

NO_DROPOUT = ["--hidden_dropout_prob", "0", "--attention_probs_dropout_prob", "0"]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("math")
    tok = tiny.build_tokenizer()
    return {
        "data": tiny.write_data(root / "data", n_train=16, n_dev=8),
        "teacher": tiny.write_stage1_model(root / "t", tok, layers=2, filter_layers=[0, 1], interval=1, seed=1),
        "student": tiny.write_stage1_model(root / "s", tok, layers=2, filter_layers=[0, 1], interval=1, seed=2),
    }


def run(argv) -> None:
    assert main([str(a) for a in argv]) == 0


def train_loss(folder) -> float:
    return json.loads((folder / "train_results.json").read_text())["train_loss"]


# The Trainer divides each micro-batch loss by gradient_accumulation_steps because our wrapper modules are
# declared not to take loss kwargs (TedTrainer.model_accepts_loss_kwargs = False): every objective returns a
# batch mean, so 2 x 4 examples must give the same update as 8. The layer MSE over real tokens is a mean per
# micro-batch over *its* tokens, so for TED the check pads every row to one length (--pad_to_max_length)
# and counts every position (--paper_compat), where the per-micro-batch means are equal-weighted too.
CASES = {
    "finetune": ["finetune", *NO_DROPOUT],
    "kd": ["distill", "--method", "kd", "--kl_alpha", "3", "--temperature", "3", *NO_DROPOUT],
    "ted": [
        "distill",
        "--method",
        "ted",
        "--kl_alpha",
        "1",
        "--mse_alpha",
        "10",
        "--filter_output_dim",
        "16",
        "--pad_to_max_length",
        "true",
        "--paper_compat",
        *NO_DROPOUT,
    ],
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_accumulating_two_batches_of_four_equals_one_batch_of_eight(assets, tmp_path, case):
    train, dev = assets["data"]
    command = CASES[case]
    models = ["--model_name_or_path", assets["student"]]
    if command[0] == "distill":
        models += ["--teacher_model_name_or_path", assets["teacher"]]
    outputs = {}
    for name, batch, accumulation in (("b8", 8, 1), ("b4x2", 4, 2)):
        out = tmp_path / name
        # Plain SGD: the update is proportional to the gradient, so a wrongly scaled accumulated gradient shows
        # in the weights (Adam would normalise the scale away and amplify rounding noise where gradients are ~0).
        flags = tiny.train_flags(
            train,
            dev,
            per_device_train_batch_size=batch,
            gradient_accumulation_steps=accumulation,
            optim="sgd",
            learning_rate=0.5,
            num_train_epochs=1,
        )
        run([*command, *models, "--output_dir", out, *flags])
        outputs[name] = out
    big, small = (tiny.state_dict_of(outputs[n]) for n in ("b8", "b4x2"))
    start = tiny.state_dict_of(assets["student"])
    moved = 0
    for key, value in big.items():
        torch.testing.assert_close(small[key], value, rtol=1e-4, atol=1e-6)
        moved += key in start and not torch.equal(start[key], value)
    assert moved > 0  # two optimizer steps did change the weights: the comparison is not vacuous
    assert train_loss(outputs["b4x2"]) == pytest.approx(train_loss(outputs["b8"]), rel=1e-5)


def reference_kd(student: np.ndarray, teacher: np.ndarray, temperature: float) -> float:
    """T^2 * mean over rows of KL(softmax(t/T) || softmax(s/T)), in float64 with scipy."""
    p_t = np.exp(np_log_softmax(teacher / temperature, axis=-1))
    p_s = np.exp(np_log_softmax(student / temperature, axis=-1))
    return float(rel_entr(p_t, p_s).sum(-1).mean() * temperature**2)


@pytest.mark.parametrize("temperature", [1.0, 3.0, 0.5])
def test_kl_scaling_at_temperatures_other_than_two(temperature):
    # At T = 2, T^2 == 2T: a wrong scale would go unnoticed there.
    gen = torch.Generator().manual_seed(0)
    s, t = torch.randn(5, 4, generator=gen), torch.randn(5, 4, generator=gen)
    value = losses.kl_divergence(s, t, temperature)
    assert value.item() == pytest.approx(reference_kd(s.double().numpy(), t.double().numpy(), temperature), rel=1e-5)


def test_masked_kl_at_temperature_three_ignores_masked_positions():
    gen = torch.Generator().manual_seed(1)
    s, t = torch.randn(2, 6, generator=gen), torch.randn(2, 6, generator=gen)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    value = losses.kl_divergence(s, t, 3.0, mask)
    rows = [
        reference_kd(s[i, mask[i] == 1].double().numpy()[None], t[i, mask[i] == 1].double().numpy()[None], 3.0)
        for i in range(2)
    ]
    assert value.item() == pytest.approx(sum(rows) / 2, rel=1e-5)


def test_label_smoothing_matches_the_trainers_definition():
    gen = torch.Generator().manual_seed(2)
    logits, labels = torch.randn(6, 3, generator=gen), torch.tensor([0, 2, 1, 1, -100, 0])
    eps = 0.1
    value = losses.classification_loss(logits, labels, label_smoothing=eps)
    # transformers' LabelSmoother: (1 - eps) * NLL + eps * mean over classes of -log p, over kept rows.
    from transformers.trainer_pt_utils import LabelSmoother

    class Output(dict):
        pass

    expected = LabelSmoother(epsilon=eps)(Output(logits=logits), labels)
    assert value.item() == pytest.approx(expected.item(), rel=1e-5)
    assert value.item() != pytest.approx(losses.classification_loss(logits, labels).item(), rel=1e-3)


def test_label_smoothing_reaches_the_stage_loss(assets, tmp_path):
    train, dev = assets["data"]
    first = {}
    for eps in ("0", "0.2"):
        out = tmp_path / f"ls{eps}"
        run(
            [
                "finetune",
                "--model_name_or_path",
                assets["student"],
                "--output_dir",
                out,
                *NO_DROPOUT,
                *tiny.train_flags(train, dev, label_smoothing_factor=eps),
            ]
        )
        first[eps] = json.loads((out / "log_history.json").read_text())[0]["loss"]
    assert first["0.2"] != pytest.approx(first["0"], rel=1e-4)  # the factor is no longer silently ignored


def test_label_smoothing_is_refused_for_regression(tmp_path, capsys):
    tok = tiny.build_tokenizer()
    model = tiny.write_model(tmp_path / "m", tok)
    train, dev = tiny.write_data(tmp_path / "reg", regression=True)
    out = tmp_path / "out"
    code = main(
        [
            "finetune",
            "--model_name_or_path",
            str(model),
            "--output_dir",
            str(out),
            *tiny.train_flags(train, dev, label_smoothing_factor=0.1),
        ]
    )
    assert code == 2
    assert "label_smoothing_factor" in capsys.readouterr().err
    assert not out.exists()


def test_gradient_checkpointing_in_stage_two_matches_without(assets, tmp_path):
    train, dev = assets["data"]
    base = [
        "distill",
        "--model_name_or_path",
        assets["student"],
        "--teacher_model_name_or_path",
        assets["teacher"],
        "--kl_alpha",
        "1",
        "--mse_alpha",
        "10",
        "--filter_output_dim",
        "16",
        *NO_DROPOUT,
    ]
    run([*base, "--output_dir", tmp_path / "plain", *tiny.train_flags(train, dev)])
    run([*base, "--output_dir", tmp_path / "ckpt", "--gradient_checkpointing", "true", *tiny.train_flags(train, dev)])
    plain, ckpt = tiny.state_dict_of(tmp_path / "plain"), tiny.state_dict_of(tmp_path / "ckpt")
    for key, value in plain.items():
        torch.testing.assert_close(ckpt[key], value, rtol=1e-4, atol=1e-6)


def test_gradient_checkpointing_is_ignored_by_stage_one(tmp_path, caplog):
    tok = tiny.build_tokenizer()
    model = tiny.write_model(tmp_path / "m", tok, head_labels=["neg", "pos"])
    train, dev = tiny.write_data(tmp_path / "d")
    run(
        [
            "learn-filters",
            "--model_name_or_path",
            model,
            "--output_dir",
            tmp_path / "s1",
            "--gradient_checkpointing",
            "true",
            *tiny.train_flags(train, dev),
        ]
    )
    assert "no effect on Stage I" in caplog.text
