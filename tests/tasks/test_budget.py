"""One budget for the whole fleet: two worker processes against an org limit of 600 requests per
rolling minute, with more work than one minute's budget allows.

The only long test of the suite (the platform's window is 60 s): it needs more than a minute.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from tests.support.pipeline import APPLIED, Pipeline

LIMIT = 600
# About 900 platform requests (a state read and about one subscription per agent, a write per
# applied update, a few queue lookups): more than one window's budget, well under two, so the run
# takes a minute and a bit.
AGENTS = 200
UPDATES = 500
STATES = ("Available", "Busy", "On Queue")  # allowed from any state, Offline included
PLATFORM_ROUTES = ("presence.", "users.", "notifications.", "routing.", "analytics.")


@pytest.fixture(scope="module")
def emulator_args() -> list[str]:
    return ["--users", "240", "--queues", "6", "--heartbeat", "0.5", "--rate-limit", str(LIMIT)]


@pytest.mark.timeout(240)
def test_two_workers_share_one_budget_without_a_single_429(pipeline: Pipeline) -> None:
    pipeline.start(
        2,
        concurrency=4,
        warm_up=False,
        RATE_LIMIT_PER_MINUTE=LIMIT,
        NOTIFICATION_PRIME_AGENTS=0,  # subscriptions and state reads spend budget too
    )
    agents = [a["id"] for a in pipeline.agents(AGENTS)]
    base = datetime.now(UTC)
    asked: dict[str, tuple[str, str, datetime]] = {}  # request id → (agent, state, requested_at)
    for index in range(UPDATES):
        user_id, state = agents[index % AGENTS], STATES[(index * 7) % len(STATES)]
        at = base + timedelta(milliseconds=index)
        asked[pipeline.send(pipeline.update(user_id, state, requested_at=at))] = (
            user_id,
            state,
            at,
        )

    pipeline.wait_rows(UPDATES, timeout_s=200)
    pipeline.wait_idle()
    rows = pipeline.rows()
    stats = pipeline.stats()

    # Every request ended in exactly one terminal row, none of them a failure.
    assert sorted(r.request_id for r in rows) == sorted(asked)
    outcomes = Counter(r.outcome for r in rows)
    # The queue-capacity guard may refuse an off-queue move while many agents are leaving a queue.
    assert set(outcomes) <= {"superseded", "rejected_capacity", *APPLIED}, outcomes
    # The fleet wanted more than a minute's budget …
    spent = sum(
        sum(by_status.values())
        for route, by_status in stats["requests"].items()
        if route.startswith(PLATFORM_ROUTES)
    )
    assert spent > LIMIT, stats["requests"]
    assert any((r.limiter_wait_ms or 0) > 0 for r in rows), "the limiter never held anyone back"
    # … and still never went over it: no 429, no rolling minute above the limit.
    assert stats["tooManyRequests"] == 0, stats["requests"]
    assert stats["peakPerMinute"] <= LIMIT, stats["tokens"]
    # Each applied request reached the platform once; superseded ones never did.
    history = pipeline.history(agents)
    written = sorted(c["correlationId"] for changes in history.values() for c in changes)
    assert written == sorted(str(r.correlation_id) for r in rows if r.outcome in APPLIED)
    # Latest wins held under budget pressure too: no agent's newest request was superseded, and
    # every agent holds the state of its newest applied request.
    by_id = {r.request_id: r for r in rows}
    newest: dict[str, tuple[datetime, str]] = {}  # agent → (requested_at, request id)
    last_applied: dict[str, tuple[datetime, str]] = {}  # agent → (requested_at, state)
    for request_id, (user_id, state, at) in asked.items():
        if user_id not in newest or at > newest[user_id][0]:
            newest[user_id] = (at, request_id)
        if by_id[request_id].outcome in APPLIED and (
            user_id not in last_applied or at > last_applied[user_id][0]
        ):
            last_applied[user_id] = (at, state)
    assert not [u for u, (_, rid) in newest.items() if by_id[rid].outcome == "superseded"]
    presence = {u["id"]: u["presence"] for u in pipeline.admin("GET", "/users").json()}
    assert {u: presence[u] for u in last_applied} == {u: s for u, (_, s) in last_applied.items()}
