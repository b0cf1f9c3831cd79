"""ted: task-aware layer-wise distillation (TED, ICML 2023) for Hugging Face models."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from ted import _moved

_moved.install()

if TYPE_CHECKING:
    from collections.abc import Callable

# The public functions of `ted.api`. No submodule of ted carries one of these names: importing a submodule
# binds it on the package, which would shadow the function (`ted.demo` was once the module ted/demo.py).
_API = (
    "finetune",
    "learn_filters",
    "distill",
    "doctor",
    "evaluate",
    "export",
    "demo",
    "pipeline",
    "report",
    "import_original",
    "lm_eval",
    "init_student",
)


def __getattr__(name: str) -> Callable[..., Any]:
    # The API pulls in torch and transformers: import it on first use, so light commands start fast.
    if name in _API:
        from ted import api

        return getattr(api, name)
    raise AttributeError(f"module 'ted' has no attribute {name!r}")


__all__ = [*_API, "__version__"]
