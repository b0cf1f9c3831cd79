"""What a run is configured with: ted's option dataclasses, its Trainer arguments, and the one parser
that the CLI, config files, the Python API and pipeline sections all go through. Torch-free."""

from __future__ import annotations
