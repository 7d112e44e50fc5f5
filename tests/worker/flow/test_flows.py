"""Both update flows, driven in-process through every outcome and every failure point.

Each scenario runs once through the single flow (``presence.update``) and once through the wave
flow (``presence.wave`` with one element), with fakes for every port and an injected clock.
Where the flows differ by design (a wave hands a busy or deferred agent back as a single
update), the table says so.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest

from models import Outcome
from producer.schema import wave_element
from tests.worker.flow.fakes import T0, World, world
from worker.flow import steps
from worker.flow.request import Attempt
from worker.flow.single import handle_update, record_dead_letter
from worker.flow.wave import handle_wave, record_wave_dead_letter
from worker.genesys.errors import Forbidden, NotFound, ServerError, TransportError
from worker.intents import Intent
from worker.limiter import BudgetExhausted
from worker.retry import Delay, GiveUp, RetryLater, RetryPolicy
from worker.state_cache import AgentState

AGENT = "3ce84f47-4e65-4756-a815-67a2b32e58b8"
REQUEST = "req-1"
AVAILABLE, ON_QUEUE, BREAK, OFFLINE = "def-available", "def-onqueue", "def-break", "def-offline"


def payload(**fields: Any) -> dict[str, Any]:
    return {"user_id": AGENT, "state": "Break", "requested_at": T0.isoformat(), **fields}


@dataclass
class Result:
    """What one delivery of the request did."""

    outcome: str | None = None  # the terminal outcome recorded
    later: RetryLater | None = None  # or: try again later (nothing recorded)
    requeued: bool = False  # or (waves): handed over as a single update


class Single:
    name = "single"

    def run(self, w: World, raw: Any, failures: int = 0) -> Result:
        attempt = Attempt(REQUEST, w.clock.now(), failures=failures, worker="test")
        try:
            return Result(outcome=handle_update(w.ports, raw, attempt).value)
        except RetryLater as later:
            assert REQUEST not in w.store.rows, "a retried request must not be recorded yet"
            return Result(later=later)

    def dead_letter(self, w: World, raw: Any, failures: int, give_up: GiveUp) -> str:
        attempt = Attempt(REQUEST, w.clock.now(), failures=failures, worker="test")
        return record_dead_letter(w.ports, raw, attempt, give_up).value


class Wave:
    name = "wave"

    def run(self, w: World, raw: Any, failures: int = 0) -> Result:
        attempt = Attempt("wave-1", w.clock.now(), failures=failures, worker="test")
        requeued: list[str] = []
        try:
            handle_wave(
                w.ports,
                [wave_element(REQUEST, raw)],
                attempt,
                lambda request_id, _payload, _countdown: requeued.append(request_id),
            )
        except RetryLater as later:
            assert REQUEST not in w.store.rows
            return Result(later=later)
        if requeued:
            assert requeued == [REQUEST]
            assert REQUEST not in w.store.rows
            return Result(requeued=True)
        row = w.store.rows.get(REQUEST)
        return Result(outcome=row.outcome.value if row and row.outcome else None)

    def dead_letter(self, w: World, raw: Any, failures: int, give_up: GiveUp) -> str:
        attempt = Attempt("wave-1", w.clock.now(), failures=failures, worker="test")
        counts = record_wave_dead_letter(w.ports, [wave_element(REQUEST, raw)], attempt, give_up)
        (outcome,) = counts
        return outcome


FLOWS = [Single(), Wave()]


@dataclass
class Scenario:
    name: str
    expect: dict[str, str | Delay]  # per flow: an outcome, a Delay, or "requeued"
    raw: dict[str, Any] = field(default_factory=payload)
    agent_in: str = AVAILABLE
    setup: Callable[[World], None] = lambda w: None
    check: Callable[[World, str], None] = lambda w, flow: None
    code: str | None = None  # the row's error_code


def both(expected: str | Delay) -> dict[str, str | Delay]:
    return {"single": expected, "wave": expected}


def wrote_once(w: World, flow: str) -> None:
    assert w.api.writes[AGENT] == 1


def wrote_nothing(w: World, flow: str) -> None:
    assert w.api.writes[AGENT] == 0


def gave_room_back(w: World, flow: str) -> None:
    assert w.capacity.released == [REQUEST]
    assert not w.capacity.reserved
    assert w.api.writes[AGENT] == 0


SCENARIOS = [
    Scenario("confirmed on this socket", both("confirmed"), check=wrote_once),
    Scenario(
        "confirmed by an event another process saw",
        both("confirmed"),
        setup=lambda w: w.confirmations.elsewhere.add(AGENT),
        check=lambda w, f: (wrote_once(w, f), _no_read_back(w, f)),
    ),
    Scenario(
        "socket silent, read-back agrees",
        both("applied_unconfirmed"),
        setup=lambda w: w.confirmations.silent.add(AGENT),
        check=wrote_once,
    ),
    Scenario(
        "socket down, read-back agrees",
        both("applied_unconfirmed"),
        setup=lambda w: setattr(w.confirmations, "connected", False),
        check=wrote_once,
    ),
    Scenario(
        "read-back fails after an applied write",
        both("applied_unconfirmed"),
        setup=lambda w: (
            w.confirmations.silent.add(AGENT),
            w.api.faults["read"].extend([None, ServerError("GET failed", status=503)]),
        ),
        check=lambda w, f: (wrote_once(w, f), _noted(w, "read-back failed: GET failed")),
    ),
    Scenario(
        "budget exhausted for the read-back after an applied write",
        both("applied_unconfirmed"),
        setup=lambda w: (
            w.confirmations.silent.add(AGENT),
            w.api.faults["read"].extend([None, BudgetExhausted(30)]),
        ),
        check=wrote_once,
    ),
    Scenario(
        "read-back disagrees",
        both("drifted"),
        setup=lambda w: (w.confirmations.silent.add(AGENT), w.api.drift.update({AGENT: OFFLINE})),
        code="drifted",
        check=wrote_once,
    ),
    Scenario(
        "a newer request for the agent exists",
        both("superseded"),
        setup=lambda w: w.ordering.register(AGENT, 2**62, "newer"),
        check=wrote_nothing,
    ),
    Scenario(
        "payload invalid",
        both("invalid"),
        raw={"user_id": "nobody", "state": "Break"},
        code="invalid.payload",
        check=wrote_nothing,
    ),
    Scenario(
        "state unknown",
        both("invalid"),
        raw=payload(state="Lunchtime"),
        code="unknown.presence",
        check=wrote_nothing,
    ),
    Scenario(
        "requested_at far in the future (it would win forever)",
        both("invalid"),
        raw=payload(requested_at="9999-12-31T00:00:00Z"),
        code="invalid.payload",
        check=lambda w, f: (wrote_nothing(w, f), _not_registered(w)),
    ),
    Scenario(
        "requested_at as a number",
        both("invalid"),
        raw=payload(requested_at=-1),
        code="invalid.payload",
        check=wrote_nothing,
    ),
    Scenario(
        "version as a boolean",
        both("invalid"),
        raw=payload(version=True),
        code="invalid.payload",
        check=wrote_nothing,
    ),
    Scenario(
        "expected state does not hold",
        both("rejected_transition"),
        raw=payload(expected_state="On Queue"),
        code="unexpected.state",
        check=wrote_nothing,
    ),
    Scenario(
        "transition matrix denies",
        both("rejected_transition"),
        agent_in=OFFLINE,
        code="transition.denied",
        check=wrote_nothing,
    ),
    Scenario(
        "no room in a queue",
        both("rejected_capacity"),
        agent_in=ON_QUEUE,
        setup=lambda w: w.capacity.refuse.update({AGENT: "queue-1: 1 on queue, minimum 1"}),
        code="capacity.insufficient",
        check=wrote_nothing,
    ),
    Scenario(
        "no room yet, deferring",
        {"single": Delay.DEFER, "wave": "requeued"},
        raw=payload(capacity_policy="defer"),
        agent_in=ON_QUEUE,
        setup=lambda w: w.capacity.refuse.update({AGENT: "queue-1 full"}),
        check=wrote_nothing,
    ),
    Scenario(
        "no room and the defer deadline passed",
        both("rejected_capacity"),
        raw=payload(capacity_policy="defer", defer_until=(T0 - timedelta(seconds=1)).isoformat()),
        agent_in=ON_QUEUE,
        setup=lambda w: w.capacity.refuse.update({AGENT: "queue-1 full"}),
        code="capacity.insufficient",
        check=wrote_nothing,
    ),
    Scenario(
        "capacity guard forced",
        both("confirmed"),
        raw=payload(capacity_policy="force", force_reason="storm drill"),
        agent_in=ON_QUEUE,
        setup=lambda w: w.capacity.refuse.update({AGENT: "queue-1 full"}),
        check=lambda w, f: (wrote_once(w, f), _noted(w, "capacity guard bypassed: storm drill")),
    ),
    Scenario(
        "platform refuses the write",
        both("failed"),
        setup=lambda w: w.api.refuse.update(
            {AGENT: NotFound("no such user", status=404, code="not.found")}
        ),
        code="not.found",
        check=wrote_nothing,
    ),
    Scenario(
        "platform refuses the definitions (permissions)",
        both("failed"),
        setup=lambda w: setattr(
            w.catalog,
            "fault",
            Forbidden("missing permission", status=403, code="missing.any.permissions"),
        ),
        code="missing.any.permissions",
        check=wrote_nothing,
    ),
    Scenario(
        "platform fails before the write",
        both(Delay.FAILURE),
        agent_in=ON_QUEUE,
        setup=lambda w: w.api.faults["write"].append(ServerError("PATCH failed", status=503)),
        check=gave_room_back,
    ),
    Scenario(
        "budget exhausted before the write",
        both(Delay.WAIT),
        agent_in=ON_QUEUE,
        setup=lambda w: w.api.faults["write"].append(BudgetExhausted(12)),
        check=gave_room_back,
    ),
    Scenario(
        "another worker holds the agent's lock",
        {"single": Delay.WAIT, "wave": "requeued"},
        setup=lambda w: w.ordering.busy.add(AGENT),
        check=wrote_nothing,
    ),
]


def _not_registered(w: World) -> None:
    assert AGENT not in w.ordering.newest, "an invalid request never becomes the agent's newest"


def _no_read_back(w: World, flow: str) -> None:
    assert w.api.calls["get"] + w.api.calls["bulk_get"] <= 1  # the current state only


def _noted(w: World, note: str) -> None:
    assert w.row(REQUEST).note == note


@pytest.mark.parametrize("flow", FLOWS, ids=lambda f: f.name)
@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_every_outcome_and_failure_point(flow: Single | Wave, scenario: Scenario) -> None:
    w = world({AGENT: scenario.agent_in})
    scenario.setup(w)

    result = flow.run(w, scenario.raw)

    expected = scenario.expect[flow.name]
    if isinstance(expected, Delay):
        assert result.later is not None, result
        assert result.later.delay is expected, result
    elif expected == "requeued":
        assert result.requeued, result
    else:
        assert result.outcome == expected, result
        row = w.row(REQUEST)
        assert row.error_code == scenario.code
        assert row.error_code != "None"
        assert w.observed == [REQUEST]
        changed = expected in {"confirmed", "applied_unconfirmed", "drifted"}
        assert w.enqueued == ([1] if changed else []), "one WFM delivery per state change"
    assert not w.confirmations.open, "every waiter is released"
    scenario.check(w, flow.name)


@pytest.mark.parametrize("flow", FLOWS, ids=lambda f: f.name)
def test_every_outcome_is_covered(flow: Single | Wave) -> None:
    covered = {s.expect[flow.name] for s in SCENARIOS}
    assert {o.value for o in Outcome} - {"dead_letter"} <= covered  # dead_letter: below


def drive(
    flow: Single | Wave, w: World, raw: Any, policy: RetryPolicy, failures: int = 0
) -> tuple[str, int]:
    """Deliver the request as the Celery task does, retrying as the policy says; returns the
    terminal outcome and the number of deliveries."""
    for delivery in range(1, 50):
        result = flow.run(w, raw, failures)
        if result.later is None:
            assert result.outcome is not None
            return result.outcome, delivery
        age_s = (w.clock.now() - T0).total_seconds() if flow.name == "single" else None
        decision = policy.decide(result.later, failures=failures, age_s=age_s)
        if isinstance(decision, GiveUp):
            return flow.dead_letter(w, raw, failures, decision), delivery
        failures = decision.failures
        w.clock.advance(decision.countdown_s)
    raise AssertionError("the request never ended")


POLICY = RetryPolicy(first_s=2, max_s=60, max_failures=3, max_age_s=600, uniform=lambda a, b: b)


@pytest.mark.parametrize("flow", FLOWS, ids=lambda f: f.name)
@pytest.mark.parametrize(
    ("error", "code"),
    [
        (
            ServerError("PATCH failed", status=503, code="service.unavailable"),
            "service.unavailable",
        ),
        (ServerError("PATCH failed", status=502), "502"),
        (TransportError("PATCH timed out after 10 s"), "transport.error"),
    ],
    ids=["coded 503", "bare 502", "timeout"],
)
def test_retries_run_out_into_a_dead_letter_with_a_real_code(
    flow: Single | Wave, error: Exception, code: str
) -> None:
    w = world({AGENT: AVAILABLE})
    w.api.faults["write"].extend([error] * 10)

    outcome, deliveries = drive(flow, w, payload(), POLICY)

    assert (outcome, deliveries) == ("dead_letter", 4)  # the first try and three retries
    row = w.row(REQUEST)
    assert row.error_code == code
    assert row.error_message is not None
    assert row.error_message.startswith("Gave up after 4 attempts")
    assert row.requested_at == T0, "a dead-letter row keeps requested_at"
    assert w.api.writes[AGENT] == 0


@pytest.mark.parametrize("flow", FLOWS, ids=lambda f: f.name)
def test_a_transient_failure_is_retried_then_applied_once(flow: Single | Wave) -> None:
    w = world({AGENT: AVAILABLE})
    w.api.faults["write"].extend([ServerError("PATCH failed", status=503)] * 2)

    assert drive(flow, w, payload(), POLICY) == ("confirmed", 3)
    assert w.api.writes[AGENT] == 1
    assert w.row(REQUEST).attempts == 3


def test_a_write_that_waited_for_budget_is_retried_without_a_read_back() -> None:
    """The limiter refused before anything was sent: the retry has no earlier write to check."""
    w = world({AGENT: AVAILABLE})
    w.api.faults["write"].append(BudgetExhausted(12))

    assert drive(Single(), w, payload(), POLICY) == ("confirmed", 2)
    assert w.api.writes[AGENT] == 1
    assert w.api.calls["get"] == 1, "one read of the current presence, none of an earlier write"


def test_a_single_update_reads_its_mark_and_the_agents_cached_state_together() -> None:
    w = world({AGENT: AVAILABLE})
    w.cache.put(AGENT, AgentState(AVAILABLE, "AVAILABLE", 1, "event"))
    before_the_write: list[str] = []
    cache_get = w.cache.get

    def get(user_id: str) -> AgentState | None:
        if not w.api.calls["patch"]:
            before_the_write.append(user_id)
        return cache_get(user_id)

    w.cache.get = get  # type: ignore[method-assign]

    assert Single().run(w, payload()).outcome == "confirmed"
    assert w.intents.reads_with_state == 1
    assert before_the_write == [], "the state read with the mark is the one the verdict uses"
    assert w.api.calls["get"] == 0


def test_a_read_back_of_an_earlier_write_is_followed_by_a_fresh_cache_read() -> None:
    w = world({AGENT: AVAILABLE})
    w.intents.mark({REQUEST: Intent(BREAK, 0, 0)})  # marked, never applied
    separate: list[str] = []
    cache_get = w.cache.get
    w.cache.get = lambda user_id: separate.append(user_id) or cache_get(user_id)  # type: ignore[method-assign]

    assert Single().run(w, payload()).outcome == "confirmed"
    assert w.api.calls["get"] == 1, "the read-back; the verdict uses what it stored"
    assert separate[:1] == [AGENT]


def test_a_request_waiting_for_budget_too_long_is_dead_lettered() -> None:
    w = world({AGENT: AVAILABLE})
    w.api.faults["write"].extend([BudgetExhausted(201)] * 10)

    assert drive(Single(), w, payload(), POLICY) == ("dead_letter", 4)  # 0, 200.5, 401, 601.5 s
    assert w.row(REQUEST).error_code == "too.old"


@pytest.mark.parametrize("flow", FLOWS, ids=lambda f: f.name)
def test_a_budget_wait_comes_back_just_before_its_slot_frees(flow: Single | Wave) -> None:
    """It then waits the rest inline on the limiter: its retry's jitter and the schedule's poll
    cannot make the next minute of a saturated budget start late."""
    w = world({AGENT: AVAILABLE})
    w.api.faults["write"].append(BudgetExhausted(12))

    result = flow.run(w, payload(), 0)

    assert result.later is not None
    assert result.later.delay is Delay.WAIT
    assert result.later.countdown_s == 12 - steps.BUDGET_EARLY_S


@pytest.mark.parametrize("flow", FLOWS, ids=lambda f: f.name)
def test_a_budget_wait_comes_back_no_earlier_than_the_inline_wait_allowed(
    flow: Single | Wave,
) -> None:
    """A process that waits at most 0.05 s inline would be refused again at once, and spin, if
    it came back a whole second early."""
    w = world({AGENT: AVAILABLE})
    w.api.faults["write"].append(BudgetExhausted(12, inline_wait_s=0.05))

    result = flow.run(w, payload(), 0)

    assert result.later is not None
    assert result.later.countdown_s == pytest.approx(12 - 0.05)


def test_a_request_over_an_exhausted_budget_waits_for_its_slot_before_any_other_work() -> None:
    """No lock, no audit lookup, no read: a backlog over the budget costs one limiter call per
    request until its turn."""
    w = world({AGENT: AVAILABLE})
    w.api.faults["budget"].append(BudgetExhausted(30, inline_wait_s=0.05))
    looked_up: list[str] = []
    find_outcome = w.store.find_outcome
    w.store.find_outcome = lambda **kw: looked_up.append(kw["request_id"]) or find_outcome(**kw)  # type: ignore[method-assign]

    result = Single().run(w, payload(), 0)

    assert result.later is not None
    assert result.later.countdown_s == pytest.approx(30 - 0.05)
    assert looked_up == []
    assert w.ordering.newest == {}, "not registered: its turn has not come"
    assert sum(w.api.calls.values()) == 0

    assert Single().run(w, payload(), 0).outcome == "confirmed"  # its turn: applied as usual


@pytest.mark.parametrize("flow", FLOWS, ids=lambda f: f.name)
def test_a_failed_read_back_never_causes_a_second_write(flow: Single | Wave) -> None:
    w = world({AGENT: AVAILABLE})
    w.confirmations.silent.add(AGENT)
    w.api.faults["read"].extend([None, *[ServerError("GET failed", status=503)] * 5])

    assert drive(flow, w, payload(), POLICY) == ("applied_unconfirmed", 1)
    assert flow.run(w, payload()).outcome in {"applied_unconfirmed", None}  # a redelivery
    assert w.api.writes[AGENT] == 1
    assert w.enqueued == [1], "the applied change reaches WFM"


@pytest.mark.parametrize("flow", FLOWS, ids=lambda f: f.name)
def test_a_redelivered_request_is_not_applied_again(flow: Single | Wave) -> None:
    w = world({AGENT: AVAILABLE})
    assert flow.run(w, payload()).outcome == "confirmed"

    flow.run(w, payload())

    assert w.api.writes[AGENT] == 1
    assert len(w.store.rows) == 1
    assert w.observed == [REQUEST]


@pytest.mark.parametrize("flow", FLOWS, ids=lambda f: f.name)
def test_a_repeated_idempotency_key_is_applied_once(flow: Single | Wave) -> None:
    w = world({AGENT: AVAILABLE})
    assert flow.run(w, payload(idempotency_key="k-1")).outcome == "confirmed"
    w.store.rows["other"] = w.store.rows.pop(REQUEST)  # the first copy had another request id

    flow.run(w, payload(idempotency_key="k-1"))

    assert w.api.writes[AGENT] == 1


def test_a_database_failure_at_the_terminal_write_enqueues_nothing() -> None:
    w = world({AGENT: AVAILABLE})
    w.store.fault = RuntimeError("database is down")

    with pytest.raises(RuntimeError):
        handle_update(w.ports, payload(), Attempt(REQUEST, w.clock.now()))

    assert w.enqueued == []
    assert w.observed == []


@pytest.mark.parametrize("flow", FLOWS, ids=lambda f: f.name)
@pytest.mark.parametrize("carried", [-1_000_000, 10**6, True, "3", None])
def test_a_failure_count_set_by_a_producer_cannot_loop_or_overflow(
    flow: Single | Wave, carried: object
) -> None:
    w = world({AGENT: AVAILABLE})
    w.api.faults["write"].extend([ServerError("PATCH failed", status=503)] * 10)
    failures = POLICY.clamp_failures(carried)

    outcome, deliveries = drive(flow, w, payload(), POLICY, failures)

    assert outcome == "dead_letter"
    assert deliveries <= 4
    assert w.api.calls["patch"] + w.api.calls["bulk_put"] <= 4


def stamp_us(offset_s: float = 0) -> int:
    return int((T0 + timedelta(seconds=offset_s)).timestamp() * 1_000_000)


@pytest.mark.parametrize("flow", FLOWS, ids=lambda f: f.name)
@pytest.mark.parametrize("original", ["zzz-original", "aaa-original"], ids=["sorts above", "below"])
def test_a_requeued_copy_takes_its_originals_place(flow: Single | Wave, original: str) -> None:
    w = world({AGENT: AVAILABLE})
    w.ordering.register(AGENT, stamp_us(), original)  # the original, dead-lettered

    result = flow.run(w, payload(requeue_of=original))

    assert result.outcome == "confirmed"
    assert w.row(REQUEST).note == f"requeue of {original}"


@pytest.mark.parametrize("flow", FLOWS, ids=lambda f: f.name)
def test_a_requeued_copy_loses_to_a_genuinely_newer_request(flow: Single | Wave) -> None:
    w = world({AGENT: AVAILABLE})
    w.ordering.register(AGENT, stamp_us(), "original")
    w.ordering.register(AGENT, stamp_us(1), "newer")

    assert flow.run(w, payload(requeue_of="original")).outcome == "superseded"
    assert w.api.writes[AGENT] == 0


# -- a change is sent at most once per request -----------------------------------------------------
@pytest.mark.parametrize("flow", FLOWS, ids=lambda f: f.name)
def test_a_write_whose_answer_was_lost_is_read_back_not_sent_again(flow: Single | Wave) -> None:
    w = world({AGENT: AVAILABLE})
    w.api.faults["after_write"].append(TransportError("PATCH timed out after 10 s"))

    first = flow.run(w, payload())
    second = flow.run(w, payload())

    assert first.later is not None
    assert first.later.delay is Delay.FAILURE
    assert second.outcome == "applied_unconfirmed"
    assert w.api.writes[AGENT] == 1
    assert w.row(REQUEST).note == "an earlier delivery sent this change; read back"
    assert w.enqueued == [1], "the applied change reaches WFM"


@pytest.mark.parametrize("flow", FLOWS, ids=lambda f: f.name)
def test_a_write_whose_row_could_not_be_committed_is_recorded_on_redelivery(
    flow: Single | Wave,
) -> None:
    w = world({AGENT: AVAILABLE})
    w.store.fault = RuntimeError("database is down")
    with pytest.raises(RuntimeError):
        flow.run(w, payload())
    w.store.fault = None

    assert flow.run(w, payload()).outcome == "applied_unconfirmed"
    assert w.api.writes[AGENT] == 1


@pytest.mark.parametrize("flow", FLOWS, ids=lambda f: f.name)
def test_an_applied_change_is_never_recorded_superseded(flow: Single | Wave) -> None:
    w = world({AGENT: AVAILABLE})
    w.api.faults["after_write"].append(ServerError("gateway timeout", status=504))
    flow.run(w, payload())
    w.ordering.register(AGENT, stamp_us(60), "newer")  # a newer request arrived meanwhile

    assert flow.run(w, payload()).outcome == "applied_unconfirmed"
    assert w.api.writes[AGENT] == 1


@pytest.mark.parametrize("flow", FLOWS, ids=lambda f: f.name)
def test_an_accepted_change_replaced_by_a_newer_one_is_recorded_applied_not_superseded(
    flow: Single | Wave,
) -> None:
    """The write was accepted, its row refused (database down); before the redelivery a newer
    request was applied, so the agent no longer shows this change: it happened all the same."""
    w = world({AGENT: AVAILABLE})
    w.store.fault = RuntimeError("database is down")
    with pytest.raises(RuntimeError):
        flow.run(w, payload())
    w.store.fault = None
    w.ordering.register(AGENT, stamp_us(60), "newer")
    w.api.presences[AGENT] = ON_QUEUE  # the newer request's change
    reads_before = w.api.calls["get"] + w.api.calls["bulk_get"]

    assert flow.run(w, payload()).outcome == "applied_unconfirmed"
    assert w.api.writes[AGENT] == 1
    assert w.row(REQUEST).correlation_id is not None, "the row names the write that applied it"
    assert w.api.calls["get"] + w.api.calls["bulk_get"] == reads_before, "no read-back needed"
    assert w.enqueued == [1], "the applied change reaches WFM"


@pytest.mark.parametrize("flow", FLOWS, ids=lambda f: f.name)
def test_a_write_that_never_reached_the_platform_is_sent_on_redelivery(flow: Single | Wave) -> None:
    w = world({AGENT: AVAILABLE})
    w.api.faults["write"].append(TransportError("connection refused"))  # marked, never applied
    assert flow.run(w, payload()).later is not None

    assert flow.run(w, payload()).outcome == "confirmed"
    assert w.api.writes[AGENT] == 1


@pytest.mark.parametrize("flow", FLOWS, ids=lambda f: f.name)
def test_an_agent_already_in_the_target_before_a_failed_write_is_written_on_redelivery(
    flow: Single | Wave,
) -> None:
    w = world({AGENT: BREAK})  # already in the requested state, unchanged since
    w.api.faults["write"].append(ServerError("bulk failed", status=503))  # marked, not applied
    assert flow.run(w, payload()).later is not None

    assert flow.run(w, payload()).outcome == "confirmed"
    assert w.api.writes[AGENT] == 1
