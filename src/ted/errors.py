"""Errors raised for bad user input, before any compute is spent."""

from __future__ import annotations


class TedInputError(ValueError):
    """A file, column, label, config or model combination that cannot work.

    The message always says what was found, what was expected and how to fix it.
    """
