"""ted: task-aware layer-wise distillation (TED, ICML 2023) for Hugging Face models."""

__version__ = "0.1.0"

from .api import demo, distill, evaluate, export, finetune, learn_filters, pipeline  # noqa: E402

__all__ = ["finetune", "learn_filters", "distill", "evaluate", "export", "demo", "pipeline", "__version__"]
