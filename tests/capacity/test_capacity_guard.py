"""The queue-capacity guard end to end: real workers, real Redis, the emulator over sockets.

Every scenario staffs one queue exactly: it picks the queue with the most agents joined to it
alone (their off-queue change consults that queue only), puts a known number of them On Queue and
every other joined member of the queue off queue through the admin API *before* the workers start
(so the workers' primed state cache agrees), then sets that queue's policy through
``CAPACITY_OVERRIDES_FILE``.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import redis

from tests.capacity.conftest import Harness
from tests.support.pipeline import APPLIED
from worker.rules.capacity import CapacityGuard, QueuePolicy

pytestmark = pytest.mark.timeout(420)

OBSERVE = "analytics.queue_observations"
MEMBERSHIP = "users.queues"
MIN_ON_QUEUE = re.compile(
    r"^queue (?P<queue>\S+): (?P<on>\d+) on queue, (?P<reserved>\d+) already leaving, "
    r"minimum (?P<min>\d+)$"
)
WAITING = re.compile(
    r"^queue (?P<queue>\S+): (?P<waiting>\d+) waiting for (?P<remaining>-?\d+) remaining agents, "
    r"limit (?P<limit>[\d.]+) per agent$"
)


def pick_queue(h: Harness, needed: int) -> tuple[str, list[str]]:
    """The queue with the most usable agents joined to it and to no other queue, and those agents
    (at least ``needed``)."""
    agents = h.agents()
    best: tuple[str, list[str]] | None = None
    for queue_id in sorted({q for u in agents for q in u["queues"]}):
        joined = h.joined_members(queue_id)
        alone = [u["id"] for u in agents if u["queues"] == [queue_id] and u["id"] in joined]
        if best is None or len(alone) > len(best[1]):
            best = (queue_id, alone)
    assert best is not None
    assert len(best[1]) >= needed, f"only {len(best[1])} single-queue agents in {best[0]}"
    return best


def staff(h: Harness, queue_id: str, on_queue: list[str], off_queue: list[str]) -> None:
    """Exactly ``on_queue`` On Queue among the queue's joined members; ``off_queue`` Available;
    every other joined member that is on queue set Available."""
    wanted = set(on_queue)
    by_id = {u["id"]: u for u in h.users()}
    for user_id in sorted(h.joined_members(queue_id)):
        if user_id in wanted:
            h.set_presence(user_id, "On Queue")
        elif user_id in off_queue or by_id[user_id]["routingStatus"] != "OFF_QUEUE":
            h.set_presence(user_id, "Available")
    assert on_queue_now(h, queue_id) == len(on_queue)


def on_queue_now(h: Harness, queue_id: str) -> int:
    """Joined members of the queue on queue right now, as the emulator's observations count them."""
    joined = h.joined_members(queue_id)
    return sum(1 for u in h.users() if u["id"] in joined and u["routingStatus"] != "OFF_QUEUE")


def policy_file(tmp_path: Path, queue_id: str, min_on_queue: int, max_waiting: float = 5) -> Path:
    path = tmp_path / "capacity.toml"
    path.write_text(
        f'[queues."{queue_id}"]\nmin_on_queue = {min_on_queue}\n'
        f"max_waiting_per_agent = {max_waiting}\n"
    )
    return path


def presence_of(h: Harness, user_ids: list[str]) -> dict[str, str]:
    wanted = set(user_ids)
    return {u["id"]: u["systemPresence"] for u in h.users() if u["id"] in wanted}


def test_reject_admits_exactly_the_room_and_shares_one_observation(
    harness: Harness, tmp_path: Path
) -> None:
    """M = 8 on queue, minimum 5 (room K = 3); 7 concurrent Break requests from 2 processes:
    exactly 3 applied, 4 rejected_capacity with the deciding numbers; the queue keeps 5."""
    m, k, n = 8, 3, 7
    queue_id, alone = pick_queue(harness, m)
    on_queue = alone[:m]
    staff(harness, queue_id, on_queue, [])
    harness.start(
        2,
        concurrency=4,
        CAPACITY_OVERRIDES_FILE=policy_file(tmp_path, queue_id, m - k),
        CAPACITY_OBSERVATION_TTL_S=5,
    )
    observations, memberships = harness.route_count(OBSERVE), harness.route_count(MEMBERSHIP)
    leaving = on_queue[:n]
    ids = [harness.send(harness.update(user_id, "Break")) for user_id in leaving]
    rows = harness.wait_rows(n, request_ids=ids)
    observations = harness.route_count(OBSERVE) - observations
    memberships = harness.route_count(MEMBERSHIP) - memberships

    outcomes = sorted(r.outcome for r in rows)
    applied = [r for r in rows if r.outcome in APPLIED]
    rejected = [r for r in rows if r.outcome == "rejected_capacity"]
    assert len(applied) == k, outcomes
    assert len(rejected) == n - k, outcomes
    assert len({r.worker for r in rows}) == 2, "both worker processes took requests"
    for row in rejected:
        assert row.error_code == "capacity.insufficient"
        match = MIN_ON_QUEUE.match(row.error_message or "")
        assert match, row.error_message
        assert match["queue"] == queue_id
        assert int(match["min"]) == m - k
        on, reserved = int(match["on"]), int(match["reserved"])
        assert on - reserved - 1 < m - k, row.error_message  # the numbers justify the refusal
        assert reserved >= 1, row.error_message  # concurrent leavers were counted

    # The platform's side: exactly the admitted agents left; the queue keeps its minimum.
    now = presence_of(harness, leaving)
    assert sorted(now[r.user_id] for r in applied if r.user_id) == ["Break"] * k
    assert {now[r.user_id] for r in rejected if r.user_id} == {"On Queue"}
    assert on_queue_now(harness, queue_id) == m - k
    history = harness.history_paths([r.user_id for r in rejected if r.user_id])
    assert all(paths.count("patch") == 0 for paths in history.values()), history

    # The guard's Genesys cost: one membership read per agent, and one observation of the queue
    # shared by all 7 checks of both processes (concurrent first checks wait for it) for each
    # CAPACITY_OBSERVATION_TTL_S the burst spans.
    assert memberships == n
    span_s = (max(r.finished_at for r in rows) - min(r.started_at for r in rows)).total_seconds()
    assert observations == 1 if span_s < 5 else 1 <= observations <= span_s // 5 + 1, (
        observations,
        span_s,
    )
    for row in rows:
        assert row.genesys_requests <= 4, (row.outcome, row.genesys_requests)


def test_defer_waits_for_room_then_applies_or_ends_at_its_deadline(
    harness: Harness, tmp_path: Path
) -> None:
    """No room (4 on queue, minimum 4). Two deferred changes with a far deadline stay pending;
    one with a 4-s deadline ends rejected_capacity after it; two more agents going on queue make
    room for exactly the two that wait, which then apply."""
    m = 4
    queue_id, alone = pick_queue(harness, m + 2)
    on_queue, spare = alone[:m], alone[m : m + 2]
    staff(harness, queue_id, on_queue, spare)
    harness.start(
        2,
        concurrency=4,
        CAPACITY_OVERRIDES_FILE=policy_file(tmp_path, queue_id, m),
        CAPACITY_OBSERVATION_TTL_S=1,
    )
    far = (datetime.now(UTC) + timedelta(seconds=240)).isoformat()
    soon = datetime.now(UTC) + timedelta(seconds=4)
    waiting = [
        harness.send(harness.update(u, "Break", capacity_policy="defer", defer_until=far))
        for u in on_queue[:2]
    ]
    short = harness.send(
        harness.update(on_queue[2], "Break", capacity_policy="defer", defer_until=soon.isoformat())
    )

    [expired] = harness.wait_rows(1, request_ids=[short], timeout_s=60)
    assert expired.outcome == "rejected_capacity"
    assert expired.finished_at.replace(tzinfo=expired.finished_at.tzinfo or UTC) >= soon
    match = MIN_ON_QUEUE.match(expired.error_message or "")
    assert match, expired.error_message
    assert (match["queue"], match["on"], match["reserved"], match["min"]) == (
        queue_id,
        str(m),
        "0",
        str(m),
    )
    time.sleep(2)  # two more observation lifetimes without room
    assert harness.rows(waiting) == []
    assert harness.queue_length() >= 2  # still there, waiting as scheduled retries
    assert set(presence_of(harness, on_queue[:3]).values()) == {"On Queue"}

    room_at = datetime.now(UTC)
    for user_id in spare:
        harness.set_presence(user_id, "On Queue")
    rows = harness.wait_rows(2, request_ids=waiting, timeout_s=60)
    assert sorted(r.outcome for r in rows) in (
        ["confirmed", "confirmed"],
        ["applied_unconfirmed", "confirmed"],
        ["applied_unconfirmed", "applied_unconfirmed"],
    )
    for row in rows:
        assert row.finished_at.replace(tzinfo=row.finished_at.tzinfo or UTC) > room_at
        assert row.attempts == 1  # waiting for room is not a failure
    assert set(presence_of(harness, on_queue[:2]).values()) == {"Break"}
    assert on_queue_now(harness, queue_id) == m


def test_force_bypasses_the_guard_and_records_why(harness: Harness, tmp_path: Path) -> None:
    """No room (3 on queue, minimum 3): a forced change applies without consulting the guard and
    the audit row's note carries the reason; a rejecting change next to it is refused."""
    m = 3
    queue_id, alone = pick_queue(harness, m)
    staff(harness, queue_id, alone[:m], [])
    harness.start(
        2,
        concurrency=4,
        CAPACITY_OVERRIDES_FILE=policy_file(tmp_path, queue_id, m),
        CAPACITY_OBSERVATION_TTL_S=1,
    )
    before = (harness.route_count(OBSERVE), harness.route_count(MEMBERSHIP))
    reason = "Fire drill, supervisor J. Smith"
    forced = harness.send(
        harness.update(alone[0], "Break", capacity_policy="force", force_reason=reason)
    )
    [row] = harness.wait_rows(1, request_ids=[forced])
    assert row.outcome in APPLIED
    assert row.note == f"capacity guard bypassed: {reason}"
    assert (harness.route_count(OBSERVE), harness.route_count(MEMBERSHIP)) == before
    assert presence_of(harness, [alone[0]])[alone[0]] == "Break"

    refused = harness.send(harness.update(alone[1], "Break"))
    [row] = harness.wait_rows(1, request_ids=[refused])
    assert row.outcome == "rejected_capacity"
    assert row.note is None
    assert MIN_ON_QUEUE.match(row.error_message or ""), row.error_message
    assert f"queue {queue_id}: {m - 1} on queue" in (row.error_message or "")


def test_waiting_threshold_refuses_then_admits(harness: Harness, tmp_path: Path) -> None:
    """4 on queue, minimum 1, at most 2 waiting per remaining agent: 7 waiting → 7/3 > 2, refused
    with the numbers; 6 waiting → 6/3 = 2, admitted once the observation is renewed."""
    m = 4
    queue_id, alone = pick_queue(harness, m)
    staff(harness, queue_id, alone[:m], [])
    harness.admin("PUT", f"/queues/{queue_id}/waiting", {"waiting": 7})
    harness.start(
        2,
        concurrency=4,
        CAPACITY_OVERRIDES_FILE=policy_file(tmp_path, queue_id, 1, 2),
        CAPACITY_OBSERVATION_TTL_S=1,
    )
    agent = alone[0]
    first = harness.send(harness.update(agent, "Meal"))
    [row] = harness.wait_rows(1, request_ids=[first])
    assert row.outcome == "rejected_capacity"
    match = WAITING.match(row.error_message or "")
    assert match, row.error_message
    assert (match["queue"], match["waiting"], match["remaining"], match["limit"]) == (
        queue_id,
        "7",
        "3",
        "2",
    )
    assert presence_of(harness, [agent])[agent] == "On Queue"

    harness.admin("PUT", f"/queues/{queue_id}/waiting", {"waiting": 6})
    time.sleep(1.5)  # past CAPACITY_OBSERVATION_TTL_S: the next check observes again
    second = harness.send(harness.update(agent, "Meal"))
    [row] = harness.wait_rows(1, request_ids=[second])
    assert row.outcome in APPLIED, (row.outcome, row.error_message)
    assert presence_of(harness, [agent])[agent] == "Meal"


def test_changes_that_keep_routing_never_consult_the_guard(
    harness: Harness, tmp_path: Path
) -> None:
    """With an impossible default policy (1000 must stay on queue) on→on, off→off and off→on
    changes all apply with no observation and no membership read; the control On Queue → Break
    is refused, so the guard was live."""
    by_presence: dict[str, list[str]] = {}
    for user in harness.agents():
        by_presence.setdefault(user["systemPresence"], []).append(user["id"])
    on, available, on_break = (
        by_presence["On Queue"],
        by_presence["Available"],
        by_presence["Break"],
    )
    changes = [
        *[(u, "On Queue") for u in on[:3]],  # on → on (same definition: still a PATCH)
        *[(u, "Busy") for u in available[:3]],  # off → off
        *[(u, "Meal") for u in on_break[:2]],  # off → off (break → break)
        *[(u, "On Queue") for u in available[3:5]],  # off → on
    ]
    harness.start(2, concurrency=4, CAPACITY_MIN_ON_QUEUE=1000, CAPACITY_OBSERVATION_TTL_S=1)
    before = (harness.route_count(OBSERVE), harness.route_count(MEMBERSHIP))
    ids = [harness.send(harness.update(user_id, state)) for user_id, state in changes]
    rows = harness.wait_rows(len(ids), request_ids=ids)
    assert all(r.outcome in APPLIED for r in rows), [(r.outcome, r.error_message) for r in rows]
    assert (harness.route_count(OBSERVE), harness.route_count(MEMBERSHIP)) == before
    assert all(r.genesys_requests == 1 for r in rows), [r.genesys_requests for r in rows]

    control = harness.send(harness.update(on[3], "Break"))
    [row] = harness.wait_rows(1, request_ids=[control])
    assert row.outcome == "rejected_capacity"
    assert "minimum 1000" in (row.error_message or "")
    assert harness.route_count(OBSERVE) == before[0] + 1


class StubOrg:
    """One org's platform answers for the guard: the agents' joined queues and each queue's
    agents on queue; counts the observation queries."""

    def __init__(self, joined: dict[str, list[str]], on_queue: dict[str, int]) -> None:
        self.joined, self.on_queue, self.observed = joined, on_queue, 0

    def call(self, method: str, path: str, **_: Any) -> SimpleNamespace:
        if path.endswith("/queues"):
            user_id = path.split("/")[-2]
            return SimpleNamespace(data={"entities": [{"id": q} for q in self.joined[user_id]]})
        self.observed += 1
        return SimpleNamespace(
            data={
                "results": [
                    {
                        "group": {"queueId": q},
                        "data": [{"metric": "oOnQueueUsers", "stats": {"count": n}}],
                    }
                    for q, n in self.on_queue.items()
                ]
            }
        )


def guard(redis_url: str, org: StubOrg, **kw: Any) -> CapacityGuard:
    return CapacityGuard(
        redis.Redis.from_url(redis_url),
        org,  # type: ignore[arg-type]
        default=QueuePolicy(min_on_queue=1),
        overrides={},
        observation_ttl_s=60,
        membership_ttl_s=60,
        reservation_grace_s=5,
        **kw,
    )


def test_two_orgs_keep_their_own_observations_and_reservations_for_the_same_ids(redis_url):
    default_org = StubOrg({"agent-1": ["q1"]}, {"q1": 2})
    acme_org = StubOrg({"agent-1": ["q1", "q2"]}, {"q1": 3, "q2": 3})
    default = guard(redis_url, default_org)
    acme = guard(redis_url, acme_org, prefix="presence:org:acme")

    assert default.check_and_reserve("req-1", "agent-1").allowed
    assert not default.check_and_reserve("req-2", "agent-1").allowed, "q1 would fall below 1"
    verdict = acme.check_and_reserve("req-2", "agent-1")

    assert verdict.allowed, "the other org's reservation in its q1 does not count here"
    assert verdict.queues == ("q1", "q2"), "the agent's queues in this org"
    assert acme.loads(["q1"])["q1"].on_queue == 3
    assert default.loads(["q1"])["q1"].on_queue == 2
    assert (default_org.observed, acme_org.observed) == (1, 1)
    acme.release("req-2", verdict.queues)
    assert not default.check_and_reserve("req-2", "agent-1").allowed
