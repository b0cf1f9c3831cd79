"""The method itself: distillation recipes and loss registries, head kinds, task-aware filters and
Stage I heads, the objectives, the feature and teacher caches, and the Trainer that runs them.

Kept free of imports so the torch-free parts (`recipes`) load without torch."""
