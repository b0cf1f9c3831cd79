"""Registries from the user's side: --kd_loss / --layer_loss specs, and a method, a divergence and a layer loss
registered in the user's own module (outside the package) and used from the CLI with --plugins."""

from __future__ import annotations

import json
import textwrap

import pytest

import tiny
from ted.cli.main import main

PLUGIN = textwrap.dedent(
    """
    from ted.method.divergences import DIVERGENCES, LAYER_LOSSES, forward_kl
    from ted.method.recipes import FILTERS, METHODS, Method

    CALLS = {"div": 0, "layer": 0}

    @DIVERGENCES.register("doubled_kl")
    def doubled_kl(student_logits, teacher_logits, temperature, mask=None, *, factor: float = 2.0):
        CALLS["div"] += 1
        return factor * forward_kl(student_logits, teacher_logits, temperature, mask)

    @LAYER_LOSSES.register("l1")
    def l1(student_state, teacher_state, mask=None):
        CALLS["layer"] += 1
        diff = (student_state.float() - teacher_state.detach().float()).abs().mean(-1)
        if mask is None:
            return diff.mean()
        weights = mask.to(diff.dtype)
        return (diff * weights).sum() / weights.sum().clamp_min(1.0)

    METHODS.register("ted_l1")(Method(FILTERS, kd_loss="doubled_kl:3", layer_loss="l1", description="TED, L1"))
    """
)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("extend")
    tok = tiny.build_tokenizer()
    return {
        "root": root,
        "data": tiny.write_data(root / "data", n_train=16, n_dev=8),
        "teacher": tiny.write_stage1_model(root / "t", tok, layers=2, filter_layers=[0, 1], interval=1, seed=1),
        "student": tiny.write_stage1_model(root / "s", tok, layers=2, filter_layers=[0, 1], interval=1, seed=2),
    }


def distill(assets, out, *extra) -> list[str]:
    return [
        "distill", "--model_name_or_path", str(assets["student"]), "--teacher_model_name_or_path",
        str(assets["teacher"]), "--filter_output_dim", "16", "--kl_alpha", "1", "--mse_alpha", "10",
        "--hidden_dropout_prob", "0", "--attention_probs_dropout_prob", "0", "--output_dir", str(out), *extra,
        *tiny.train_flags(*assets["data"]),
    ]  # fmt: skip


def first_log(folder) -> dict:
    return next(e for e in json.loads((folder / "log_history.json").read_text()) if "loss_kl" in e)


def test_kd_and_layer_loss_specs_change_the_terms_and_are_recorded(assets, tmp_path):
    assert main(distill(assets, tmp_path / "default")) == 0
    assert main(distill(assets, tmp_path / "jsd0", "--kd_loss", "jsd:0")) == 0  # beta 0 is forward KL
    assert main(distill(assets, tmp_path / "other", "--kd_loss", "tvd", "--layer_loss", "cosine")) == 0
    default, jsd0, other = (first_log(tmp_path / n) for n in ("default", "jsd0", "other"))
    assert jsd0["loss_kl"] == pytest.approx(default["loss_kl"], rel=1e-6)
    assert other["loss_kl"] != pytest.approx(default["loss_kl"], rel=1e-3)
    assert other["loss_mse"] != pytest.approx(default["loss_mse"], rel=1e-3)
    args = json.loads((tmp_path / "other" / "ted_stage.json").read_text())["args"]
    assert (args["kd_loss"], args["layer_loss"]) == ("tvd", "cosine")
    assert json.loads((tmp_path / "default" / "ted_stage.json").read_text())["args"]["kd_loss"] == "forward_kl"


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        (["--kd_loss", "jds"], "did you mean 'jsd'"),
        (["--kd_loss", "jsd:1.5"], "jsd"),
        (["--layer_loss", "msee"], "did you mean 'mse'"),
        (["--method", "ted_l1"], "Unknown --method 'ted_l1'"),  # not registered without its plugin
        (["--plugins", "no_such_module_xyz"], "cannot import 'no_such_module_xyz'"),
    ],
)
def test_bad_specs_and_plugins_are_one_line_errors(assets, tmp_path, capsys, flags, fragment):
    out = tmp_path / "bad"
    assert main(distill(assets, out, *flags)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and fragment in err and "Traceback" not in err, err
    assert not out.exists() and not out.with_name("bad.incomplete").exists()


def test_a_method_registered_outside_the_package_runs_from_the_cli(assets, tmp_path, monkeypatch):
    plugin_dir = tmp_path / "user_code"
    plugin_dir.mkdir()
    (plugin_dir / "my_ted_plugin.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(plugin_dir))
    out = tmp_path / "mine"
    assert main(distill(assets, out, "--plugins", "my_ted_plugin", "--method", "ted_l1")) == 0
    import my_ted_plugin

    assert my_ted_plugin.CALLS["div"] > 0 and my_ted_plugin.CALLS["layer"] > 0  # the user's functions ran
    stage = json.loads((out / "ted_stage.json").read_text())
    assert stage["method"] == "ted_l1"
    assert (stage["args"]["kd_loss"], stage["args"]["layer_loss"]) == ("doubled_kl:3", "l1")
    # The user's doubled KL (factor 3) is 3x the built-in KL of the same first batch.
    assert main(distill(assets, tmp_path / "builtin")) == 0
    assert first_log(out)["loss_kl"] == pytest.approx(3 * first_log(tmp_path / "builtin")["loss_kl"], rel=1e-5)


def test_the_doctor_checks_a_registered_method_by_its_terms(assets, tmp_path, monkeypatch):
    # ted_l1 matches Stage I filters like TED, so the doctor loads them and reports a layer term (it once checked
    # every method not named "ted" or "lwd" as if it were KD).
    plugin_dir = tmp_path / "user_code"
    plugin_dir.mkdir()
    (plugin_dir / "my_ted_plugin.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(plugin_dir))
    report = tmp_path / "doctor.json"
    args = ["doctor", *distill(assets, tmp_path / "unused", "--plugins", "my_ted_plugin", "--method", "ted_l1")[1:]]
    main([*args, "--json", str(report)])
    terms = json.loads(report.read_text())["initial_terms"]
    assert any("mse" in name or "layer" in name for name in terms), terms
