"""A first pass over a user's CSV / TSV / JSON / JSONL file, before the datasets library reads it.

The library's own errors name no file or line ("An error occurred while generating the dataset",
"Instruction 'train' corresponds to no data!"), and some broken files it reads without complaint
(a CSV row with one field too many silently turns the first column into an index). This pass
refuses such files with one line naming the file and line, and records on which line each data
row starts, so later checks (labels, empty cells) can point to the line the user sees in an editor.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from collections.abc import Iterator
from typing import Optional

from ted.errors import TedInputError

_UTF8_HINT = "save it as UTF-8 (e.g. 'Save as CSV UTF-8' in a spreadsheet, or iconv -t UTF-8)"


class RowLines:
    """Where each data row of a file starts: `where(i)` is "line N" (or "record N" when unknown)."""

    def __init__(self, lines: Optional[list[int]] = None) -> None:
        self.lines = lines

    def where(self, i: int) -> str:
        if self.lines is not None and i < len(self.lines):
            return f"line {self.lines[i]}"
        return f"record {i + 1}"

    def matches(self, n_rows: int) -> RowLines:
        """Keep the line numbers only when this pass saw the same rows as the library (never name a wrong line)."""
        return self if self.lines is not None and len(self.lines) == n_rows else RowLines()


def check_utf8(path: str, name: str) -> None:
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise TedInputError(
                    f"{name}, line {number}: not UTF-8 text (byte 0x{raw[err.start]:02x} at byte {err.start + 1} "
                    f"of the line); {_UTF8_HINT}."
                ) from None


def _check_not_empty(path: str, name: str) -> None:
    with open(path, "rb") as fh:
        for raw in fh:
            if raw.strip(b" \t\r\n\xef\xbb\xbf"):  # BOM and whitespace alone are still an empty file
                return
    raise TedInputError(f"{name} is empty: it needs a header line and at least one data row.")


def _scan_delimited(path: str, name: str, delimiter: str) -> RowLines:
    kind = "tab" if delimiter == "\t" else "comma"
    # Long texts are fine: the csv module's default 128 KiB field cap is not a limit of the format.
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    lines: list[int] = []
    header: Optional[list[str]] = None
    header_line = 0
    # utf-8-sig: a byte-order mark (Excel's "CSV UTF-8") is not part of the first column name.
    with open(path, encoding="utf-8-sig", newline="") as fh:
        reader = csv.reader(fh, delimiter=delimiter)
        previous_end = 0
        try:
            for row in reader:
                start, previous_end = previous_end + 1, reader.line_num
                if not row:  # blank lines carry no row (the reader behind datasets skips them too)
                    continue
                if header is None:
                    header, header_line = row, start
                    continue
                if len(row) != len(header):
                    # A row read across several lines usually means a quote that is never closed.
                    quote = f" A quote on line {start} seems never closed." if reader.line_num > start else ""
                    raise TedInputError(
                        f"{name}, line {start}: {len(row)} field(s), but the header (line {header_line}) has "
                        f"{len(header)} ({kind}-separated).{quote} Quote fields that contain the separator, or fix "
                        f"the row."
                    )
                lines.append(start)
        except csv.Error as err:
            raise TedInputError(f"{name}, line {reader.line_num}: {err}. Check the quoting of that row.") from None
    if not lines:
        raise TedInputError(f"{name} has a header but no data rows.")
    return RowLines(lines)


def json_objects(path: str | os.PathLike, name: str, example: str) -> Iterator[tuple[int, dict]]:
    """(line number, object) of every non-blank line of a JSON Lines file; a line that is not one JSON object
    is refused naming the line (`example` shows what a row should look like)."""
    with open(path, encoding="utf-8-sig") as fh:
        for number, text in enumerate(fh, start=1):
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as err:
                raise TedInputError(
                    f"{name}, line {number}: not valid JSON ({err.msg} at column {err.colno}); each line must "
                    f"hold one JSON object like {example}."
                ) from None
            if not isinstance(record, dict):
                raise TedInputError(
                    f"{name}, line {number}: a JSON {type(record).__name__}, expected one object per line "
                    f"like {example}."
                )
            yield number, record


def _scan_json_lines(path: str, name: str) -> RowLines:
    return RowLines([number for number, _ in json_objects(path, name, '{"text": ..., "label": ...}')])


def _first_json_line_is_object(text: str) -> bool:
    first = next((line for line in text.splitlines() if line.strip()), "")
    try:
        return isinstance(json.loads(first), dict)
    except json.JSONDecodeError:
        return False


def _scan_json(path: str, name: str) -> RowLines:
    """A .json file is one JSON document (a list of records) or, like .jsonl, one object per line."""
    with open(path, encoding="utf-8-sig") as fh:
        text = fh.read()
    try:
        document = json.loads(text)
    except json.JSONDecodeError as err:
        if _first_json_line_is_object(text):  # JSON lines: find the broken line
            return _scan_json_lines(path, name)
        raise TedInputError(f"{name}, line {err.lineno}: not valid JSON ({err.msg} at column {err.colno}).") from None
    if isinstance(document, list) and not document:
        raise TedInputError(f"{name} holds an empty JSON list: no data rows.")
    return RowLines()


def scan_file(path: str, name: str, ext: str) -> RowLines:
    """Refuse an empty, non-UTF-8, ragged or unparsable file (one line naming `name` and the line).

    `name` is how messages refer to the file (e.g. "--train_file data/train.csv").
    """
    _check_not_empty(path, name)
    check_utf8(path, name)
    if ext in (".csv", ".tsv"):
        return _scan_delimited(path, name, "\t" if ext == ".tsv" else ",")
    if ext == ".jsonl":
        lines = _scan_json_lines(path, name)
        if not lines.lines:
            raise TedInputError(f"{name} holds no JSON objects: no data rows.")
        return lines
    return _scan_json(path, name)


def root_cause(err: BaseException) -> str:
    """The innermost error's first line: the library wraps the useful message in generic ones."""
    while err.__cause__ is not None or (err.__context__ is not None and not err.__suppress_context__):
        err = err.__cause__ or err.__context__
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".rstrip(": ")
