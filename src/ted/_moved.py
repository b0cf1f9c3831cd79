"""Old import paths keep working: `import ted.filters` still gives the filters, with a DeprecationWarning
naming the new home (the flat modules moved into packages; docs/extending.md shows the layout)."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import types
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from importlib.machinery import ModuleSpec

# old module -> where it lives now
MOVED = {
    "ted.arguments": "ted.settings.parse",
    "ted.config": "ted.settings.training_args",
    "ted.demo_assets": "ted.cli.demo_assets",
    "ted.demo_runner": "ted.cli.demo",
    "ted.divergences": "ted.method.divergences",
    "ted.doctor_checks": "ted.stages.doctor",
    "ted.feature_cache": "ted.method.feature_cache",
    "ted.filters": "ted.method.filters",
    "ted.heads": "ted.method.heads",
    "ted.kinds": "ted.method.kinds",
    "ted.losses": "ted.method.losses",
    "ted.methods": "ted.method.recipes",
    "ted.metrics": "ted.tasks.metrics",
    "ted.model_card": "ted.reporting.model_card",
    "ted.models": "ted.stages.models",
    "ted.objectives": "ted.method.objectives",
    "ted.options": "ted.settings.options",
    "ted.original_checkpoint": "ted.stages.import_original",
    "ted.pipeline_config": "ted.pipelines.config",
    "ted.pipeline_runner": "ted.pipelines.runner",
    "ted.similarity": "ted.reporting.similarity",
    "ted.speed": "ted.reporting.speed",
    "ted.stats": "ted.reporting.stats",
    "ted.teacher_cache": "ted.method.teacher_cache",
    "ted.training": "ted.method.trainer",
}


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old name and loads a thin module that forwards every attribute to the new one (a fresh module
    object, so the real module's own __spec__ and __name__ stay untouched)."""

    def find_spec(
        self, fullname: str, path: Optional[Sequence[str]] = None, target: Optional[types.ModuleType] = None
    ) -> Optional[ModuleSpec]:
        if fullname not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec: ModuleSpec) -> types.ModuleType:
        return types.ModuleType(spec.name)

    def exec_module(self, module: types.ModuleType) -> None:
        new = MOVED[module.__name__]
        warnings.warn(f"{module.__name__} moved to {new}; import it from there.", DeprecationWarning, stacklevel=2)
        real = importlib.import_module(new)
        module.__getattr__ = lambda name: getattr(real, name)
        module.__dir__ = lambda: dir(real)
        module.__doc__ = real.__doc__


def install() -> None:
    if not any(isinstance(finder, _Alias) for finder in sys.meta_path):
        sys.meta_path.append(_Alias())
