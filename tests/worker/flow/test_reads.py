"""No Genesys read that no rule needs: both flows read the agent's current presence only for an
expected state, a transition the matrix can refuse or a possible move off queue (the capacity
guard) — and never skip the reads that confirmation and redelivery rely on."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from tests.worker.flow.fakes import T0, World, world
from tests.worker.flow.test_flows import (
    AGENT,
    AVAILABLE,
    BREAK,
    FLOWS,
    OFFLINE,
    ON_QUEUE,
    Single,
    Wave,
    payload,
)
from worker.genesys.errors import ServerError, TransportError
from worker.rules.transitions import TransitionMatrix
from worker.state_cache import AgentState

# Nobody may go on queue from offline: a change to On Queue depends on where the agent is.
STRICT = TransitionMatrix.from_toml(
    """
[groups]
available = ["Available", "Idle"]
queue = ["On Queue"]
busy = ["Busy", "Meeting", "Training"]
break = ["Break", "Meal", "Away"]
offline = ["Offline"]
[allow]
available = ["available", "queue", "busy", "break", "offline"]
queue = ["available", "queue", "busy", "break", "offline"]
busy = ["available", "queue", "busy", "break", "offline"]
break = ["available", "queue", "busy", "break", "offline"]
offline = ["available", "busy", "offline"]
"""
)


def reads(w: World) -> int:
    """Presence reads the flow sent (a wave reads in bulk)."""
    return w.api.calls["get"] + w.api.calls["bulk_get"]


def go_on_queue(**fields: Any) -> dict[str, Any]:
    return payload(state="On Queue", **fields)


@pytest.mark.parametrize("flow", FLOWS, ids=lambda f: f.name)
def test_a_change_no_rule_depends_on_is_written_without_a_read(flow: Single | Wave) -> None:
    w = world({AGENT: AVAILABLE})  # not cached: nothing known about the agent

    assert flow.run(w, go_on_queue()).outcome == "confirmed"
    assert reads(w) == 0
    assert w.api.writes[AGENT] == 1
    assert w.row("req-1").from_state is None  # not read, so not claimed


@pytest.mark.parametrize("flow", FLOWS, ids=lambda f: f.name)
@pytest.mark.parametrize(
    ("why", "raw", "agent_in", "matrix", "outcome"),
    [
        ("expected state", go_on_queue(expected_state="Available"), AVAILABLE, None, "confirmed"),
        ("the matrix can refuse the target", go_on_queue(), OFFLINE, STRICT, "rejected_transition"),
        ("a possible move off queue", payload(state="Break"), ON_QUEUE, None, "confirmed"),
    ],
    ids=lambda v: v if isinstance(v, str) and " " in v else "",
)
def test_a_rule_that_depends_on_the_current_presence_reads_it_once(
    flow: Single | Wave,
    why: str,
    raw: dict[str, Any],
    agent_in: str,
    matrix: TransitionMatrix | None,
    outcome: str,
) -> None:
    w = world({AGENT: agent_in}, matrix=matrix)

    assert flow.run(w, raw).outcome == outcome
    assert reads(w) == 1
    assert w.row("req-1").from_definition_id == agent_in
    if why == "a possible move off queue":
        assert w.capacity.asked == [AGENT]  # the guard saw the agent was on queue


def cold_start() -> World:
    """An agent not cached yet, whom the priming's presence listing will find Available."""
    w = world({AGENT: AVAILABLE})
    w.confirmations.priming_fills[AGENT] = AgentState(AVAILABLE, "AVAILABLE", 1, "read")
    return w


@pytest.mark.parametrize("flow", FLOWS, ids=lambda f: f.name)
def test_at_a_cold_start_a_change_no_rule_depends_on_waits_for_the_subscriptions_only(
    flow: Single | Wave,
) -> None:
    w = cold_start()

    assert flow.run(w, go_on_queue()).outcome == "confirmed"
    assert w.confirmations.subscribed_waits == 1
    assert w.confirmations.primed_waits == 0, "the cache's fill is not waited for"


@pytest.mark.parametrize("flow", FLOWS, ids=lambda f: f.name)
def test_at_a_cold_start_a_read_a_rule_needs_waits_for_the_fill_that_spares_it(
    flow: Single | Wave,
) -> None:
    w = cold_start()

    assert flow.run(w, go_on_queue(expected_state="Available")).outcome == "confirmed"
    assert w.confirmations.primed_waits == 1
    assert reads(w) == 0
    assert w.row("req-1").from_definition_id == AVAILABLE


@pytest.mark.parametrize("flow", FLOWS, ids=lambda f: f.name)
def test_a_cached_presence_spares_the_read_a_rule_needs(flow: Single | Wave) -> None:
    w = world({AGENT: ON_QUEUE})
    w.cache.put(AGENT, AgentState(ON_QUEUE, "ON_QUEUE", 1, "event"))

    assert flow.run(w, payload(state="Break")).outcome == "confirmed"
    assert reads(w) == 0
    assert w.capacity.asked == [AGENT]


@pytest.mark.parametrize("flow", FLOWS, ids=lambda f: f.name)
def test_an_unread_change_is_still_confirmed_by_a_read_back_when_no_event_comes(
    flow: Single | Wave,
) -> None:
    w = world({AGENT: AVAILABLE})
    w.confirmations.silent.add(AGENT)

    assert flow.run(w, go_on_queue()).outcome == "applied_unconfirmed"
    assert reads(w) == 1  # the read-back after the write, none before it
    assert w.api.writes[AGENT] == 1


@pytest.mark.parametrize("flow", FLOWS, ids=lambda f: f.name)
def test_an_unread_change_whose_answer_was_lost_is_read_back_not_sent_again(
    flow: Single | Wave,
) -> None:
    w = world({AGENT: AVAILABLE})
    w.api.faults["after_write"].append(TransportError("timed out"))  # applied, answer lost
    assert flow.run(w, go_on_queue()).later is not None
    assert reads(w) == 0

    assert flow.run(w, go_on_queue()).outcome == "applied_unconfirmed"
    assert w.api.writes[AGENT] == 1
    assert reads(w) == 1  # the redelivery reads back because the write was marked


@pytest.mark.parametrize("flow", FLOWS, ids=lambda f: f.name)
def test_an_unread_change_that_never_reached_the_platform_is_sent_on_redelivery(
    flow: Single | Wave,
) -> None:
    w = world({AGENT: ON_QUEUE})  # already in the target: only the modifiedDate tells
    w.api.faults["write"].append(ServerError("unavailable", status=503))
    assert flow.run(w, go_on_queue()).later is not None

    assert flow.run(w, go_on_queue()).outcome == "confirmed"
    assert w.api.writes[AGENT] == 1


@pytest.mark.parametrize("flow", FLOWS, ids=lambda f: f.name)
def test_a_superseded_request_ends_without_any_call(flow: Single | Wave) -> None:
    w = world({AGENT: BREAK})
    w.ordering.register(AGENT, int((T0 + timedelta(seconds=1)).timestamp() * 1e6), "req-newer")

    assert flow.run(w, go_on_queue()).outcome == "superseded"
    assert reads(w) == 0
    assert w.api.writes[AGENT] == 0
