"""SQuAD 1.1 / 2.0 support that needs no model: windows, span post-processing, official scoring.

Exports load lazily, so ``python -m ted.squad.metric`` runs cleanly and scoring does not import
``datasets`` or ``transformers``.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "evaluate_squad": "metric",
    "evaluate_squad_rows": "metric",
    "exact_match": "metric",
    "f1_score": "metric",
    "main": "metric",
    "normalize_answer": "metric",
    "SpanPostprocessor": "postprocess",
    "write_prediction_files": "postprocess",
    "prepare_eval_features": "windows",
    "prepare_train_features": "windows",
    "squad_examples_from_json": "windows",
    "squad_features": "windows",
    "squad_rows_from_json": "windows",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
