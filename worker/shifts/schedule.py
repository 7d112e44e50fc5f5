"""Storing, listing and cancelling scheduled shift changes (SQLite and PostgreSQL).

Every function takes a session and leaves committing to the caller
(:func:`models.db.session_scope`). Times given are converted to UTC; times read back are
UTC-aware (SQLite returns naive UTC).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import islice
from typing import Any, TypeVar, cast

from sqlalchemy import CursorResult, func, insert, select, text, tuple_, update
from sqlalchemy.orm import Session

from models import AuditRecord, ShiftChange, ShiftStatus
from models.storable import fit_values
from producer.schema import DEFAULT_ORG
from worker import names
from worker.shifts.formats import ScheduledChange

CHUNK = 500
"""Rows per statement: (org, user_id, due_at) keys stay well under SQLite's bound-parameter
limit."""
_COMPARED = (
    ShiftChange.state,
    ShiftChange.reason,
    ShiftChange.capacity_policy,
    ShiftChange.source,
    ShiftChange.status,
)

_Key = tuple[str, str, datetime]  # (org, user_id, due_at)
_T = TypeVar("_T")


def _batched(items: Iterable[_T], size: int = CHUNK) -> Iterator[list[_T]]:
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch


def utc(value: datetime) -> datetime:
    """``value`` in UTC; a naive value (as SQLite returns them) is taken to be UTC already."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@dataclass(slots=True)
class AddResult:
    """What :func:`add_changes` did with each change it was given (the counts add up to them).

    ``unchanged``: a scheduled row already said the same; ``already_done``: the row was
    dispatched, skipped or cancelled and is left alone; ``duplicates``: a later change in the
    same call for the same agent and time (the later one is the one stored).
    """

    added: int = 0
    updated: int = 0
    unchanged: int = 0
    already_done: int = 0
    duplicates: int = 0

    @property
    def total(self) -> int:
        return self.added + self.updated + self.unchanged + self.already_done + self.duplicates


def add_changes(
    session: Session,
    changes: Iterable[ScheduledChange],
    *,
    source: str,
    now: datetime,
    org: str = DEFAULT_ORG,
) -> AddResult:
    """Store ``changes``; one row per (org, agent, due time), later changes for the same one win.
    A change's own ``org`` wins over ``org``, the org of the changes that name none.

    A row still ``scheduled`` is updated in place (state, reason, capacity policy, source); a
    row already dispatched, skipped or cancelled is never touched, even when the dispatcher
    claims it during the call. ``changes`` is consumed in chunks of :data:`CHUNK`, so a
    generator streams. ``source`` is at most 100 characters.
    """
    if session.get_bind().dialect.name == "postgresql":
        # psycopg prepares a statement run 5 times; on a table not yet analyzed PostgreSQL then
        # caches a sequential-scan plan for the lookup below (10x slower per chunk).
        session.execute(text("SET LOCAL plan_cache_mode = force_custom_plan"))
    result = AddResult()
    seen: set[_Key] = set()
    created = utc(now)
    for chunk in _batched(changes):
        latest: dict[_Key, ScheduledChange] = {}
        for change in chunk:
            key = (change.org or org, change.user_id, utc(change.at))
            if key in latest or key in seen:
                result.duplicates += 1
            latest[key] = change
        existing = {
            (row.org, row.user_id, utc(row.due_at)): row
            for row in session.execute(
                select(
                    *_COMPARED,
                    ShiftChange.id,
                    ShiftChange.org,
                    ShiftChange.user_id,
                    ShiftChange.due_at,
                )
                .where(
                    tuple_(ShiftChange.org, ShiftChange.user_id, ShiftChange.due_at).in_(
                        list(latest)
                    )
                )
                .with_for_update()
            )
        }
        inserts: list[dict[str, Any]] = []
        updates: list[dict[str, Any]] = []
        for key, change in latest.items():
            wanted: dict[str, Any] = fit_values(
                ShiftChange.__table__,
                {
                    "state": change.state,
                    "reason": change.reason,
                    "capacity_policy": change.capacity_policy,
                    "source": source,
                },
            )
            row = existing.get(key)
            counted = key not in seen
            seen.add(key)
            if row is None:
                inserts.append(
                    {
                        **wanted,
                        "org": key[0],
                        "user_id": key[1],
                        "due_at": key[2],
                        "status": ShiftStatus.SCHEDULED.value,
                        "created_at": created,
                        "dispatches": 0,
                    }
                )
                result.added += counted
            elif row.status != ShiftStatus.SCHEDULED:
                result.already_done += counted
            elif all(row._mapping[name] == value for name, value in wanted.items()):
                result.unchanged += counted
            else:
                updates.append({"id": row.id, **wanted})
                result.updated += counted
        if inserts:
            session.execute(insert(ShiftChange), inserts)
        if updates:
            session.execute(
                update(ShiftChange)
                .where(ShiftChange.status == ShiftStatus.SCHEDULED.value)
                .execution_options(synchronize_session=None),
                updates,
            )
    return result


@dataclass(frozen=True, slots=True)
class ShiftRow:
    """A shift change as listed, with its request's audit outcome once a worker recorded one."""

    id: int
    org: str
    user_id: str
    due_at: datetime
    state: str
    reason: str | None
    capacity_policy: str
    source: str
    status: str
    created_at: datetime
    dispatched_at: datetime | None
    lateness_ms: float | None
    dispatches: int
    note: str | None
    outcome: str | None
    outcome_detail: str | None

    @property
    def request_id(self) -> str:
        return names.shift_request_id(self.id)


def list_changes(
    session: Session,
    *,
    status: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    user_id: str | None = None,
    org: str | None = None,
    limit: int = 50,
) -> list[ShiftRow]:
    """Up to ``limit`` changes ordered by due time, due in [``since``, ``until``] (both
    inclusive, either open), of ``org`` when given, with the audit outcome of their request
    (``shift-<id>``)."""
    query = select(ShiftChange).order_by(ShiftChange.due_at, ShiftChange.id).limit(limit)
    if status is not None:
        query = query.where(ShiftChange.status == status)
    if since is not None:
        query = query.where(ShiftChange.due_at >= utc(since))
    if until is not None:
        query = query.where(ShiftChange.due_at <= utc(until))
    if user_id is not None:
        query = query.where(ShiftChange.user_id == user_id)
    if org is not None:
        query = query.where(ShiftChange.org == org)
    rows = list(session.scalars(query))
    audits: dict[str, AuditRecord] = {}
    for request_ids in _batched([row.request_id for row in rows]):
        for record in session.scalars(
            select(AuditRecord).where(AuditRecord.request_id.in_(request_ids))
        ):
            audits[record.request_id] = record
    listed = []
    for row in rows:
        audit = audits.get(row.request_id)
        detail = None
        if audit is not None and (audit.error_code or audit.error_message):
            detail = ": ".join(p for p in (audit.error_code, audit.error_message) if p)
        listed.append(
            ShiftRow(
                id=row.id,
                org=row.org,
                user_id=row.user_id,
                due_at=utc(row.due_at),
                state=row.state,
                reason=row.reason,
                capacity_policy=row.capacity_policy,
                source=row.source,
                status=row.status,
                created_at=utc(row.created_at),
                dispatched_at=utc(row.dispatched_at) if row.dispatched_at else None,
                lateness_ms=row.lateness_ms,
                dispatches=row.dispatches,
                note=row.note,
                outcome=audit.outcome if audit is not None else None,
                outcome_detail=detail,
            )
        )
    return listed


def cancel_changes(
    session: Session,
    *,
    ids: list[int] | None = None,
    user_id: str | None = None,
    until: datetime | None = None,
    org: str | None = None,
    now: datetime,
) -> int:
    """Cancel the ``scheduled`` changes matching every selector given; how many were cancelled.

    ``ids``, ``user_id`` and ``until`` (due at or before) combine; at least one is required
    (``ValueError`` otherwise); ``org`` narrows any of them to one org. Rows in any other status
    are never changed.
    """
    if not ids and user_id is None and until is None:
        raise ValueError("give at least one of ids, user_id or until")
    conditions = [ShiftChange.status == ShiftStatus.SCHEDULED.value]
    if user_id is not None:
        conditions.append(ShiftChange.user_id == user_id)
    if until is not None:
        conditions.append(ShiftChange.due_at <= utc(until))
    if org is not None:
        conditions.append(ShiftChange.org == org)
    groups: Iterable[list[int] | None] = _batched(ids) if ids else [None]
    note = f"cancelled at {utc(now).isoformat(timespec='seconds')}"
    cancelled = 0
    for group in groups:
        selected = conditions if group is None else [*conditions, ShiftChange.id.in_(group)]
        result = cast(
            "CursorResult[Any]",
            session.execute(
                update(ShiftChange)
                .where(*selected)
                .values(status=ShiftStatus.CANCELLED.value, note=note)
                .execution_options(synchronize_session=False)
            ),
        )
        cancelled += result.rowcount
    return cancelled


def summary(session: Session) -> dict[str, int]:
    """Rows per status, every status present (zero when none)."""
    counts = dict.fromkeys((s.value for s in ShiftStatus), 0)
    for status, count in session.execute(
        select(ShiftChange.status, func.count()).group_by(ShiftChange.status)
    ):
        counts[status] = count
    return counts
