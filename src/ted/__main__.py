"""`python -m ted ...` is the `ted` command (also `python -m ted.cli.main ...`, e.g. under torchrun)."""

from __future__ import annotations

import sys

from ted.cli.main import main

sys.exit(main())
