"""Shift changes end to end: rows in the database, ``celery beat`` dispatching them, workers
applying the waves with bulk PUTs against the emulator over real sockets.
"""

from __future__ import annotations

import signal
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from models import ShiftChange
from tests.capacity.conftest import Harness
from tests.capacity.test_capacity_guard import pick_queue, policy_file, staff
from tests.support.shifts import schedule

pytestmark = pytest.mark.timeout(420)
BULK = "presence.bulk_put"


def shift_rows(h: Harness, ids: list[int]) -> dict[int, ShiftChange]:
    with Session(h.engine) as session:
        rows = session.scalars(select(ShiftChange).where(ShiftChange.id.in_(ids)))
        return {r.id: r for r in rows}


def wait_dispatched(h: Harness, ids: list[int], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if {r.status for r in shift_rows(h, ids).values()} == {"dispatched"}:
            return
        time.sleep(0.1)
    pytest.fail(f"shift changes not dispatched after {timeout_s:.0f} s\n{h.logs()}")


def test_a_beat_restart_mid_wave_and_two_beats_lose_nothing_and_apply_nothing_twice(
    harness: Harness,
) -> None:
    """Three groups due a few seconds apart. The beat is killed after the first group; one group's
    rows were claimed by a dispatcher that died before sending. Two beats then run at once: every
    row is applied exactly once, the late ones with their lateness, the lost ones re-sent."""
    fast = {
        "SHIFT_DISPATCH_INTERVAL_S": "0.5",
        "SHIFT_REDISPATCH_AFTER_S": "3",
        "WAVE_TASK_AGENTS": "20",
        "BULK_BATCH_SIZE": "10",
    }
    harness.start(2, concurrency=4, **fast)
    agents = [a["id"] for a in harness.agents(90, online=True)]
    t0 = datetime.now(UTC) + timedelta(seconds=1)
    first = schedule(harness.database_url, [(a, "Busy", None) for a in agents[:30]], t0)
    second = schedule(
        harness.database_url, [(a, "Busy", None) for a in agents[30:60]], t0 + timedelta(seconds=6)
    )
    lost = schedule(harness.database_url, [(a, "Busy", None) for a in agents[60:90]], t0)
    with Session(harness.engine) as session:  # claimed by a dispatcher that died before sending
        session.execute(
            update(ShiftChange)
            .where(ShiftChange.id.in_(lost))
            .values(status="dispatched", dispatched_at=datetime.now(UTC), dispatches=1)
        )
        session.commit()

    beat = harness.beat(**fast)
    wait_dispatched(harness, first)
    beat.send_signal(signal.SIGKILL)
    beat.wait(timeout=10)
    time.sleep(8)  # the beat is down when the second group falls due
    assert {r.status for r in shift_rows(harness, second).values()} == {"scheduled"}
    harness.beat(**fast)
    harness.beat(**fast)  # a second beat by mistake

    everything = first + second + lost
    request_ids = [f"shift-{i}" for i in everything]
    rows = harness.wait_rows(len(everything), request_ids=request_ids, timeout_s=120)
    time.sleep(2)  # room for any double dispatch to show up
    harness.wait_idle(timeout_s=60)

    assert Counter(r.outcome for r in harness.rows(request_ids)) == {"confirmed": 90}, [
        (r.request_id, r.outcome, r.error_message) for r in rows if r.outcome != "confirmed"
    ]
    history = harness.history(agents)
    assert {u: len(c) for u, c in history.items() if len(c) != 1} == {}  # once per agent
    shifts = shift_rows(harness, everything)
    assert {shifts[i].dispatches for i in first + second} == {1}  # two beats, one dispatch
    assert {shifts[i].dispatches for i in lost} == {2}  # re-sent once
    assert min(shifts[i].lateness_ms or 0 for i in second) > 2_000  # dispatched late, recorded
    by_request = {r.request_id: r for r in rows}
    for row_id in second:
        row = by_request[f"shift-{row_id}"]
        assert row.source == "e2e-roster"
        assert row.requested_at is not None
        assert row.requested_at.replace(tzinfo=UTC) == t0 + timedelta(seconds=6)


def test_a_wave_mixing_valid_invalid_and_capacity_blocked_agents(
    harness: Harness, tmp_path: Path
) -> None:
    """Queue staffed with 6 on queue, minimum 4. One wave: 4 of them to Break (room for 2),
    2 others to On Queue, an unknown presence, an agent the platform does not know."""
    queue_id, alone = pick_queue(harness, 6)
    on_queue = alone[:6]
    staff(harness, queue_id, on_queue, [])
    # Agents of other queues only: their going On Queue must not add room to this one.
    others = [a["id"] for a in harness.agents(online=True) if queue_id not in a["queues"]][:3]
    assert len(others) == 3
    harness.start(
        1,
        concurrency=4,
        CAPACITY_OVERRIDES_FILE=policy_file(tmp_path, queue_id, 4),
        SHIFT_DISPATCH_INTERVAL_S="0.5",
        **harness.wfm_env(),
    )
    ghost = str(uuid.uuid4())
    due = datetime.now(UTC)
    leaving = schedule(harness.database_url, [(a, "Break", "Coffee") for a in on_queue[:4]], due)
    joining = schedule(harness.database_url, [(a, "On Queue", None) for a in others[:2]], due)
    (unknown,) = schedule(harness.database_url, [(others[2], "Snoozing", None)], due)
    (stranger,) = schedule(harness.database_url, [(ghost, "Busy", None)], due)
    before = harness.route_count(BULK)

    harness.beat(SHIFT_DISPATCH_INTERVAL_S="0.5")
    everything = [*leaving, *joining, unknown, stranger]
    rows = {
        r.request_id: r
        for r in harness.wait_rows(len(everything), request_ids=[f"shift-{i}" for i in everything])
    }

    outcome = {i: rows[f"shift-{i}"].outcome for i in everything}
    assert sorted(outcome[i] for i in leaving) == [
        "confirmed",
        "confirmed",
        "rejected_capacity",
        "rejected_capacity",
    ], [(rows[f"shift-{i}"].outcome, rows[f"shift-{i}"].error_message) for i in leaving]
    assert [outcome[i] for i in joining] == ["confirmed", "confirmed"]
    assert outcome[unknown] == "invalid"
    assert rows[f"shift-{unknown}"].error_code == "unknown.presence"
    assert outcome[stranger] == "failed"
    assert ghost in (rows[f"shift-{stranger}"].error_message or "")
    for i in leaving:
        if outcome[i] == "rejected_capacity":
            assert rows[f"shift-{i}"].error_code == "capacity.insufficient"
            assert queue_id in (rows[f"shift-{i}"].error_message or "")
    # One bulk PUT for the wave, then the halves of the split that isolated the stranger.
    assert harness.route_count(BULK) - before <= 1 + 2 * 3
    now = {u["id"]: u["systemPresence"] for u in harness.users()}
    assert sorted(now[a] for a in on_queue[:4]) == ["Break", "Break", "On Queue", "On Queue"]
    # One signed WFM event per agent whose presence changed, none for the others.
    harness.wait_deliveries(states={"delivered"})
    audit_ids = {row.id: request_id for request_id, row in rows.items()}
    events = [d.payload for d in harness.deliveries() if d.audit_id in audit_ids]
    changed = {f"shift-{i}" for i in everything if outcome[i] == "confirmed"}
    assert sorted(e["request_id"] for e in events) == sorted(changed)
    assert {e["source"] for e in events} == {"e2e-roster"}
    received = {d["eventId"]: d for d in harness.sink()["deliveries"]}
    assert all(received[e["event_id"]]["signatureValid"] for e in events)


def test_an_end_of_shift_wave_lists_queue_members_once_instead_of_reading_each_agent(
    harness: Harness,
) -> None:
    """200 agents On Queue → Offline: the capacity guard needs every agent's queues and current
    presence; listing each queue's members (with presence) once beats 200 membership reads."""
    agents = [a["id"] for a in harness.agents(200)]
    for user_id in agents:
        harness.set_presence(user_id, "On Queue")
    harness.start(1, concurrency=4, CAPACITY_MIN_ON_QUEUE="0")
    queues = harness.api_get("/api/v2/routing/queues", pageSize=100)["entities"]
    member_pages = sum(max(1, -(-q["joinedMemberCount"] // 100)) for q in queues)
    before = {
        route: harness.route_count(route)
        for route in ("users.queues", "queues.members", "queues.list", "presence.bulk_get", BULK)
    }

    wave = {f"end-{i}": harness.update(user_id, "Offline") for i, user_id in enumerate(agents)}
    harness.send_wave(wave)
    rows = harness.wait_rows(len(wave), request_ids=wave)

    assert Counter(r.outcome for r in rows) == {"confirmed": 200}, [
        (r.outcome, r.error_message) for r in rows if r.outcome != "confirmed"
    ]
    assert {r.from_state for r in rows} == {"On Queue"}
    calls = {route: harness.route_count(route) - n for route, n in before.items()}
    assert calls == {
        "users.queues": 0,
        "queues.members": member_pages,
        "queues.list": 1,
        "presence.bulk_get": 0,
        BULK: 4,
    }
    assert {u["systemPresence"] for u in harness.users() if u["id"] in set(agents)} == {"Offline"}
