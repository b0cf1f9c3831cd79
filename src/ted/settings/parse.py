"""The one path from user input to a stage's argument groups, and the checks of their values.

Command-line tokens, a `--config` YAML/JSON file and the Python API's keyword arguments all become
command-line tokens, parsed by one `HfArgumentParser` (so `ted.distill(kl_alpha="20")` is coerced
exactly like `--kl_alpha 20`), then `validate` checks every value before any model is loaded.
Option names are exact: abbreviations are off, and an unknown name is an error that suggests the
closest known one.

This module imports neither torch nor transformers at import time.
"""

from __future__ import annotations

import argparse
import difflib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Optional

from ted.errors import TedInputError
from ted.method.recipes import import_plugins, resolve_method

STAGE_COMMANDS = ("finetune", "learn-filters", "distill", "evaluate", "doctor")
TRAINING_COMMANDS = ("finetune", "learn-filters", "distill")
SQUAD_TASKS = ("squad", "squad_v2")

# The shortest input window that can hold anything: up to 4 special tokens (a RoBERTa sentence pair is
# `<s> A </s></s> B </s>`) plus at least 4 tokens of text.
MIN_SEQ_LENGTH = 8
# Defaults the tasks use when --max_seq_length is not given (tasks/glue.py, custom.py, squad.py).
DEFAULT_SEQ_LENGTH, DEFAULT_SQUAD_SEQ_LENGTH = 128, 384

TRAINER_GROUP = "Hugging Face Trainer options"
TED_TRAINING_GROUP = "training options (ted's defaults)"


# ------------------------------------------------------------------------------------------ parsers


def suggestion(name: str, known: Iterable[str]) -> str:
    """' (did you mean X?)' for the closest known name, or ''."""
    match = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {match[0]}?)" if match else ""


class _RaisingParser:
    """argparse reports a bad value or a missing one by printing usage and exiting; raise instead, so the
    CLI prints one line and the Python API gets an exception it can catch."""

    def error(self, message: str):
        raise TedInputError(f"{message}. See `{self.prog} --help`.")


class TedArgumentParser(_RaisingParser, argparse.ArgumentParser):
    """argparse for ted's plain commands: exact option names, errors as TedInputError."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def parse_args(self, args=None, namespace=None):
        namespace, extras = self.parse_known_args(args, namespace)
        if extras:
            raise unknown_error(extras, option_names(self), f"`{self.prog} --help` lists the options.")
        return namespace


def option_names(parser: argparse.ArgumentParser) -> set[str]:
    return {name for action in parser._actions for name in action.option_strings}


def unknown_error(extras: list[str], known: set[str], hint: str) -> TedInputError:
    flags = [t.split("=", 1)[0] for t in extras if t.startswith("-")]
    if not flags:
        return TedInputError(f"unexpected value(s) {' '.join(extras)}: options look like --name value. {hint}")
    first = flags[0]
    more = f" (and {', '.join(flags[1:])})" if len(flags) > 1 else ""
    return TedInputError(f"unknown option {first}{suggestion(first, known)}{more}. {hint}")


def command_groups(command: str) -> tuple:
    from ted.settings.training_args import COMMAND_ARGS

    if command not in COMMAND_ARGS:
        raise TedInputError(f"unknown stage command {command!r}; choose one of {', '.join(COMMAND_ARGS)}.")
    return COMMAND_ARGS[command]


def stage_parser(command: str, description: Optional[str] = None):
    """The HfArgumentParser of a stage, with ted's options first and the Trainer's after them."""
    from transformers import HfArgumentParser

    class StageParser(_RaisingParser, HfArgumentParser):
        pass

    # A short usage line: argparse's own would list all ~170 options before the help starts.
    parser = StageParser(
        command_groups(command),
        prog=f"ted {command}",
        description=description,
        usage="%(prog)s [--config FILE] [options]",
        allow_abbrev=False,
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=argparse.SUPPRESS,
        help="YAML or JSON file of {option: value}; options given on the command line win.",
    )
    _lift_ted_training_options(parser)
    return parser


def _lift_ted_training_options(parser) -> None:
    """Move the training options ted sets itself (options.TedTrainingOptions) out of the ~100
    generic Trainer options into a group of their own, placed before them. Help layout only: parsing reads
    `parser._actions`, which is untouched."""
    from ted.settings.options import TedTrainingOptions

    trainer = next((g for g in parser._action_groups if g.title == TRAINER_GROUP), None)
    if trainer is None:
        return
    own = set(TedTrainingOptions.__annotations__)
    group = parser.add_argument_group(TED_TRAINING_GROUP)
    group._group_actions[:] = [a for a in trainer._group_actions if a.dest in own]
    trainer._group_actions[:] = [a for a in trainer._group_actions if a.dest not in own]
    parser._action_groups.remove(group)
    parser._action_groups.insert(parser._action_groups.index(trainer), group)


# ------------------------------------------------------------------------------- values to tokens


def to_tokens(options: Mapping[str, Any]) -> list[str]:
    """{name: value} as command-line tokens. None leaves the default; a bool is true/false; a dict goes as
    JSON (the Trainer parses `lr_scheduler_kwargs`, `fsdp_config`, ... from a JSON string); a list gives one
    token per item. `--name=value` keeps a value such as `-1` or `--x` from reading as an option."""
    tokens: list[str] = []
    for name, value in options.items():
        if value is None or (isinstance(value, (list, tuple)) and not value):
            continue
        if isinstance(value, (list, tuple)):
            tokens += [f"--{name}", *(_token(v) for v in value)]
        else:
            tokens.append(f"--{name}={_token(value)}")
    return tokens


def _token(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return json.dumps(value)
    return str(value)


def check_names(names: Iterable[str], known: set[str], where: str, what: str = "option") -> None:
    for name in names:
        if f"--{name}" not in known:
            close = suggestion(f"--{name}", known).replace("--", "")
            raise TedInputError(f"{where}: unknown {what} {name!r}{close}. Option names must match exactly.")


# --------------------------------------------------------------------------------------- --config


def read_config(path: str) -> dict:
    """A YAML or JSON file holding a mapping of option names to values."""
    file = Path(path)
    if not file.is_file():
        raise TedInputError(f"config file {file} does not exist.")
    text = file.read_text(encoding="utf-8")
    try:
        if file.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as err:  # yaml.YAMLError / json.JSONDecodeError: their first line names the place
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise TedInputError(f"{file} cannot be read: {first}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise TedInputError(f"{file} must hold a mapping of option names to values, e.g. `learning_rate: 2e-5`.")
    return data


def split_config(argv: list[str]) -> tuple[Optional[str], list[str]]:
    """(--config path or None, the other tokens)."""
    paths, rest, i = [], [], 0
    while i < len(argv):
        token = argv[i]
        if token == "--config":
            if i + 1 >= len(argv) or argv[i + 1].startswith("--"):
                raise TedInputError("--config needs a file path.")
            paths.append(argv[i + 1])
            i += 2
            continue
        if token.startswith("--config="):
            paths.append(token.split("=", 1)[1])
        else:
            rest.append(token)
        i += 1
    if len(paths) > 1:
        raise TedInputError(f"--config was given {len(paths)} times; give one file.")
    return (paths[0] if paths else None), rest


# ------------------------------------------------------------------------------------------ parsing


def parse_cli(command: str, argv: list[str], description: Optional[str] = None) -> tuple:
    """`ted <stage> [--config FILE] [options]` -> the stage's checked argument groups."""
    config, rest = split_config(argv)
    options = read_config(config) if config else {}
    tokens = to_tokens(options) + rest
    precheck(command, tokens)
    parser = stage_parser(command, description)
    check_names(options, option_names(parser), config, "key")
    return parse_tokens(command, parser, tokens)


def parse_mapping(command: str, options: Mapping[str, Any], where: Optional[str] = None) -> tuple:
    """Keyword arguments of the Python API (and the pipeline's stage settings) -> checked argument groups.
    An explicit None sets the option to None (`save_total_limit=None`: keep every checkpoint)."""
    tokens = to_tokens(options)
    nones = {k.replace("-", "_"): None for k, v in options.items() if v is None}
    precheck(command, tokens, nones)
    parser = stage_parser(command)
    check_names(options, option_names(parser), where or f"ted.{command.replace('-', '_')}()", "argument")
    return parse_tokens(command, parser, tokens, nones)


def precheck(command: str, tokens: list[str], fixed: Optional[dict] = None) -> None:
    """`check_values` on ted's own options alone, parsed without the Trainer's: this needs neither torch nor
    `TrainingArguments` (seconds to import), so most bad values are refused in about a second. Trainer options
    are skipped here (parse_known_args) and checked by the full parse that follows."""
    if "-h" in tokens or "--help" in tokens or command not in STAGE_COMMANDS:
        return  # help comes from the full parser; an unknown command is refused by command_groups
    from transformers import HfArgumentParser  # without torch

    from ted.settings.options import COMMAND_OPTIONS

    class LightParser(_RaisingParser, HfArgumentParser):
        pass

    parser = LightParser(COMMAND_OPTIONS[command], prog=f"ted {command}", add_help=False, allow_abbrev=False)
    namespace, _ = parser.parse_known_args(tokens)
    check_values(command, {**vars(namespace), **(fixed or {})})


def parse_tokens(command: str, parser, tokens: list[str], fixed: Optional[dict] = None) -> tuple:
    from ted.settings.training_args import given_flags, with_paper_defaults

    namespace, extras = parser.parse_known_args(tokens)
    if extras:
        raise unknown_error(extras, option_names(parser), f"`ted {command} --help` lists the options.")
    values = {**vars(namespace), **(fixed or {})}
    check_values(command, values)  # again with the Trainer's options, before TrainingArguments' slow set-up
    groups = tuple(_build(dtype, values) for dtype in command_groups(command))
    return with_paper_defaults(groups, given_flags(tokens) | set(fixed or {}))  # --paper_compat defaults


def _build(dtype, values: dict):
    import dataclasses

    names = {f.name for f in dataclasses.fields(dtype) if f.init}
    try:
        return dtype(**{k: v for k, v in values.items() if k in names})
    except ValueError as err:  # TrainingArguments.__post_init__ refuses a combination of options
        if isinstance(err, TedInputError):
            raise
        raise TedInputError(" ".join(str(err).split())) from None


# --------------------------------------------------------------------------------------- validation

# Why a value must be positive / non-negative, added to the message.
HINTS = {
    "max_train_samples": "leave it out to use every example",
    "max_eval_samples": "leave it out to use every example",
    "kl_alpha": "it weights the KL term; 0 turns the term off",
    "mse_alpha": "it weights the layer MSE term; 0 turns the term off (KD)",
    "learning_rate": "",
    "filter_interval": "1 puts a filter on every layer, 2 on every second one",
    "teacher_filter_interval": "1 puts a filter on every layer, 2 on every second one",
    "filter_output_dim": "leave it out to use the model's hidden size",
    "balance_kl_ratio": "1 makes the weighted KL term equal to the task loss at step 0",
    "balance_mse_ratio": "1 makes the weighted layer term equal to the task loss at step 0",
}
AT_LEAST_ONE = {
    "all": (
        "per_device_eval_batch_size",
        "max_eval_samples",
        "filter_interval",
        "teacher_filter_interval",
        "filter_output_dim",
        "doc_stride",
        "n_best_size",
        "max_answer_length",
        "doctor_eval_samples",
        "doctor_batches",
    ),
    "train": ("per_device_train_batch_size", "gradient_accumulation_steps", "max_train_samples"),
}
NOT_NEGATIVE = ("kl_alpha", "mse_alpha", "learning_rate")
PROBABILITIES = ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout")


def _fail(name: str, rule: str, value) -> None:
    hint = HINTS.get(name)
    raise TedInputError(f"--{name} must be {rule}, got {value}" + (f" ({hint})." if hint else "."))


def validate(command: str, groups: Iterable) -> None:
    """`check_values` on a stage's argument groups."""
    values: dict[str, Any] = {}
    for group in groups:
        values.update(vars(group))
    check_values(command, values)


def check_values(command: str, values: Mapping[str, Any]) -> None:
    """Every check of option values that needs neither the model nor the data: one message each."""
    at_least_one = AT_LEAST_ONE["all"] + (AT_LEAST_ONE["train"] if command in TRAINING_COMMANDS else ())
    for name in at_least_one:
        if values.get(name) is not None and values[name] < 1:
            _fail(name, "at least 1", values[name])
    for name in NOT_NEGATIVE:
        if values.get(name) is not None and values[name] < 0:
            _fail(name, "0 or more", values[name])
    for name in PROBABILITIES:
        if values.get(name) is not None and not 0 <= values[name] < 1:
            _fail(name, "a probability in [0, 1)", values[name])
    if values.get("temperature") is not None and values["temperature"] <= 0:
        _fail("temperature", "positive (the paper uses 2)", values["temperature"])
    _check_balance(values)
    # max_steps is a Trainer option, so precheck cannot see it: this rule waits for the full parse.
    epochs, steps = values.get("num_train_epochs"), values.get("max_steps")
    if command in TRAINING_COMMANDS and epochs is not None and steps is not None and epochs <= 0 and steps <= 0:
        raise TedInputError(
            f"--num_train_epochs is {values['num_train_epochs']}, so nothing would be trained: give "
            "a positive --num_train_epochs (or a positive --max_steps)."
        )
    _check_seq_length(command, values)
    _check_label_list(values.get("label_list"))
    if "method" in values:  # distill, and the commands that take its options (doctor)
        _check_distill(values)
    _check_teacher_cache(values)


def _check_distill(values: Mapping[str, Any]) -> None:
    """--plugins import (they may register methods), then --method must agree with the paper's flags."""
    import_plugins(values.get("plugins"))
    if "mse_alpha" in values:
        resolve_method(values.get("method"), bool(values.get("filter_disabled")), values["mse_alpha"])


def _check_balance(values: Mapping[str, Any]) -> None:
    """--balance_losses ratios, and a balance with nothing to balance."""
    for name in ("balance_kl_ratio", "balance_mse_ratio"):
        if values.get(name) is not None and not values[name] > 0:
            _fail(name, "positive", values[name])
    if values.get("balance_losses") and not (values.get("kl_alpha") or values.get("mse_alpha")):
        raise TedInputError(
            "--balance_losses scales the distillation terms that are on, but --kl_alpha and --mse_alpha are both 0. "
            "Give a positive --kl_alpha and/or --mse_alpha (their values are then replaced), or drop --balance_losses."
        )


TEACHER_CACHE_DTYPES = ("auto", "float32", "float16", "bfloat16")  # teacher_cache.DTYPE_CHOICES (no torch here)


def _check_teacher_cache(values: Mapping[str, Any]) -> None:
    """--teacher_cache auto|off|DIR and its settings (docs/teacher-cache.md)."""
    option, dtype = values.get("teacher_cache"), values.get("teacher_cache_dtype")
    if option is not None and not str(option).strip():
        _fail("teacher_cache", "auto, off or a folder", option)
    if dtype is not None and dtype not in TEACHER_CACHE_DTYPES:
        _fail("teacher_cache_dtype", "one of " + ", ".join(TEACHER_CACHE_DTYPES), dtype)
    if values.get("teacher_cache_max_gb") is not None and not values["teacher_cache_max_gb"] > 0:
        _fail("teacher_cache_max_gb", "a positive number of GB", values["teacher_cache_max_gb"])
    if values.get("teacher_cache_topk") is not None:
        raise TedInputError(
            "--teacher_cache_topk caches a causal language model's top-k next-token probabilities, and ted has no "
            "causal-LM task yet; remove it (classification, regression and SQuAD caches are exact without it)."
        )
    if option in (None, "auto", "off"):
        return
    folder = Path(str(option)).expanduser()
    if folder.exists() and not folder.is_dir():
        raise TedInputError(f"--teacher_cache {option} is a file; pass a folder (or auto / off).")
    out = values.get("output_dir")
    if out and (folder.resolve() == Path(out).resolve() or Path(out).resolve() in folder.resolve().parents):
        raise TedInputError(
            f"--teacher_cache {option} is inside --output_dir {out}, which is replaced when the stage is written; "
            "pass a folder outside it."
        )


def _check_seq_length(command: str, values: Mapping[str, Any]) -> None:
    squad = str(values.get("task_name") or "").strip().lower() in SQUAD_TASKS
    given = values.get("max_seq_length")
    if given is not None and given < MIN_SEQ_LENGTH:
        raise TedInputError(
            f"--max_seq_length {given} cannot hold an input: it needs room for up to 4 special "
            f"tokens and some text; use at least {MIN_SEQ_LENGTH} (default "
            f"{DEFAULT_SQUAD_SEQ_LENGTH if squad else DEFAULT_SEQ_LENGTH})."
        )
    # `ted evaluate` without --max_seq_length takes the window of the stage it scores (not known here).
    if squad and values.get("doc_stride") is not None and (given or command != "evaluate"):
        length = given or DEFAULT_SQUAD_SEQ_LENGTH
        if values["doc_stride"] > length - MIN_SEQ_LENGTH:
            raise TedInputError(
                f"--doc_stride {values['doc_stride']} leaves no room in a --max_seq_length {length} window: a "
                f"window holds special tokens, the question and context that overlaps the previous window by "
                f"doc_stride tokens, so doc_stride must be at most max_seq_length - {MIN_SEQ_LENGTH} (the paper: "
                f"384 and 128)."
            )


def _check_label_list(labels) -> None:
    if not labels:
        return
    seen = set()
    for label in labels:
        if label in seen:
            raise TedInputError(f"--label_list names {label!r} twice; give each label once, in id order.")
        seen.add(label)
