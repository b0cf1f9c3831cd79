"""`python -m ted ...` is the `ted` command (also `python -m ted.cli.main ...`, e.g. under torchrun)."""

import sys

from ted.cli.main import main

sys.exit(main())
