"""The one path from user input to a stage's argument groups.

Command-line tokens, a `--config` YAML/JSON file and the Python API's keyword arguments all become
command-line tokens (`tokens`), parsed by one `HfArgumentParser` (`parsers`; so `ted.distill(kl_alpha="20")`
is coerced exactly like `--kl_alpha 20`), then `checks.check_values` checks every value before any model is
loaded. Option names are exact: abbreviations are off, and an unknown name is an error that suggests the
closest known one. The names of those modules are importable from here too.

This module imports neither torch nor transformers at import time.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Optional, TypeVar

from ted.errors import TedInputError
from ted.method.recipes import import_plugins, resolve_method
from ted.settings.checks import (
    AT_LEAST_ONE,
    DEFAULT_SEQ_LENGTH,
    DEFAULT_SQUAD_SEQ_LENGTH,
    HINTS,
    MIN_SEQ_LENGTH,
    NOT_NEGATIVE,
    PROBABILITIES,
    SQUAD_TASKS,
    TEACHER_CACHE_DTYPES,
    TRAINING_COMMANDS,
    check_values,
    validate,
)
from ted.settings.parsers import (
    TED_TRAINING_GROUP,
    TRAINER_GROUP,
    TedArgumentParser,
    check_names,
    command_groups,
    option_names,
    options_parser,
    stage_parser,
    suggestion,
    unknown_error,
)
from ted.settings.tokens import read_config, split_config, to_tokens

if TYPE_CHECKING:
    from transformers import HfArgumentParser

Group = TypeVar("Group")  # an argument dataclass

__all__ = [
    "AT_LEAST_ONE",
    "DEFAULT_SEQ_LENGTH",
    "DEFAULT_SQUAD_SEQ_LENGTH",
    "HINTS",
    "MIN_SEQ_LENGTH",
    "NOT_NEGATIVE",
    "PROBABILITIES",
    "SQUAD_TASKS",
    "STAGE_COMMANDS",
    "TEACHER_CACHE_DTYPES",
    "TED_TRAINING_GROUP",
    "TRAINER_GROUP",
    "TRAINING_COMMANDS",
    "TedArgumentParser",
    "check_names",
    "check_values",
    "command_groups",
    "import_plugins",
    "option_names",
    "parse_cli",
    "parse_mapping",
    "parse_tokens",
    "precheck",
    "read_config",
    "resolve_method",
    "split_config",
    "stage_parser",
    "suggestion",
    "to_tokens",
    "unknown_error",
    "validate",
]

STAGE_COMMANDS = ("finetune", "learn-filters", "distill", "evaluate", "doctor")


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
    namespace, _ = options_parser(command).parse_known_args(tokens)
    check_values(command, {**vars(namespace), **(fixed or {})})


def parse_tokens(command: str, parser: HfArgumentParser, tokens: list[str], fixed: Optional[dict] = None) -> tuple:
    from ted.settings.training_args import given_flags, with_paper_defaults

    namespace, extras = parser.parse_known_args(tokens)
    if extras:
        raise unknown_error(extras, option_names(parser), f"`ted {command} --help` lists the options.")
    values = {**vars(namespace), **(fixed or {})}
    check_values(command, values)  # again with the Trainer's options, before TrainingArguments' slow set-up
    groups = tuple(_build(dtype, values) for dtype in command_groups(command))
    return with_paper_defaults(groups, given_flags(tokens) | set(fixed or {}))  # --paper_compat defaults


def _build(dtype: type[Group], values: dict) -> Group:
    import dataclasses

    names = {f.name for f in dataclasses.fields(dtype) if f.init}
    try:
        return dtype(**{k: v for k, v in values.items() if k in names})
    except ValueError as err:  # TrainingArguments.__post_init__ refuses a combination of options
        if isinstance(err, TedInputError):
            raise
        raise TedInputError(" ".join(str(err).split())) from None
