"""The three Stage II methods and how the paper's flags select one (light: no torch import)."""

from __future__ import annotations

from typing import Optional

from .errors import TedInputError

METHODS = ("ted", "kd", "lwd")


def resolve_method(method: Optional[str], filter_disabled: bool, mse_alpha: float) -> str:
    """The paper's flags decide the method; `--method` is a shortcut that must agree with them."""
    inferred = "kd" if mse_alpha == 0 else ("lwd" if filter_disabled else "ted")
    if method is None:
        return inferred
    method = method.lower()
    if method not in METHODS:
        raise TedInputError(f"Unknown --method {method!r}; choose one of {', '.join(METHODS)}.")
    if method == "kd" and mse_alpha != 0:
        raise TedInputError(f"KD has no layer term, but --mse_alpha is {mse_alpha}. Drop --mse_alpha or use ted/lwd.")
    if method in ("ted", "lwd") and mse_alpha <= 0:
        raise TedInputError(f"{method.upper()} matches layers: give a positive --mse_alpha (the paper uses 5-7500).")
    if method == "ted" and filter_disabled:
        raise TedInputError("--method ted uses filters; remove --filter_disabled (that flag selects KD/LWD).")
    return method
