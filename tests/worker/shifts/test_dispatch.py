"""The shift dispatcher against real databases (SQLite, and PostgreSQL where it runs).

It must claim each due row exactly once however many dispatchers run, send only after its claim
committed, skip what is too late, and send again what was claimed but never audited.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import select

from models import AuditRecord, ShiftChange
from models.db import session_scope
from tests.support.shifts import schedule
from worker.settings import Settings
from worker.shifts.dispatch import dispatch_due, wave_org, wave_queue

AGENT = "3ce84f47-4e65-4756-a815-{:012d}"


def settings_for(url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": url,
        "wave_task_agents": 100,
        "shift_stale_after_s": 600,
        "shift_redispatch_after_s": 300,
        **overrides,
    }
    return Settings(**values)


def add_rows(url: str, count: int, due_at: datetime, *, first_agent: int = 0) -> list[int]:
    changes = [
        (
            AGENT.format(first_agent + i),
            "On Queue" if i % 2 else "Break",
            None if i % 2 else "Coffee",
        )
        for i in range(count)
    ]
    return schedule(url, changes, due_at, source="roster.csv")


def dispatched_metric() -> float:
    value = REGISTRY.get_sample_value(
        "presence_shift_changes_total", {"event": "dispatched", "org": "default"}
    )
    return value or 0.0


def shift_rows(url: str) -> dict[int, ShiftChange]:
    with session_scope(url) as session:
        return {r.id: r for r in session.scalars(select(ShiftChange))}


def test_due_rows_are_sent_in_waves_only_after_their_claim_committed(database_url: str) -> None:
    now = datetime.now(UTC)
    due = add_rows(database_url, 250, now - timedelta(seconds=10))
    future = add_rows(database_url, 10, now + timedelta(seconds=60), first_agent=1000)
    waves: list[list[dict[str, Any]]] = []
    dispatched_before = dispatched_metric()

    def send(elements: list[dict[str, Any]]) -> None:
        committed = shift_rows(database_url)  # another session sees the claim already
        assert {committed[int(e["request_id"][6:])].status for e in elements} == {"dispatched"}
        waves.append(elements)

    report = dispatch_due(settings_for(database_url), send, now=now)

    assert (report.claimed, report.resent, report.skipped, report.waves) == (250, 0, 0, 3)
    assert [len(w) for w in waves] == [100, 100, 50]
    sent = {e["request_id"]: e["update"] for w in waves for e in w}
    assert set(sent) == {f"shift-{i}" for i in due}
    rows = shift_rows(database_url)
    for row_id in due:
        row, update = rows[row_id], sent[f"shift-{row_id}"]
        assert update["user_id"] == row.user_id
        assert update["state"] == row.state
        assert update.get("reason") == row.reason
        assert update["source"] == "roster.csv"
        assert datetime.fromisoformat(update["requested_at"]) == now - timedelta(seconds=10)
        assert row.status == "dispatched"
        assert row.dispatches == 1
        assert row.lateness_ms == pytest.approx(10_000, abs=1)
    assert {rows[i].status for i in future} == {"scheduled"}
    assert report.max_lateness_s == pytest.approx(10, abs=0.01)
    assert dispatched_metric() - dispatched_before == 250

    again = dispatch_due(settings_for(database_url), waves.append, now=now + timedelta(seconds=1))
    assert (again.claimed, again.waves) == (0, 0)


def test_concurrent_dispatchers_never_claim_the_same_row(database_url: str) -> None:
    now = datetime.now(UTC)
    ids = add_rows(database_url, 3000, now - timedelta(seconds=1))
    settings = settings_for(database_url)
    start = threading.Barrier(4)
    # Each dispatcher holds its first claim until all four hold one: a claim that committed
    # must not stop the others claiming, and no scheduler luck can let one thread take it all.
    all_holding = threading.Barrier(4, timeout=60)
    taken: list[list[str]] = [[] for _ in range(4)]
    errors: list[BaseException] = []

    def dispatcher(index: int) -> None:
        def send(elements: list[dict[str, Any]]) -> None:
            first = not taken[index]
            taken[index].extend(e["request_id"] for e in elements)
            if first:
                all_holding.wait()

        try:
            start.wait()
            while True:
                before = len(taken[index])
                dispatch_due(settings, send, now=now, limit=150)
                if len(taken[index]) == before:
                    return
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=dispatcher, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert errors == []
    everything = [request_id for share in taken for request_id in share]
    assert len(everything) == len(set(everything)) == 3000  # each row once, none lost
    assert set(everything) == {f"shift-{i}" for i in ids}
    assert all(taken), "the dispatchers really ran side by side"
    assert {r.dispatches for r in shift_rows(database_url).values()} == {1}


def test_rows_found_too_late_are_skipped_with_their_lateness(database_url: str) -> None:
    now = datetime.now(UTC)
    stale = add_rows(database_url, 5, now - timedelta(seconds=700))
    late = add_rows(database_url, 5, now - timedelta(seconds=500), first_agent=100)
    sent: list[str] = []

    report = dispatch_due(
        settings_for(database_url), lambda es: sent.extend(e["request_id"] for e in es), now=now
    )

    assert (report.claimed, report.skipped) == (5, 5)
    assert sorted(sent) == sorted(f"shift-{i}" for i in late)
    rows = shift_rows(database_url)
    for row_id in stale:
        assert rows[row_id].status == "skipped"
        assert rows[row_id].lateness_ms == pytest.approx(700_000, abs=1)
        assert "600 s after its due time" in (rows[row_id].note or "")
        assert rows[row_id].dispatches == 0
    assert report.max_lateness_s == pytest.approx(500, abs=0.01)


def test_rows_claimed_but_never_sent_are_sent_again_unless_audited(database_url: str) -> None:
    now = datetime.now(UTC)
    ids = add_rows(database_url, 6, now - timedelta(seconds=1))
    settings = settings_for(database_url)

    def crash(_: list[dict[str, Any]]) -> None:
        raise ConnectionError("broker gone after the claim committed")

    with pytest.raises(ConnectionError):
        dispatch_due(settings, crash, now=now)
    assert {r.status for r in shift_rows(database_url).values()} == {"dispatched"}
    with session_scope(database_url) as session:  # one of them was applied after all
        session.add(
            AuditRecord(
                request_id=f"shift-{ids[0]}", outcome="confirmed", finished_at=now, attempts=1
            )
        )

    sent: list[str] = []
    early = dispatch_due(
        settings,
        lambda es: sent.extend(e["request_id"] for e in es),
        now=now + timedelta(seconds=60),
    )
    assert (early.resent, sent) == (0, [])

    later = dispatch_due(
        settings,
        lambda es: sent.extend(e["request_id"] for e in es),
        now=now + timedelta(seconds=301),
    )
    assert later.resent == 5
    assert sorted(sent) == sorted(f"shift-{i}" for i in ids[1:])
    rows = shift_rows(database_url)
    assert rows[ids[0]].dispatches == 1
    assert {rows[i].dispatches for i in ids[1:]} == {2}


def test_each_wave_holds_one_orgs_rows_and_names_its_org(database_url: str) -> None:
    now = datetime.now(UTC)
    agents = [(AGENT.format(i), "Break", None) for i in range(3)]
    default_ids = schedule(database_url, agents, now - timedelta(seconds=30))
    acme_ids = schedule(database_url, agents, now - timedelta(seconds=20), org="acme")
    later_default = schedule(
        database_url, [(AGENT.format(9), "Meal", None)], now - timedelta(seconds=10)
    )
    waves: list[list[dict[str, Any]]] = []

    report = dispatch_due(settings_for(database_url, wave_task_agents=2), waves.append, now=now)

    assert report.claimed == 7
    assert [wave_org(w) for w in waves] == ["default", "default", "acme", "acme"]
    assert [wave_queue(w) for w in waves] == ["presence"] * 2 + ["presence.acme"] * 2
    assert [len(w) for w in waves] == [2, 2, 2, 1]
    by_org: dict[str, list[str]] = {}
    for wave in waves:
        orgs = {e["update"].get("org", "default") for e in wave}
        assert orgs == {wave_org(wave)}, "one org per wave"
        by_org.setdefault(wave_org(wave), []).extend(e["request_id"] for e in wave)
    assert by_org["default"] == [f"shift-{i}" for i in default_ids + later_default]
    assert by_org["acme"] == [f"shift-{i}" for i in acme_ids]
    default_updates = [e["update"] for w in waves[:2] for e in w]
    assert all("org" not in u for u in default_updates), "default-org payloads as before"
    assert {e["update"]["org"] for w in waves[2:] for e in w} == {"acme"}


def test_the_org_of_no_wave_is_the_default_org() -> None:
    assert wave_org([]) == "default"
