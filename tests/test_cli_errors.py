"""The command-line and argument layer: help, --version, exact option names, --config files, the Python API's
coercion, and a clear one-line error (exit code 2) for every bad option value, before any model is loaded.

Bad values never reach a model: these tests pass model paths that do not exist, so a check that came too late
would fail with a different message (and would leave OUTPUT or OUTPUT.incomplete behind).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import ted
from ted.cli.main import COMMANDS, main
from ted.errors import TedInputError
from ted.settings import parse as arguments

MISSING = "/nonexistent/ted-model"


def run_bad(capsys, tmp_path, *argv) -> str:
    """Runs `ted ARGV --output_dir OUTPUT`; asserts exit 2, one line, no traceback, no output folder."""
    out = tmp_path / "OUTPUT"
    code = main([str(a) for a in argv] + ["--output_dir", str(out)])
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert code == 2, (code, captured.out, err)
    assert "Traceback" not in captured.err + captured.out
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"ted {argv[0]}: error: "), err
    assert not out.exists() and not (tmp_path / "OUTPUT.incomplete").exists()
    return err


# ----------------------------------------------------------------------------------- help, version


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_help_exits_0(command, capsys):
    assert main([command, "--help"]) == 0
    text = capsys.readouterr().out
    assert f"ted {command}" in text or command in text
    if command in arguments.STAGE_COMMANDS:
        assert "--config FILE" in text


@pytest.mark.parametrize("command", arguments.STAGE_COMMANDS)
def test_stage_help_lists_teds_options_before_the_trainers(command, capsys):
    main([command, "--help"])
    text = capsys.readouterr().out
    trainer = text.index(arguments.TRAINER_GROUP + ":")
    for option in (
        "--model_name_or_path",
        "--task_name",
        "--max_seq_length",
        "--learning_rate",
        "--per_device_train_batch_size",
        "--num_train_epochs",
        "--output_dir",
    ):
        assert text.index(f"  {option} ") < trainer, option
    assert text.index("  --lr_scheduler_type ") > trainer  # a generic Trainer option comes after
    if command == "distill":
        assert text.index("  --kl_alpha ") < trainer


def test_no_arguments_prints_usage_and_exits_2(capsys):
    assert main([]) == 2
    assert "usage: ted <command>" in capsys.readouterr().err


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"ted {ted.__version__}"


def test_unknown_command_suggests(capsys):
    assert main(["distil"]) == 2
    assert "did you mean distill?" in capsys.readouterr().err


def test_help_version_and_usage_do_not_import_torch():
    code = (
        "import sys\nfrom ted.cli.main import main\n"
        "assert [main(['--version']), main(['--help']), main([])] == [0, 0, 2]\n"
        "heavy = [m for m in ('torch', 'transformers') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_bad_value_of_teds_own_options_is_refused_without_importing_torch():
    # ted's options are checked before TrainingArguments (and torch) are imported: about a second, not several
    code = (
        "import sys\nfrom ted.settings.parse import parse_cli\nfrom ted.errors import TedInputError\n"
        "try:\n    parse_cli('distill', ['--kl_alpha', '-1', '--warmup_ratio', '0.1'])\n"
        "except TedInputError as err:\n    assert '--kl_alpha' in str(err), err\n"
        "else:\n    raise SystemExit('not refused')\n"
        "assert 'torch' not in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


# ------------------------------------------------------------------------------ exact option names


def test_cli_flag_is_not_prefix_matched(capsys, tmp_path):
    err = run_bad(capsys, tmp_path, "finetune", "--model_name_or_path", MISSING, "--learning_rat", "0.001")
    assert "unknown option --learning_rat" in err and "did you mean --learning_rate?" in err


def test_yaml_typo_is_an_error_naming_the_key(capsys, tmp_path):
    config = tmp_path / "finetune.yaml"
    config.write_text(f"model_name_or_path: {MISSING}\nlearning_rat: 0.001\n")
    err = run_bad(capsys, tmp_path, "finetune", "--config", config)
    assert "'learning_rat'" in err and "did you mean learning_rate?" in err and str(config) in err


def test_broken_yaml_is_one_line(capsys, tmp_path):
    config = tmp_path / "broken.yaml"
    config.write_text("learning_rate: [0.1\n")
    err = run_bad(capsys, tmp_path, "finetune", "--config", config)
    assert str(config) in err


@pytest.mark.parametrize(
    "argv",
    [
        ["export", "STAGE", "--output_dir", "x", "--no_sped"],
        ["demo", "--see", "1"],
        ["export", "STAGE", "--output_dir", "x", "--overwrite"],
    ],
)  # a prefix
def test_plain_commands_refuse_unknown_and_abbreviated_options(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "unknown option" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "argv",
    [
        ["report", "RUN", "--no_spe"],
        ["import-original", "CKPT", "--output_dir", "x", "--overwrite"],
        ["score-squad", "data.json", "pred.json", "--out_f", "x"],
    ],
)
def test_argparse_commands_take_no_abbreviations(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments: " + argv[-2 if argv[-1] == "x" else -1] in err, err


def test_api_unknown_keyword_names_it():
    with pytest.raises(TedInputError, match=r"'learning_rat'.*did you mean learning_rate\?"):
        ted.finetune(model_name_or_path=MISSING, learning_rat=0.001)


# ----------------------------------------------------------------------------- values and coercion


def test_yaml_dict_bool_and_list_values(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(
        "lr_scheduler_type: polynomial\nlr_scheduler_kwargs: {power: 2.0}\n"
        "filter_disabled: false\nfilter_nonlinear: true\nlabel_list: [neg, pos]\n"
        "report_to: [none]\nkl_alpha: 20\n"
    )
    groups = arguments.parse_cli("distill", ["--config", str(config), "--output_dir", str(tmp_path / "o")])
    _, data, filters, distill, training = groups
    assert training.lr_scheduler_kwargs == {"power": 2.0}
    assert filters.filter_disabled is False and filters.filter_nonlinear is True
    assert data.label_list == ["neg", "pos"]
    assert distill.kl_alpha == 20.0 and isinstance(distill.kl_alpha, float)


def test_command_line_wins_over_config(tmp_path):
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"learning_rate": 0.1, "filter_disabled": True}))
    groups = arguments.parse_cli(
        "distill", ["--config", str(config), "--learning_rate", "0.2", "--filter_disabled", "false"]
    )
    assert groups[-1].learning_rate == 0.2 and groups[2].filter_disabled is False


def test_api_coerces_like_the_cli():
    groups = ted.api.parse_kwargs(
        "distill",
        {
            "kl_alpha": "20",
            "mse_alpha": 5,
            "filter_disabled": "true",
            "save_total_limit": None,
            "lr_scheduler_kwargs": {"power": 2.0},
        },
    )
    distill, training = groups[3], groups[-1]
    assert distill.kl_alpha == 20.0 and distill.mse_alpha == 5.0 and groups[2].filter_disabled is True
    assert training.save_total_limit is None  # an explicit None is kept, not the default 1
    assert training.lr_scheduler_kwargs == {"power": 2.0}


def test_api_bad_value_is_a_clear_error(tmp_path):
    with pytest.raises(TedInputError, match="kl_alpha.*'abc'"):
        ted.distill(model_name_or_path=MISSING, kl_alpha="abc", output_dir=str(tmp_path / "o"))
    with pytest.raises(TedInputError, match="--kl_alpha must be 0 or more"):
        ted.distill(model_name_or_path=MISSING, kl_alpha=-1, output_dir=str(tmp_path / "o"))
    assert not (tmp_path / "o").exists()


BAD_VALUES = [
    (["finetune", "--per_device_train_batch_size", "0"], "--per_device_train_batch_size"),
    (["finetune", "--per_device_train_batch_size", "-4"], "--per_device_train_batch_size"),
    (["evaluate", "--per_device_eval_batch_size", "0"], "--per_device_eval_batch_size"),
    (["distill", "--kl_alpha", "-1"], "--kl_alpha"),
    (["distill", "--mse_alpha", "-5"], "--mse_alpha"),
    (["distill", "--temperature", "0"], "--temperature"),
    (["finetune", "--num_train_epochs", "0"], "--num_train_epochs"),
    (["finetune", "--num_train_epochs", "-1", "--max_steps", "0"], "--num_train_epochs"),
    (["finetune", "--max_seq_length", "5"], "--max_seq_length"),
    (["finetune", "--task_name", "squad", "--max_seq_length", "128", "--doc_stride", "128"], "--doc_stride"),
    (["finetune", "--max_train_samples", "0"], "--max_train_samples"),
    (["evaluate", "--max_eval_samples", "-1"], "--max_eval_samples"),
    (["finetune", "--label_list", "neg", "pos", "neg"], "--label_list"),
    (["learn-filters", "--filter_interval", "0"], "--filter_interval"),
    (["distill", "--teacher_filter_interval", "-1"], "--teacher_filter_interval"),
    (["learn-filters", "--filter_output_dim", "0"], "--filter_output_dim"),
    (["finetune", "--learning_rate", "-0.001"], "--learning_rate"),
    (["finetune", "--gradient_accumulation_steps", "0"], "--gradient_accumulation_steps"),
    (["finetune", "--hidden_dropout_prob", "1.5"], "--hidden_dropout_prob"),
    (["finetune", "--num_train_epochs", "two"], "--num_train_epochs"),
    (["finetune", "--load_best_model_at_end", "--save_strategy", "steps"], "--load_best_model_at_end"),
]


@pytest.mark.parametrize("argv,option", BAD_VALUES, ids=[" ".join(a) for a, _ in BAD_VALUES])
def test_bad_value_is_refused_before_loading(argv, option, capsys, tmp_path):
    teacher = ["--teacher_model_name_or_path", MISSING] if argv[0] == "distill" else []
    err = run_bad(capsys, tmp_path, *argv, "--model_name_or_path", MISSING, *teacher)
    assert option in err


def test_positive_max_steps_allows_zero_epochs():
    groups = ted.api.parse_kwargs("finetune", {"num_train_epochs": 0, "max_steps": 3})
    assert groups[-1].max_steps == 3


def test_evaluate_does_not_check_training_only_values():
    ted.api.parse_kwargs("evaluate", {"num_train_epochs": 0, "per_device_train_batch_size": 0})


def test_hand_built_groups_are_checked_by_run_command(tmp_path):
    groups = ted.api.parse_kwargs("distill", {"output_dir": str(tmp_path / "o")})
    groups[3].kl_alpha = -1.0
    with pytest.raises(TedInputError, match="--kl_alpha"):
        ted.api.run_command("distill", groups)
