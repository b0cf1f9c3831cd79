"""Stage II methods: each a named recipe of loss terms, in a registry (light: no torch import).

A method is the task loss, plus `kl_alpha` x an output divergence (`--kd_loss`, a name in
`ted.method.divergences.DIVERGENCES`), plus `mse_alpha` x the mean over matched layers of a layer loss
(`--layer_loss`, a name in `ted.method.divergences.LAYER_LOSSES`) between what it matches:

- `ted`: the teacher's Stage I filters against the student's (the paper's method);
- `lwd`: the teacher's raw hidden states against a fresh student-side projector (layer-wise distillation);
- `kd`: no layer term (plain knowledge distillation).

The paper's flags select one of the three (`--mse_alpha 0` -> kd, `--filter_disabled` -> lwd, else ted);
`--method NAME` names any registered method, including your own (`docs/extending.md`).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Optional

from ted.errors import TedInputError
from ted.registry import Registry

# What a method's layer term compares.
FILTERS = "filters"  # Stage I filters of teacher and student (TED)
HIDDEN = "hidden"  # the teacher's raw hidden states, a fresh student projector (LWD)


@dataclass(frozen=True)
class Method:
    """A recipe of loss terms; weights come from --kl_alpha / --mse_alpha, the functions from the specs."""

    layers: Optional[str] = None  # FILTERS, HIDDEN or None (no layer term)
    kd_loss: str = "forward_kl"  # default --kd_loss of this method
    layer_loss: str = "mse"  # default --layer_loss of this method
    description: str = ""

    def check(self, name: str, mse_alpha: float, filter_disabled: bool) -> None:
        """The paper's flags must agree with the method's terms."""
        if self.layers is None and mse_alpha != 0:
            raise TedInputError(
                f"{name.upper()} has no layer term, but --mse_alpha is {mse_alpha}. Drop --mse_alpha or use ted/lwd."
            )
        if self.layers is not None and mse_alpha <= 0:
            raise TedInputError(f"{name.upper()} matches layers: give a positive --mse_alpha (the paper uses 5-7500).")
        if self.layers == FILTERS and filter_disabled:
            raise TedInputError(f"--method {name} uses filters; remove --filter_disabled (that flag selects KD/LWD).")


METHODS: Registry = Registry("method")
METHODS.register("ted")(Method(FILTERS, description="task-aware filters of teacher and student (the paper)"))
METHODS.register("kd")(Method(None, description="output distillation only"))
METHODS.register("lwd")(Method(HIDDEN, description="raw teacher layers, student projector"))

# The methods `ted pipeline` runs side by side (one stage folder each).
PIPELINE_METHODS = ("ted", "kd", "lwd")


def resolve_method(method: Optional[str], filter_disabled: bool, mse_alpha: float) -> str:
    """The paper's flags decide the method; `--method` names one (built in or registered) that must agree."""
    if method is None:
        return "kd" if mse_alpha == 0 else ("lwd" if filter_disabled else "ted")
    name = method.lower()
    if name not in METHODS:
        raise TedInputError(
            f"Unknown --method {method!r}; choose one of {', '.join(METHODS.names())} (or register your own and "
            "load it with --plugins)."
        )
    METHODS.get(name).check(name, mse_alpha, filter_disabled)
    return name


def import_plugins(modules: Optional[list[str]]) -> None:
    """--plugins: import the user's modules, which register their methods, divergences and layer losses."""
    for module in modules or []:
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise TedInputError(
                f"--plugins: cannot import {module!r} ({err}). Give an importable module name (on PYTHONPATH "
                "or installed), e.g. my_project.ted_losses."
            ) from None
