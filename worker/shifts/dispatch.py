"""The shift-change dispatcher: claims due rows exclusively and sends them as waves.

:func:`dispatch_due` promises:

- two dispatchers (two beats running by mistake) never claim the same row: on PostgreSQL the
  candidates are locked with ``FOR UPDATE SKIP LOCKED``; on SQLite, which serialises writers,
  the claiming ``UPDATE`` re-checks the status and ``RETURNING`` says which rows it took;
- claimed rows are sent only after the claim commits, in ``presence.wave`` messages of at most
  ``WAVE_TASK_AGENTS`` agents, with their lateness (dispatch time minus due time) recorded;
- each wave holds one org's rows: every element's ``update`` names the same org (``org`` left
  out for the default org, as in any default-org payload), so ``send_wave`` sends it to that
  org's queue (:func:`wave_queue`);
- rows found more than ``SHIFT_STALE_AFTER_S`` past their due time are ``skipped``, not applied;
- a row claimed earlier but never audited (the dispatcher stopped between claim and send) is
  sent again after ``SHIFT_REDISPATCH_AFTER_S``; its request id (``shift-<id>``) makes a second
  delivery harmless.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, String, cast, exists, literal, select, update
from sqlalchemy.orm import Session

from models import AuditRecord, ShiftChange, ShiftStatus
from models.db import session_scope
from producer.schema import DEFAULT_ORG, queue_for, wave_element, wave_org
from worker import names
from worker.observability import metrics
from worker.settings import Settings
from worker.shifts.schedule import utc

log = logging.getLogger(__name__)

SendWave = Callable[[list[dict[str, Any]]], None]
"""Sends one wave's elements (all of one org, see :func:`wave_org`) as a ``presence.wave``."""
CLAIM_CHUNK = 2000  # rows per claiming statement (bounded IN lists and RETURNING sets)


@dataclass(frozen=True, slots=True)
class DispatchReport:
    claimed: int = 0
    resent: int = 0
    skipped: int = 0
    waves: int = 0
    max_lateness_s: float = 0.0


_COLUMNS = (
    ShiftChange.id,
    ShiftChange.org,
    ShiftChange.user_id,
    ShiftChange.due_at,
    ShiftChange.state,
    ShiftChange.reason,
    ShiftChange.capacity_policy,
    ShiftChange.source,
)


def _take(
    session: Session,
    where: Sequence[ColumnElement[bool]],
    values: dict[str, Any],
    limit: int,
) -> list[Any]:
    """Atomically move up to ``limit`` rows matching ``where`` to ``values``; the rows taken."""
    candidates = (
        select(ShiftChange.id)
        .where(*where)
        .order_by(ShiftChange.due_at, ShiftChange.id)
        .limit(limit)
        .with_for_update(skip_locked=True)  # PostgreSQL; SQLite ignores it (see module doc)
    )
    statement = (
        update(ShiftChange)
        .where(ShiftChange.id.in_(candidates), *where)
        .values(
            **values, dispatches=ShiftChange.dispatches + (1 if "dispatched_at" in values else 0)
        )
        .returning(*_COLUMNS)
        .execution_options(synchronize_session=False)
    )
    return list(session.execute(statement).all())


def _record_lateness(session: Session, rows: list[Any], now: datetime) -> list[float]:
    """Store each row's lateness; returns them in seconds."""
    if not rows:
        return []
    lateness = {row.id: (now - utc(row.due_at)).total_seconds() * 1000 for row in rows}
    session.execute(
        update(ShiftChange),
        [{"id": row_id, "lateness_ms": round(ms, 1)} for row_id, ms in lateness.items()],
        execution_options={"synchronize_session": False},
    )
    return [ms / 1000 for ms in lateness.values()]


def _payload(row: Any) -> dict[str, Any]:
    update_payload: dict[str, Any] = {
        "user_id": row.user_id,
        "state": row.state,
        "source": row.source,
        "requested_at": utc(row.due_at).isoformat(),
        "capacity_policy": row.capacity_policy,
    }
    if row.reason:
        update_payload["reason"] = row.reason
    if row.capacity_policy == "force":
        update_payload["force_reason"] = "scheduled shift change"
    if row.org != DEFAULT_ORG:
        update_payload["org"] = row.org
    return wave_element(names.shift_request_id(row.id), update_payload)


def wave_queue(elements: list[dict[str, Any]]) -> str:
    """The queue a wave built here goes to: its org's (``presence`` for the default org)."""
    return queue_for(wave_org(elements))


def _by_org(rows: list[Any]) -> dict[str, list[Any]]:
    """``rows`` grouped by org, orgs in order of first appearance, rows in their order."""
    groups: dict[str, list[Any]] = {}
    for row in rows:
        groups.setdefault(row.org, []).append(row)
    return groups


def claim_due(
    session: Session, settings: Settings, now: datetime, *, limit: int
) -> tuple[list[Any], list[Any], list[Any], list[float]]:
    """Skip the stale rows, claim the due ones and re-claim the lost ones, in ``session``.

    Returns (claimed, reclaimed, skipped, each claimed row's lateness in seconds, in the order
    of ``claimed``); nothing is sent.
    """
    stale_before = now - timedelta(seconds=settings.shift_stale_after_s)
    skipped = _take(
        session,
        [ShiftChange.status == ShiftStatus.SCHEDULED.value, ShiftChange.due_at < stale_before],
        {
            "status": ShiftStatus.SKIPPED.value,
            "note": f"skipped: found more than {settings.shift_stale_after_s:g} s after its due time",
        },
        limit,
    )
    _record_lateness(session, skipped, now)
    claimed: list[Any] = []
    while len(claimed) < limit:
        taken = _take(
            session,
            [ShiftChange.status == ShiftStatus.SCHEDULED.value, ShiftChange.due_at <= now],
            {"status": ShiftStatus.DISPATCHED.value, "dispatched_at": now},
            min(CLAIM_CHUNK, limit - len(claimed)),
        )
        claimed.extend(taken)
        if len(taken) < CLAIM_CHUNK:
            break
    lateness = _record_lateness(session, claimed, now)
    request_id = literal(names.SHIFT_REQUEST_PREFIX, String) + cast(ShiftChange.id, String)
    lost_before = now - timedelta(seconds=settings.shift_redispatch_after_s)
    reclaimed = _take(
        session,
        [
            ShiftChange.status == ShiftStatus.DISPATCHED.value,
            ShiftChange.dispatched_at < lost_before,
            ~exists().where(AuditRecord.request_id == request_id),
        ],
        {"dispatched_at": now},
        limit,
    )
    return claimed, reclaimed, skipped, lateness


def dispatch_due(
    settings: Settings, send_wave: SendWave, *, now: datetime | None = None, limit: int = 100_000
) -> DispatchReport:
    """Claim what is due (one transaction), then send it in waves. See the module doc."""
    now = now or datetime.now(UTC)
    with session_scope(settings.database_url) as session:
        claimed, reclaimed, stale, lateness = claim_due(session, settings, now, limit=limit)
    skipped = len(stale)
    rows = claimed + reclaimed
    size = settings.wave_task_agents
    waves = 0
    for group in _by_org(rows).values():
        for start in range(0, len(group), size):
            send_wave([_payload(row) for row in group[start : start + size]])
            waves += 1
    late = dict(zip((row.id for row in claimed), lateness, strict=True))
    resent, dropped = _by_org(reclaimed), _by_org(stale)
    for org, group in _by_org(claimed + reclaimed + stale).items():
        metrics.record_shift_dispatch(
            [late[row.id] for row in group if row.id in late],
            len(resent.get(org, ())),
            len(dropped.get(org, ())),
            org=org,
        )
    report = DispatchReport(
        len(claimed), len(reclaimed), skipped, waves, max(lateness, default=0.0)
    )
    if rows or skipped:
        log.info(
            "shift dispatch: %d due, %d re-sent, %d skipped as stale, %d wave(s), worst lateness %.1f s",
            report.claimed,
            report.resent,
            report.skipped,
            report.waves,
            report.max_lateness_s,
        )
    return report
