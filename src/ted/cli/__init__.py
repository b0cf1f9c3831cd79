"""The `ted` command line: argument dispatch (`main`), the offline demo and its built-in assets."""

from __future__ import annotations
