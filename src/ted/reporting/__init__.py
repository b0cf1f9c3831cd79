"""What users read after a run: the comparison report, its statistics and similarity plots, the speed
table and the model card."""

from __future__ import annotations
