"""Operator files of rows (CSV with a header): reading, header checks and one-line errors.

The one reader behind ``presence import`` and ``presence shifts import``. A file that cannot be
read as a whole (not UTF-8, unreadable, no header, a bad header, no rows) raises ``ValueError``
with one line that names the file and, where there is one, the line; a bad row is a
:class:`CsvRow` with an error, never an exception. Blank lines and lines starting with ``#`` are
skipped, and line numbers are the file's own (blank lines and multi-line quoted cells count).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

Record = tuple[int, list[str] | str]  # (first line, cells or a CSV error)


def read_text(path: Path) -> str:
    """The UTF-8 text of ``path`` (a BOM is dropped); ``ValueError`` naming the file and the
    line of the first byte that is not UTF-8, or why the file cannot be read."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ValueError(
            f"{path.name}: line {line} is not UTF-8 text (byte {column} of the line); "
            "save the file as UTF-8"
        ) from None


def csv_records(text: str) -> list[Record]:
    """(start line, cells or a CSV error) per record, without blank and ``#`` lines."""
    reader = csv.reader(io.StringIO(text, newline=""))
    records: list[Record] = []
    while True:
        start = reader.line_num + 1
        try:
            cells = next(reader)
        except StopIteration:
            return records
        except csv.Error as exc:
            records.append((start, f"not readable as CSV: {exc}"))
            continue
        if not any(cell.strip() for cell in cells) or cells[0].lstrip().startswith("#"):
            continue
        records.append((start, cells))


def csv_columns(
    line: int, header: list[str], known: Sequence[str], required: Sequence[str]
) -> list[str]:
    """The header's column names (lower case); ``ValueError`` for unnamed, unknown, repeated or
    missing columns, all in one line."""
    names = [cell.strip().lower() for cell in header]
    while names and not names[-1]:
        names.pop()
    problems = []
    if "" in names:
        problems.append(f"column {names.index('') + 1} has no name")
    unknown = [name for name in names if name and name not in known]
    if unknown:
        problems.append(f"unknown column(s) {', '.join(repr(n[:40]) for n in unknown)}")
    repeated = sorted({name for name in names if name and names.count(name) > 1})
    if repeated:
        problems.append(f"column(s) {', '.join(repeated)} given twice")
    missing = [name for name in required if name not in names]
    if missing:
        problems.append(f"missing column(s) {', '.join(missing)}")
    if problems:
        raise ValueError(
            f"line {line}: {'; '.join(problems)} (the columns are {', '.join(known)}; "
            f"{', '.join(required)} are required)"
        )
    return names


@dataclass(frozen=True, slots=True)
class CsvRow:
    """One data row: its non-empty ``fields`` by column, or ``error`` (one line, no "where")."""

    line: int
    fields: dict[str, str] | None
    error: str | None


def csv_rows(text: str, known: Sequence[str], required: Sequence[str]) -> list[CsvRow]:
    """The data rows of a CSV ``text`` whose header names columns of ``known``.

    Raises ``ValueError`` (one line, without the file's name) when there is no header, the
    header is bad, or no row follows it.
    """
    records = csv_records(text)
    if not records:
        raise ValueError(f"no header row (the columns are {', '.join(known)})")
    header_line, header = records[0]
    if isinstance(header, str):
        raise ValueError(f"line {header_line}: {header}")
    columns = csv_columns(header_line, header, known, required)
    if len(records) == 1:
        raise ValueError(f"no rows after the header on line {header_line}: nothing to import")
    return [_row(line, columns, cells) for line, cells in records[1:]]


def _row(line: int, columns: list[str], cells: list[str] | str) -> CsvRow:
    if isinstance(cells, str):
        return CsvRow(line, None, " ".join(cells.split()))
    if any(cell.strip() for cell in cells[len(columns) :]):
        return CsvRow(
            line,
            None,
            f"{len(cells)} cells but the header names {len(columns)} columns "
            "(quote values that contain commas)",
        )
    fields = {name: cell for name, cell in zip(columns, cells, strict=False) if cell.strip()}
    return CsvRow(line, fields, None)


def describe(exc: ValidationError, columns: Sequence[str]) -> str:
    """One line naming each bad field of a row model and what is wrong with it."""
    parts = []
    for error in exc.errors(include_url=False):
        field = ".".join(str(p) for p in error["loc"])
        kind, given = error["type"], error.get("input")
        if kind == "value_error":
            text = str(error["ctx"]["error"])
        elif kind == "missing":
            text = "empty or missing (required)"
        elif kind == "extra_forbidden":
            text = f"unknown field (the fields are {', '.join(columns)})"
        elif kind == "literal_error":
            text = f"{given!r:.60} is not {error['ctx']['expected']}"
        elif kind == "string_too_short":
            text = "empty"
        elif kind == "string_too_long":
            text = f"longer than {error['ctx']['max_length']} characters"
        elif kind == "string_type":
            text = f"{given!r:.60} is not text"
        else:
            text = error["msg"]
        parts.append(f"{field}: {text}" if field else text)
    return " ".join("; ".join(parts).split())
