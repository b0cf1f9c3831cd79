"""ted's argparse parsers: exact option names, errors raised as TedInputError with the closest known name, and
each stage's HfArgumentParser with ted's options shown before the Trainer's."""

from __future__ import annotations

import argparse
import difflib
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn, Optional

from ted.errors import TedInputError

if TYPE_CHECKING:
    from transformers import HfArgumentParser

TRAINER_GROUP = "Hugging Face Trainer options"
TED_TRAINING_GROUP = "training options (ted's defaults)"


def suggestion(name: str, known: Iterable[str]) -> str:
    """' (did you mean X?)' for the closest known name, or ''."""
    match = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {match[0]}?)" if match else ""


class _RaisingParser:
    """argparse reports a bad value or a missing one by printing usage and exiting; raise instead, so the
    CLI prints one line and the Python API gets an exception it can catch."""

    prog: str  # set by the argparse parser this is mixed into

    def error(self, message: str) -> NoReturn:
        raise TedInputError(f"{message}. See `{self.prog} --help`.")


class TedArgumentParser(_RaisingParser, argparse.ArgumentParser):
    """argparse for ted's plain commands: exact option names, errors as TedInputError."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def parse_args(
        self, args: Optional[Sequence[str]] = None, namespace: Optional[argparse.Namespace] = None
    ) -> argparse.Namespace:
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


def check_names(names: Iterable[str], known: set[str], where: str, what: str = "option") -> None:
    """Every name (a --config key, a keyword argument) must be a known option, exactly."""
    for name in names:
        if f"--{name}" not in known:
            close = suggestion(f"--{name}", known).replace("--", "")
            raise TedInputError(f"{where}: unknown {what} {name!r}{close}. Option names must match exactly.")


def command_groups(command: str) -> tuple:
    from ted.settings.training_args import COMMAND_ARGS

    if command not in COMMAND_ARGS:
        raise TedInputError(f"unknown stage command {command!r}; choose one of {', '.join(COMMAND_ARGS)}.")
    return COMMAND_ARGS[command]


def stage_parser(command: str, description: Optional[str] = None) -> HfArgumentParser:
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


def _lift_ted_training_options(parser: HfArgumentParser) -> None:
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


def options_parser(command: str) -> HfArgumentParser:
    """A parser of ted's own options alone (options.COMMAND_OPTIONS): needs neither torch nor
    `TrainingArguments`, which take seconds to import."""
    from transformers import HfArgumentParser  # without torch

    from ted.settings.options import COMMAND_OPTIONS

    class LightParser(_RaisingParser, HfArgumentParser):
        pass

    return LightParser(COMMAND_OPTIONS[command], prog=f"ted {command}", add_help=False, allow_abbrev=False)
