"""Shift schedules (CSV, or a JSON schedule export) read into validated rows, one result per row.

A bad row never stops the read: its :class:`RowResult` carries a one-line error instead. Only a
file that is no schedule at all (unreadable, not UTF-8, not JSON, a bad CSV header, no rows, an
unknown file-wide time zone) raises ``ValueError``, with a one-line message.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo, field_validator

from producer.schema import ShortText, check_org, check_user_id
from worker import rowfiles

REQUIRED_COLUMNS = ("user_id", "at", "state")
COLUMNS = (*REQUIRED_COLUMNS, "reason", "timezone", "capacity_policy", "org")
SUFFIXES = (".csv", ".json")
JSON_KEYS = ("version", "timezone", "changes")
JSON_VERSION = 1
ISO_HINT = "use ISO 8601, e.g. 2026-12-01T09:00:00+01:00"
ZONE_HINT = "an IANA time zone such as Europe/Berlin, America/New_York or UTC"


def resolve_zone(name: str) -> ZoneInfo:
    """The IANA zone ``name``; ``ValueError`` with a one-line message when there is none."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(f"{name[:60]!r} is not {ZONE_HINT}") from None


def _parse_time(value: object) -> datetime:
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str):
        raise ValueError(f"{value!r:.60} is not a time ({ISO_HINT})")
    text = value.strip()
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text[:60]!r} is not a time ({ISO_HINT})") from None
    if "T" not in text.upper() and " " not in text:
        raise ValueError(f"{text!r} is a date without a time of day ({ISO_HINT})")
    return parsed


def _localize(naive: datetime, zone: ZoneInfo, shown: str) -> datetime:
    """``naive`` read as a wall-clock time in ``zone``, in UTC; skipped or repeated times fail."""
    aware = naive.replace(tzinfo=zone)
    if aware.astimezone(UTC).astimezone(zone).replace(tzinfo=None) != naive:
        raise ValueError(
            f"{shown} does not exist in {zone.key} (the clocks skip it); give the time with "
            "its UTC offset"
        )
    later = aware.replace(fold=1)
    if aware.utcoffset() != later.utcoffset():
        raise ValueError(
            f"{shown} happens twice in {zone.key} (the clocks go back); write "
            f"{aware.isoformat()} or {later.isoformat()}"
        )
    return aware.astimezone(UTC)


class ScheduledChange(BaseModel):
    """Set ``user_id`` to ``state`` (``reason``) at ``at``, which validation turns into UTC.

    A time without a UTC offset is read in ``timezone`` (the row's IANA zone), else in the file's
    zone (validation context key ``"timezone"``); with neither it is invalid. A time with an
    offset ignores both zones. ``org`` is the agent's org; None leaves it to the importer
    (``presence shifts import --org``, else ``default``).
    """

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, frozen=True)

    user_id: str
    timezone: str | None = None
    at: datetime
    state: ShortText
    reason: ShortText | None = None
    capacity_policy: Literal["reject", "defer", "force"] = "reject"
    org: str | None = None

    @field_validator("user_id")
    @classmethod
    def _user_id(cls, value: str) -> str:
        return check_user_id(value)

    @field_validator("org")
    @classmethod
    def _org(cls, value: str | None) -> str | None:
        return None if value is None else check_org(value)

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str | None) -> str | None:
        if value is not None:
            resolve_zone(value)
        return value

    @field_validator("at", mode="before")
    @classmethod
    def _at(cls, value: object, info: ValidationInfo) -> datetime:
        parsed = _parse_time(value)
        if parsed.tzinfo is not None:
            return parsed.astimezone(UTC)
        if "timezone" not in info.data:
            return parsed  # the row's timezone is invalid and reported as such
        zone = info.data["timezone"] or (info.context or {}).get("timezone")
        shown = repr(value.strip()) if isinstance(value, str) else parsed.isoformat()
        if zone is None:
            raise ValueError(
                f"{shown} has no UTC offset; add one (e.g. 2026-12-01T09:00:00+01:00) or give "
                f"a timezone ({ZONE_HINT})"
            )
        return _localize(parsed, resolve_zone(zone), shown)


@dataclass(frozen=True, slots=True)
class RowResult:
    """One schedule row: ``change`` when valid, else ``error``, one line starting with where.

    ``line`` is the CSV line the row starts on, or the JSON change's position (from 1).
    """

    line: int
    change: ScheduledChange | None
    error: str | None


def describe(exc: ValidationError) -> str:
    """One line naming each bad field of a :class:`ScheduledChange` and what is wrong with it."""
    return rowfiles.describe(exc, COLUMNS)


def _validate(line: int, where: str, fields: Mapping[str, Any], zone: str | None) -> RowResult:
    try:
        change = ScheduledChange.model_validate(fields, context={"timezone": zone})
    except ValidationError as exc:
        return RowResult(line, None, f"{where}: {describe(exc)}")
    return RowResult(line, change, None)


def parse_schedule(path: Path) -> Iterator[RowResult]:
    """The rows of the schedule at ``path``, in file order; the format follows the suffix.

    Raises ``ValueError`` (one line) at once when the file is not a readable schedule; a bad row
    is a :class:`RowResult` with an error, never an exception.
    """
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(
            f"{path.name}: unknown schedule format {suffix or '(no suffix)'!r}; "
            f"use a {' or '.join(SUFFIXES)} file"
        )
    text = rowfiles.read_text(path)
    try:
        if suffix == ".csv":
            return _csv_rows(text)
        return _json_rows(text)
    except ValueError as exc:
        raise ValueError(f"{path.name}: {exc}") from None


def _csv_rows(text: str) -> Iterator[RowResult]:
    rows = rowfiles.csv_rows(text, COLUMNS, REQUIRED_COLUMNS)  # raises now, not when iterated
    return (
        RowResult(row.line, None, f"line {row.line}: {row.error}")
        if row.fields is None
        else _validate(row.line, f"line {row.line}", row.fields, None)
        for row in rows
    )


def _json_kind(value: object) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "text"
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    return "a number"


def _json_rows(text: str) -> Iterator[RowResult]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from None
    zone: str | None = None
    if isinstance(data, dict):
        unknown = [key for key in data if key not in JSON_KEYS]
        if unknown:
            raise ValueError(
                f"unknown key(s) {', '.join(repr(k[:40]) for k in unknown)} "
                f"(a schedule has {', '.join(JSON_KEYS)})"
            )
        version = data.get("version", JSON_VERSION)
        if version != JSON_VERSION or isinstance(version, bool):
            raise ValueError(
                f"version {version!r:.20} is not supported (this reader knows version "
                f"{JSON_VERSION})"
            )
        zone = data.get("timezone")
        if zone is not None:
            if not isinstance(zone, str):
                raise ValueError(f"timezone: {zone!r:.60} is not {ZONE_HINT}")
            zone = zone.strip()
            try:
                resolve_zone(zone)
            except ValueError as exc:
                raise ValueError(f"timezone: {exc}") from None
        data = data.get("changes")
    if not isinstance(data, list):
        raise ValueError(
            'expected {"version": 1, "changes": [...]} or a list of changes, got '
            f"{_json_kind(data) if data is not None else 'no changes list'}"
        )
    if not data:
        raise ValueError("the changes list is empty: nothing to import")
    return _json_changes(data, zone)


def _json_changes(items: list[Any], zone: str | None) -> Iterator[RowResult]:
    for number, item in enumerate(items, start=1):
        where = f"change {number}"
        if not isinstance(item, dict):
            yield RowResult(
                number,
                None,
                f"{where}: expected an object with {', '.join(REQUIRED_COLUMNS)}, "
                f"got {_json_kind(item)}",
            )
            continue
        fields = {key: value for key, value in item.items() if value is not None}
        yield _validate(number, where, fields, zone)
