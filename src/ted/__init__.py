"""ted: task-aware layer-wise distillation (TED, ICML 2023) for Hugging Face models."""

__version__ = "0.1.0"

_API = ("finetune", "learn_filters", "distill", "evaluate", "export", "demo", "pipeline")


def __getattr__(name):
    # The API pulls in torch and transformers: import it on first use, so light commands start fast.
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'ted' has no attribute {name!r}")


__all__ = ["finetune", "learn_filters", "distill", "evaluate", "export", "demo", "pipeline", "__version__"]
