"""``presence.wave`` end to end: bulk PUTs from real workers against the emulator over sockets.

A wave is a list of ``{"request_id", "update"}`` elements; every element must end with exactly
one audit row carrying its request id, whatever else is in the wave.
"""

from __future__ import annotations

import uuid
from collections import Counter

import pytest

from tests.support.pipeline import Pipeline

BULK = "presence.bulk_put"


def ids(prefix: str, count: int) -> list[str]:
    return [f"{prefix}-{uuid.uuid4().hex[:12]}" for _ in range(count)]


@pytest.mark.parametrize(
    "audit_database",
    ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
    indirect=True,
)
def test_a_wave_applies_every_agent_with_one_bulk_put_per_batch(pipeline: Pipeline) -> None:
    definitions = pipeline.definition_ids()
    pipeline.start(1)
    agents = pipeline.agents(120)
    wanted = {
        rid: pipeline.update(a["id"], "On Queue")
        for rid, a in zip(ids("w", 120), agents, strict=True)
    }
    before = pipeline.route_count(BULK)

    pipeline.send_wave(wanted)
    rows = pipeline.wait_rows(len(wanted), request_ids=wanted)
    pipeline.wait_idle()

    assert Counter(r.outcome for r in rows) == {"confirmed": 120}, [
        (r.outcome, r.error_message) for r in rows if r.outcome != "confirmed"
    ]
    assert pipeline.route_count(BULK) - before == 3  # 50 + 50 + 20
    history = pipeline.history(a["id"] for a in agents)
    for row in rows:
        assert row.user_id == wanted[row.request_id]["user_id"]
        assert row.to_definition_id == definitions["On Queue"]
        (change,) = history[row.user_id or ""]
        assert change["path"] == "bulk"
        assert change["correlationId"] == row.correlation_id
    # The batch's calls sit on one of its rows, so that the sum over rows stays true.
    assert sum(r.genesys_requests for r in rows) == 3


def test_a_mixed_wave_gives_each_agent_its_own_outcome(pipeline: Pipeline) -> None:
    pipeline.start(1)
    # Neither Offline (the matrix refuses Offline → Break) nor On Queue (no capacity guard here).
    online = [a for a in pipeline.agents(online=True) if a["systemPresence"] != "On Queue"][:6]
    offline = pipeline.agents(presence="Offline")[:2]
    ghost = str(uuid.uuid4())  # a well-formed id the platform does not know
    wave = {
        "ok-1": pipeline.update(online[0]["id"], "Busy"),
        "ok-2": pipeline.update(online[1]["id"], "Break", "Coffee"),
        "ok-3": pipeline.update(online[2]["id"], "On Queue"),
        "ok-4": pipeline.update(online[3]["id"], "Available"),
        "bad-id": pipeline.update("not-a-user", "Busy"),
        "bad-state": pipeline.update(online[4]["id"], "Snoozing"),
        "ghost": pipeline.update(ghost, "Busy"),
        "denied": pipeline.update(offline[0]["id"], "Break"),  # Offline → Break: matrix says no
        "expected": pipeline.update(
            online[5]["id"], "Busy", expected_state="Offline"
        ),  # compare-and-set that fails
    }
    bulk_before = pipeline.stats()["requests"].get(BULK, {})

    pipeline.send_wave(wave)
    rows = {r.request_id: r for r in pipeline.wait_rows(len(wave), request_ids=wave)}
    pipeline.wait_idle()

    outcomes = {rid: row.outcome for rid, row in rows.items()}
    assert outcomes == {
        "ok-1": "confirmed",
        "ok-2": "confirmed",
        "ok-3": "confirmed",
        "ok-4": "confirmed",
        "bad-id": "invalid",
        "bad-state": "invalid",
        "ghost": "failed",
        "denied": "rejected_transition",
        "expected": "rejected_transition",
    }, {rid: (r.outcome, r.error_message) for rid, r in rows.items()}
    assert "not a Genesys user id" in (rows["bad-id"].error_message or "")
    assert rows["bad-state"].error_code == "unknown.presence"
    assert rows["ghost"].user_id == ghost
    assert ghost in (rows["ghost"].error_message or "")
    assert rows["denied"].error_code == "transition.denied"
    assert rows["expected"].error_code == "unexpected.state"
    # The 400 was split until the unknown agent stood alone; the others were applied.
    bulk = pipeline.stats()["requests"][BULK]
    assert bulk.get("400", 0) - bulk_before.get("400", 0) >= 2
    history = pipeline.history([online[i]["id"] for i in range(6)])
    assert [len(history[online[i]["id"]]) for i in range(6)] == [1, 1, 1, 1, 0, 0]


@pytest.mark.parametrize(
    "fault",
    [
        {"status": 503, "count": 2, "after": 1},
        {"status": 429, "count": 2, "after": 1, "retry_after_s": 1},
    ],
    ids=["503", "429"],
)
def test_a_failing_bulk_call_is_retried_and_nothing_is_applied_twice(
    pipeline: Pipeline, fault: dict[str, int]
) -> None:
    pipeline.start(1, MAX_RETRIES=3)
    agents = pipeline.agents(60, online=True)
    wanted = {
        rid: pipeline.update(a["id"], "On Queue")
        for rid, a in zip(ids("r", 60), agents, strict=True)
    }
    # The first batch goes through, the second meets two failures: the wave is retried and skips
    # the first batch's agents, already audited.
    pipeline.admin("POST", "/faults/errors", {"endpoint": BULK, **fault})

    pipeline.send_wave(wanted)
    rows = pipeline.wait_rows(len(wanted), request_ids=wanted)
    pipeline.wait_idle()

    assert Counter(r.outcome for r in rows) == {"confirmed": 60}
    history = pipeline.history(a["id"] for a in agents)
    assert all(len(changes) == 1 for changes in history.values()), history
    assert sorted({r.attempts for r in rows}) == [1, 3]


def test_an_agent_locked_by_another_update_is_handed_to_the_single_flow(
    pipeline: Pipeline,
) -> None:
    pipeline.start(1)
    agents = pipeline.agents(3, online=True)
    locked = agents[0]["id"]
    pipeline.redis.set(f"presence:agent:{locked}:lock", "someone-else", px=3000)
    wanted = {
        rid: pipeline.update(a["id"], "On Queue")
        for rid, a in zip(ids("l", 3), agents, strict=True)
    }

    pipeline.send_wave(wanted)
    rows = pipeline.wait_rows(3, request_ids=wanted)
    pipeline.wait_idle()

    assert Counter(r.outcome for r in rows) == {"confirmed": 3}
    by_agent = {r.user_id: r for r in rows}
    history = pipeline.history([locked])[locked]
    assert [c["path"] for c in history] == ["patch"]  # applied by presence.update after the lock
    assert by_agent[locked].request_id in wanted


def test_the_waves_subscription_call_is_on_its_audit_rows(pipeline: Pipeline) -> None:
    """Without priming the wave subscribes its agents itself: one call for all of them, counted
    with the bulk PUTs so that the audit rows sum to what the platform saw."""
    pipeline.start(1, warm_up=False, NOTIFICATION_PRIME_AGENTS="0")
    agents = pipeline.agents(70)
    wanted = {
        rid: pipeline.update(a["id"], "On Queue")
        for rid, a in zip(ids("s", 70), agents, strict=True)
    }
    routes = (BULK, "notifications.subscriptions.post", "notifications.subscriptions.put")
    before = {route: pipeline.route_count(route) for route in routes}

    pipeline.send_wave(wanted)
    rows = pipeline.wait_rows(len(wanted), request_ids=wanted)

    assert Counter(r.outcome for r in rows) == {"confirmed": 70}
    calls = {route: pipeline.route_count(route) - n for route, n in before.items()}
    assert calls[BULK] == 2
    assert calls["notifications.subscriptions.post"] + calls["notifications.subscriptions.put"] == 1
    assert sum(r.genesys_requests for r in rows) == 3


def test_waiting_waves_do_not_hold_the_pool_threads_that_single_updates_need(
    pipeline: Pipeline,
) -> None:
    """One process, two threads, four slow waves queued before three single updates: a wave that
    finds the process busy with another goes back to the queue, so the singles get a thread and
    finish long before the last wave."""
    pipeline.start(1, concurrency=2)
    pipeline.admin("POST", "/faults/latency", {"endpoint": BULK, "latency_ms": 1500})
    agents = pipeline.agents(83)  # On Queue is allowed from anywhere and needs no guard
    waves = [
        {
            rid: pipeline.update(a["id"], "On Queue")
            for rid, a in zip(ids(f"q{n}", 20), group, strict=True)
        }
        for n, group in enumerate([agents[i : i + 20] for i in range(0, 80, 20)])
    ]
    for wave in waves:
        pipeline.send_wave(wave)
    singles = [pipeline.send(pipeline.update(a["id"], "On Queue")) for a in agents[80:]]

    wave_ids = [rid for wave in waves for rid in wave]
    rows = pipeline.wait_rows(len(wave_ids) + 3, request_ids=[*wave_ids, *singles])

    by_id = {r.request_id: r for r in rows}
    assert Counter(r.outcome for r in rows) == {"confirmed": 83}, [
        (r.request_id, r.from_state, r.to_state, r.error_message)
        for r in rows
        if r.outcome != "confirmed"
    ]
    last_single = max(by_id[rid].finished_at for rid in singles)
    last_wave = max(by_id[rid].finished_at for rid in wave_ids)
    assert (last_wave - last_single).total_seconds() > 2, "the singles waited for the waves"
    assert {by_id[rid].attempts for rid in wave_ids} == {1}  # a busy process is no failure


def test_a_refusal_for_good_fails_every_agent_at_once_without_retries(pipeline: Pipeline) -> None:
    """The OAuth client may not read presence definitions: every agent of the wave ends failed
    with the platform's code on the first attempt, and nothing is written."""
    pipeline.admin(
        "POST",
        "/clients",
        {
            "client_id": "edit-only",
            "client_secret": "edit-only-secret",
            "permissions": ["presence:userPresence:edit"],
        },
    )
    pipeline.start(
        1, warm_up=False, GENESYS_CLIENT_ID="edit-only", GENESYS_CLIENT_SECRET="edit-only-secret"
    )
    agents = pipeline.agents(5)
    wanted = {
        rid: pipeline.update(a["id"], "On Queue")
        for rid, a in zip(ids("p", 5), agents, strict=True)
    }

    pipeline.send_wave(wanted)
    rows = pipeline.wait_rows(5, request_ids=wanted)
    pipeline.wait_idle()

    assert {(r.outcome, r.error_code, r.attempts) for r in rows} == {
        ("failed", "missing.any.permissions", 1)
    }
    assert {r.user_id for r in rows} == {a["id"] for a in agents}
    assert pipeline.route_count(BULK) == 0
