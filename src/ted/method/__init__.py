"""The method itself: distillation recipes and loss registries, head kinds, task-aware filters and
Stage I heads, the modules each stage trains and their objectives, the feature and teacher caches, and the
Trainer that runs them.

Kept free of imports so the torch-free parts (`recipes`) load without torch."""

from __future__ import annotations
