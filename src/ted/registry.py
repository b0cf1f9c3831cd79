"""Named, decorator-registered building blocks (divergences, layer losses, ...) and `NAME[:p[,p]]` specs.

A registry maps a name to a function. Code registers with `@REGISTRY.register("name")`; user input picks an
entry with a spec such as `jsd:0.5`, whose numbers fill the function's keyword-only parameters in order.
Bad names and bad specs raise `TedInputError` with the known names and the closest match.

This module imports neither torch nor transformers.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import math
import re
from collections.abc import Callable
from typing import Generic, TypeVar

from ted.errors import TedInputError

F = TypeVar("F", bound=Callable)

# Letters, digits, '_' and '-': never ':' or ',' (they separate a spec's name and parameters).
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")


def normalise(name: str) -> str:
    """Names compare case-insensitively and with '-' equal to '_' (`Forward-KL` is `forward_kl`)."""
    return name.strip().lower().replace("-", "_")


def closest(name: str, known: list[str]) -> str | None:
    """The known name nearest to `name`, or None when nothing is close."""
    match = difflib.get_close_matches(normalise(name), known, n=1, cutoff=0.5)
    return match[0] if match else None


def parse_spec(spec: str, what: str = "entry") -> tuple[str, tuple[float, ...]]:
    """`"jsd:0.5"` -> `("jsd", (0.5,))`, `"forward_kl"` -> `("forward_kl", ())`; numbers only."""
    if not isinstance(spec, str) or not spec.strip():
        raise TedInputError(f"empty {what} name: give NAME or NAME:PARAM[,PARAM] (e.g. jsd:0.5)")
    name, sep, rest = spec.strip().partition(":")
    name = name.strip()
    if not _NAME.match(name):
        raise TedInputError(
            f"bad {what} spec {spec!r}: the name {name!r} must start with a letter and hold only letters, "
            "digits, '_' or '-' (format NAME or NAME:PARAM[,PARAM], e.g. jsd:0.5)"
        )
    if not sep:
        return normalise(name), ()
    return normalise(name), tuple(_number(p, spec, what) for p in rest.split(","))


def _number(text: str, spec: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise TedInputError(
            f"bad {what} spec {spec!r}: parameter {text.strip()!r} is not a finite number "
            "(format NAME:PARAM[,PARAM], e.g. jsd:0.5)"
        )
    return value


def keyword_params(fn: Callable) -> list[str]:
    """The names a spec's numbers fill: the function's keyword-only parameters, in order."""
    params = inspect.signature(fn).parameters.values()
    return [p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]


class Registry(Generic[F]):
    """Name -> function, filled by the `register` decorator; `kind` names the entries in messages."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, F] = {}
        self._checks: dict[str, Callable[..., None] | None] = {}

    def register(
        self, name: str, *, check: Callable[..., None] | None = None, replace: bool = False
    ) -> Callable[[F], F]:
        """Decorator: `@REG.register("my_name")`. A taken name is an error unless `replace=True`.

        `check(**params)`, if given, validates the numbers a spec binds (raise `TedInputError`); `resolve`
        runs it, so a bad value is refused before any model is loaded.
        """
        if not isinstance(name, str) or not _NAME.match(name):
            raise TedInputError(
                f"cannot register {self.kind} {name!r}: a name starts with a letter and holds only letters, "
                "digits, '_' or '-'"
            )
        key = normalise(name)
        if key in self._entries and not replace:
            raise TedInputError(f"{self.kind} {key!r} is already registered; pick another name or pass replace=True")

        def decorate(fn: F) -> F:
            self._entries[key] = fn
            self._checks[key] = check
            return fn

        return decorate

    def names(self) -> list[str]:
        """Registered names, in registration order (the first is the built-in default where there is one)."""
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and normalise(name) in self._entries

    def get(self, name: str) -> F:
        """The function registered as `name`; an unknown name is a `TedInputError` naming the closest."""
        key = normalise(name) if isinstance(name, str) else name
        if key in self._entries:
            return self._entries[key]
        match = closest(str(name), self.names())
        hint = f" (did you mean {match!r}?)" if match else ""
        raise TedInputError(f"unknown {self.kind} {name!r}{hint}; known: {', '.join(self.names())}")

    def resolve(self, spec: str) -> Callable:
        """The entry a spec names, with the spec's numbers bound to its keyword-only parameters in order."""
        name, values = parse_spec(spec, self.kind)
        fn = self.get(name)
        params = keyword_params(fn)
        if len(values) > len(params):
            takes = f"takes at most {len(params)} ({', '.join(params)})" if params else "takes no parameters"
            usage = f"{name}:{','.join(p.upper() for p in params)}" if params else name
            raise TedInputError(f"{self.kind} {spec!r}: {name} {takes}, got {len(values)}; write {usage}")
        bound = dict(zip(params, values))
        check = self._checks[name]
        if check is not None:
            check(**bound)
        # A partial keeps the entry reachable as `.func` and the bound values as `.keywords`.
        return functools.partial(fn, **bound)
