"""Every input as command-line tokens: a `--config` YAML/JSON file found and read, and a mapping of option values
written as `--name=value` tokens for the one parser."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

from ted.errors import TedInputError


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


def _token(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return json.dumps(value)
    return str(value)


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
