"""``presence import`` files: CSV rows read into validated presence updates, one result per row.

The file handling is :mod:`worker.rowfiles`' (encoding, comments, blank lines, header checks,
true line numbers), shared with shift schedules. File order is request order: each row's
``requested_at`` is one microsecond after the previous row's, so a later line for the same agent
wins.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from pydantic import ValidationError

from producer.schema import DEFAULT_ORG, PresenceUpdate
from worker import rowfiles

REQUIRED_COLUMNS = ("user_id", "state")
COLUMNS = (
    *REQUIRED_COLUMNS,
    "reason",
    "source",
    "expected_state",
    "idempotency_key",
    "message",
    "org",
)


@dataclass(frozen=True, slots=True)
class ImportRow:
    """One row: ``update`` when valid, else ``error`` (one line starting with ``line N:``)."""

    line: int
    update: PresenceUpdate | None
    error: str | None


def parse_updates(
    path: Path, *, source: str, now: datetime, org: str = DEFAULT_ORG
) -> list[ImportRow]:
    """The rows of the CSV at ``path`` in file order; rows without a source get ``source``,
    rows without an org get ``org``.

    Raises ``ValueError`` (one line naming the file) when the file is not an import file at all:
    unreadable, not UTF-8, no header or a bad one, or no rows after the header.
    """
    text = rowfiles.read_text(path)
    try:
        rows = rowfiles.csv_rows(text, COLUMNS, REQUIRED_COLUMNS)
    except ValueError as exc:
        raise ValueError(f"{path.name}: {exc}") from None
    results = []
    for position, row in enumerate(rows, start=1):
        where = f"line {row.line}"
        if row.fields is None:
            results.append(ImportRow(row.line, None, f"{where}: {row.error}"))
            continue
        fields: dict[str, object] = {"source": source, "org": org, **row.fields}
        fields["requested_at"] = now + timedelta(microseconds=position)
        try:
            update = PresenceUpdate.model_validate(fields)
        except ValidationError as exc:
            results.append(ImportRow(row.line, None, f"{where}: {rowfiles.describe(exc, COLUMNS)}"))
        else:
            results.append(ImportRow(row.line, update, None))
    return results
