"""Storing, listing and cancelling shift changes on real databases (SQLite, and PostgreSQL where
it runs): re-imports update only rows still scheduled, listings carry the audit outcome, and
cancelling touches only scheduled rows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import event, select, update

from models import AuditRecord, ShiftChange, ShiftStatus
from models.db import engine_for, session_scope
from worker.shifts import schedule
from worker.shifts.formats import ScheduledChange
from worker.shifts.schedule import CHUNK, AddResult

AGENT = "3ce84f47-4e65-4756-a815-{:012d}"
T0 = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def change(n: int = 0, at: datetime = T0, state: str = "Break", **fields: Any) -> ScheduledChange:
    return ScheduledChange(user_id=AGENT.format(n), at=at, state=state, **fields)


def add(url: str, *changes: ScheduledChange, source: str = "roster.csv") -> AddResult:
    with session_scope(url) as session:
        return schedule.add_changes(session, changes, source=source, now=NOW)


def stored(url: str) -> list[ShiftChange]:
    with session_scope(url) as session:
        return list(session.scalars(select(ShiftChange).order_by(ShiftChange.id)))


def set_status(url: str, row_id: int, status: ShiftStatus) -> None:
    with session_scope(url) as session:
        session.execute(
            update(ShiftChange).where(ShiftChange.id == row_id).values(status=status.value)
        )


def listed(url: str, **filters: Any) -> list[schedule.ShiftRow]:
    with session_scope(url) as session:
        return schedule.list_changes(session, **{"limit": 50, **filters})


def cancel(url: str, **selectors: Any) -> int:
    with session_scope(url) as session:
        return schedule.cancel_changes(session, now=NOW, **selectors)


# -- add ----------------------------------------------------------------------------------------
def test_new_changes_are_added_as_scheduled_rows_in_utc(database_url):
    berlin = timezone(timedelta(hours=1))
    result = add(
        database_url,
        change(1, T0.astimezone(berlin), reason="Coffee", capacity_policy="defer"),
        change(2, T0 + timedelta(hours=1), state="On Queue"),
    )

    assert result == AddResult(added=2)
    first, second = stored(database_url)
    assert schedule.utc(first.due_at) == T0
    assert (first.user_id, first.state, first.reason) == (AGENT.format(1), "Break", "Coffee")
    assert (first.capacity_policy, first.source, first.status) == (
        "defer",
        "roster.csv",
        "scheduled",
    )
    assert schedule.utc(first.created_at) == NOW
    assert first.dispatches == 0
    assert second.state == "On Queue"


def test_importing_again_updates_scheduled_rows_in_place(database_url):
    add(database_url, change(1), change(2), change(3))
    lunch = change(2, state="Meal", reason="Lunch", capacity_policy="force")

    result = add(database_url, change(1), lunch, change(3), change(4), source="v2.csv")

    assert result == AddResult(added=1, updated=3)  # a new source is an update too
    rows = {row.user_id: row for row in stored(database_url)}
    assert [row.id for row in rows.values()] == [1, 2, 3, 4]
    updated = rows[AGENT.format(2)]
    assert (updated.state, updated.reason, updated.capacity_policy) == ("Meal", "Lunch", "force")
    assert {row.source for row in rows.values()} == {"v2.csv"}
    assert add(database_url, change(1), lunch, source="v2.csv") == AddResult(unchanged=2)


def test_rows_already_dispatched_skipped_or_cancelled_are_left_alone(database_url):
    add(database_url, change(1), change(2), change(3), change(4))
    set_status(database_url, 1, ShiftStatus.DISPATCHED)
    set_status(database_url, 2, ShiftStatus.SKIPPED)
    set_status(database_url, 3, ShiftStatus.CANCELLED)

    result = add(database_url, *(change(n, state="Meal") for n in (1, 2, 3, 4)))

    assert result == AddResult(updated=1, already_done=3)
    assert [(row.status, row.state) for row in stored(database_url)] == [
        ("dispatched", "Break"),
        ("skipped", "Break"),
        ("cancelled", "Break"),
        ("scheduled", "Meal"),
    ]


def test_the_same_agent_and_time_twice_in_one_call_keeps_the_later(database_url):
    result = add(
        database_url,
        change(1, state="Break"),
        change(2),
        change(1, state="Meal"),
        change(1, at=T0 + timedelta(minutes=30), state="On Queue"),
    )

    assert result == AddResult(added=3, duplicates=1)
    assert [(row.user_id, row.state) for row in stored(database_url)] == [
        (AGENT.format(1), "Meal"),
        (AGENT.format(2), "Break"),
        (AGENT.format(1), "On Queue"),
    ]


def test_a_duplicate_in_a_later_chunk_still_counts_once(database_url):
    changes = [change(n) for n in range(CHUNK)]

    result = add(database_url, *changes, change(0, state="Meal"), change(CHUNK))

    assert result == AddResult(added=CHUNK + 1, duplicates=1)
    assert result.total == CHUNK + 2
    assert stored(database_url)[0].state == "Meal"


def test_ten_thousand_rows_take_a_few_statements_per_chunk(database_url):
    changes = [change(n, at=T0 + timedelta(minutes=n % 7)) for n in range(10_000)]
    statements: list[str] = []
    engine = engine_for(database_url)

    def count(_conn, _cursor, statement, *_rest) -> None:
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        first = add(database_url, *changes)
        second = add(database_url, *changes)
    finally:
        event.remove(engine, "before_cursor_execute", count)

    assert first == AddResult(added=10_000)
    assert second == AddResult(unchanged=10_000)
    chunks = 2 * 10_000 // CHUNK
    assert len(statements) <= 3 * chunks + 10, f"{len(statements)} statements"


# -- list ---------------------------------------------------------------------------------------
def test_listing_orders_by_due_time_and_joins_the_audit_outcome(database_url):
    add(
        database_url,
        change(1, at=T0 + timedelta(hours=2)),
        change(2, at=T0),
        change(3, at=T0 + timedelta(hours=1)),
    )
    set_status(database_url, 1, ShiftStatus.DISPATCHED)
    set_status(database_url, 2, ShiftStatus.DISPATCHED)
    with session_scope(database_url) as session:
        session.add_all(
            [
                AuditRecord(request_id="shift-1", outcome="confirmed", finished_at=T0),
                AuditRecord(
                    request_id="shift-2",
                    outcome="failed",
                    error_code="not.found",
                    error_message="user not found",
                    finished_at=T0,
                ),
                AuditRecord(request_id="shift-30", outcome="invalid", finished_at=T0),
            ]
        )

    rows = listed(database_url)

    assert [(r.id, r.status, r.outcome, r.outcome_detail) for r in rows] == [
        (2, "dispatched", "failed", "not.found: user not found"),
        (3, "scheduled", None, None),
        (1, "dispatched", "confirmed", None),
    ]
    assert rows[0].due_at == T0
    assert rows[0].due_at.tzinfo is not None
    assert rows[0].request_id == "shift-2"


def test_listing_filters_combine(database_url):
    add(
        database_url,
        change(1, at=T0),
        change(1, at=T0 + timedelta(hours=1)),
        change(1, at=T0 + timedelta(hours=2)),
        change(2, at=T0 + timedelta(hours=1)),
    )
    set_status(database_url, 2, ShiftStatus.CANCELLED)
    plus_one = timezone(timedelta(hours=1))

    def ids(**filters: Any) -> list[int]:
        return [row.id for row in listed(database_url, **filters)]

    assert ids() == [1, 2, 4, 3]
    assert ids(user_id=AGENT.format(1)) == [1, 2, 3]
    assert ids(status="scheduled") == [1, 4, 3]
    assert ids(since=T0 + timedelta(hours=1)) == [2, 4, 3]
    assert ids(until=(T0 + timedelta(hours=1)).astimezone(plus_one)) == [1, 2, 4]
    assert ids(since=T0 + timedelta(minutes=30), until=T0 + timedelta(minutes=90)) == [2, 4]
    assert ids(status="scheduled", user_id=AGENT.format(1), since=T0 + timedelta(hours=1)) == [3]
    assert ids(limit=2) == [1, 2]


def test_summary_counts_every_status(database_url):
    add(database_url, change(1), change(2), change(3))
    set_status(database_url, 1, ShiftStatus.SKIPPED)

    with session_scope(database_url) as session:
        counts = schedule.summary(session)

    assert counts == {"scheduled": 2, "dispatched": 0, "skipped": 1, "cancelled": 0}


# -- cancel -------------------------------------------------------------------------------------
def test_cancelling_by_id_touches_only_scheduled_rows(database_url):
    add(database_url, change(1), change(2), change(3))
    set_status(database_url, 2, ShiftStatus.DISPATCHED)

    assert cancel(database_url, ids=[1, 2, 99]) == 1
    assert cancel(database_url, ids=[1]) == 0

    rows = stored(database_url)
    assert [row.status for row in rows] == ["cancelled", "dispatched", "scheduled"]
    assert rows[0].note == "cancelled at 2026-11-30T12:00:00+00:00"
    assert rows[1].note is None


def test_cancelling_by_agent_and_due_time_combines_the_selectors(database_url):
    add(
        database_url,
        change(1, at=T0),
        change(1, at=T0 + timedelta(hours=2)),
        change(2, at=T0),
        change(3, at=T0 + timedelta(hours=5)),
    )

    assert cancel(database_url, user_id=AGENT.format(1), until=T0 + timedelta(hours=1)) == 1
    assert cancel(database_url, until=T0 + timedelta(hours=2)) == 2
    assert cancel(database_url, user_id=AGENT.format(3)) == 1
    assert [row.status for row in stored(database_url)] == ["cancelled"] * 4


def test_cancelling_needs_a_selector(database_url):
    add(database_url, change(1))

    with pytest.raises(ValueError, match="at least one of ids, user_id or until"):
        cancel(database_url, ids=[])

    assert stored(database_url)[0].status == "scheduled"


# -- orgs ---------------------------------------------------------------------------------------
def test_the_same_agent_and_time_in_two_orgs_are_two_rows(database_url):
    with session_scope(database_url) as session:
        first = schedule.add_changes(session, [change(1)], source="a.csv", now=NOW)
        second = schedule.add_changes(session, [change(1)], source="b.csv", now=NOW, org="acme")
        again = schedule.add_changes(
            session, [change(1, state="Meal", org="acme")], source="b.csv", now=NOW
        )

    assert (first.added, second.added, again.updated) == (1, 1, 1)
    rows = {row.org: row for row in stored(database_url)}
    assert set(rows) == {"default", "acme"}
    assert (rows["default"].state, rows["acme"].state) == ("Break", "Meal")


def test_a_changes_own_org_wins_over_the_importers(database_url):
    with session_scope(database_url) as session:
        schedule.add_changes(
            session, [change(1, org="globex"), change(2)], source="a.csv", now=NOW, org="acme"
        )

    assert [(row.user_id, row.org) for row in stored(database_url)] == [
        (AGENT.format(1), "globex"),
        (AGENT.format(2), "acme"),
    ]


def test_listing_and_cancelling_narrow_to_one_org(database_url):
    with session_scope(database_url) as session:
        schedule.add_changes(session, [change(1), change(2)], source="a.csv", now=NOW)
        schedule.add_changes(session, [change(1)], source="b.csv", now=NOW, org="acme")

    assert [row.org for row in listed(database_url, org="acme")] == ["acme"]
    assert len(listed(database_url)) == 3
    assert cancel(database_url, user_id=AGENT.format(1), org="acme") == 1
    statuses = {(row.org, row.user_id): row.status for row in stored(database_url)}
    assert statuses[("acme", AGENT.format(1))] == "cancelled"
    assert statuses[("default", AGENT.format(1))] == "scheduled"
