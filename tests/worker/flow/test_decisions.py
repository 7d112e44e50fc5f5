"""The decision core: pure functions, so plain tables of inputs and verdicts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from models import Outcome
from producer.schema import PresenceUpdate
from tests.worker.flow.fakes import DEFINITIONS, T0
from worker.catalog import Definition
from worker.flow.decisions import (
    AskCapacity,
    Defer,
    Proceed,
    ReadBack,
    Reject,
    confirm,
    decide,
    error_code,
    needs_current,
    refusal,
    took_effect,
)
from worker.genesys.errors import Forbidden, GenesysError, ServerError, TransportError
from worker.genesys.models import UserPresence
from worker.intents import Intent
from worker.notifications.listener import PresenceEvent
from worker.rules.capacity import CapacityVerdict
from worker.rules.transitions import TransitionMatrix
from worker.state_cache import AgentState

D = {d.label: d for d in DEFINITIONS}
MATRIX = TransitionMatrix.load(None)
AGENT = "3ce84f47-4e65-4756-a815-67a2b32e58b8"
NO_ROOM = CapacityVerdict(False, "queue q: 1 on queue, minimum 1", ("q",))


def update(**fields: object) -> PresenceUpdate:
    return PresenceUpdate.model_validate(
        {"user_id": AGENT, "state": "Break", "requested_at": T0.isoformat(), **fields}
    )


def verdict(
    current: Definition | None,
    target: str = "Break",
    *,
    expected: str | None = None,
    room: CapacityVerdict | None = None,
    at_s: float = 0,
    **fields: object,
) -> object:
    return decide(
        update(**fields),
        D[target],
        D[expected] if expected else None,
        current=current,
        current_label=current.label if current else None,
        matrix=MATRIX,
        room=room,
        now=T0 + timedelta(seconds=at_s),
        defer_max_s=600,
    )


@pytest.mark.parametrize(
    ("case", "result"),
    [
        (lambda: verdict(D["Available"]), Proceed()),
        (lambda: verdict(None), Proceed()),  # unknown now: only the rules that can tell apply
        (
            lambda: verdict(D["Available"], expected="On Queue"),
            Reject(
                Outcome.REJECTED_TRANSITION,
                "unexpected.state",
                "Expected On Queue but the agent is Available",
            ),
        ),
        (
            lambda: verdict(None, expected="On Queue"),
            Reject(
                Outcome.REJECTED_TRANSITION,
                "unexpected.state",
                "Expected On Queue but the agent is in an unknown presence",
            ),
        ),
        (lambda: verdict(D["Coffee"], "Available", expected="Break"), Proceed()),  # any secondary
        (lambda: verdict(D["On Queue"]), AskCapacity()),
        (lambda: verdict(D["On Queue"], room=CapacityVerdict(True, "ok", ("q",))), Proceed(("q",))),
        (
            lambda: verdict(D["On Queue"], room=NO_ROOM),
            Reject(Outcome.REJECTED_CAPACITY, "capacity.insufficient", NO_ROOM.reason),
        ),
        (
            lambda: verdict(D["On Queue"], room=NO_ROOM, capacity_policy="defer"),
            Defer(f"waiting for room: {NO_ROOM.reason}"),
        ),
        (
            lambda: verdict(D["On Queue"], room=NO_ROOM, capacity_policy="defer", at_s=601),
            Reject(Outcome.REJECTED_CAPACITY, "capacity.insufficient", NO_ROOM.reason),
        ),
        (
            lambda: verdict(
                D["On Queue"],
                room=NO_ROOM,
                capacity_policy="defer",
                defer_until=(T0 + timedelta(days=365)).isoformat(),
                at_s=601,
            ),
            Reject(Outcome.REJECTED_CAPACITY, "capacity.insufficient", NO_ROOM.reason),
        ),
        (
            lambda: verdict(
                D["On Queue"],
                room=NO_ROOM,
                capacity_policy="defer",
                defer_until=(T0 + timedelta(seconds=60)).isoformat(),
                at_s=61,
            ),
            Reject(Outcome.REJECTED_CAPACITY, "capacity.insufficient", NO_ROOM.reason),
        ),
        (
            lambda: verdict(D["On Queue"], capacity_policy="force", force_reason="drill"),
            Proceed(note="capacity guard bypassed: drill"),
        ),
        (lambda: verdict(D["On Queue"], "On Queue"), Proceed()),  # staying on queue
    ],
    ids=[
        "allowed",
        "current unknown",
        "expected state differs",
        "expected state, current unknown",
        "expected system presence matches a secondary",
        "off queue: ask the guard",
        "off queue, room",
        "off queue, no room",
        "no room, defer",
        "no room, defer deadline passed",
        "no room, a far defer_until is capped by CAPACITY_DEFER_MAX_S",
        "no room, defer_until passed",
        "forced",
        "on queue to on queue",
    ],
)
def test_decide(case: object, result: object) -> None:
    assert case() == result  # type: ignore[operator]


def test_decide_denies_what_the_matrix_denies() -> None:
    result = verdict(D["Offline"])
    assert isinstance(result, Reject)
    assert (result.outcome, result.code) == (Outcome.REJECTED_TRANSITION, "transition.denied")


def test_the_current_presence_is_needed_only_when_a_rule_reads_it() -> None:
    assert not needs_current(D["On Queue"], None, MATRIX)  # anyone may go on queue
    assert needs_current(D["On Queue"], D["Available"], MATRIX)  # expected state
    assert needs_current(D["Break"], None, MATRIX)  # the guard: is the agent on queue now?


def presence(definition_id: str, system: str = "BREAK") -> UserPresence:
    return UserPresence.model_validate(
        {"presenceDefinition": {"id": definition_id, "systemPresence": system}}
    )


EVENT = PresenceEvent(AGENT, "def-break", "BREAK", 5000, "c")


@pytest.mark.parametrize(
    ("evidence", "outcome", "code", "note"),
    [
        ({"socket_event": EVENT}, Outcome.CONFIRMED, None, None),
        (
            {"shared": AgentState("def-break", "BREAK", 5000, "event")},
            Outcome.CONFIRMED,
            None,
            None,
        ),
        ({"shared": AgentState("def-break", "BREAK", 4000, "event")}, None, None, None),  # older
        ({"shared": AgentState("def-break", "Break", 5000, "patch")}, None, None, None),  # ours
        ({"read_back": ReadBack(presence("def-break"))}, Outcome.APPLIED_UNCONFIRMED, None, None),
        (
            {"read_back": ReadBack(presence("def-offline", "OFFLINE"))},
            Outcome.DRIFTED,
            "drifted",
            None,
        ),
        ({"read_back": ReadBack(None)}, Outcome.DRIFTED, "drifted", None),
        (
            {"read_back": ReadBack(failure="GET timed out")},
            Outcome.APPLIED_UNCONFIRMED,
            None,
            "read-back failed: GET timed out",
        ),
    ],
    ids=[
        "event on this socket",
        "event seen by another process",
        "an older event elsewhere",
        "only our own write's answer",
        "read-back agrees",
        "read-back disagrees",
        "read-back lists nothing",
        "read-back failed after the write",
    ],
)
def test_confirm(
    evidence: dict[str, object], outcome: Outcome | None, code: str | None, note: str | None
) -> None:
    args = {"socket_event": None, "shared": None, "read_back": None, **evidence}
    result = confirm("def-break", 5000, **args)  # type: ignore[arg-type]
    if outcome is None:
        assert result is None
        return
    assert result is not None
    assert (result.outcome, result.code, result.note) == (outcome, code, note)


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (ServerError("x", status=503, code="service.unavailable"), "service.unavailable"),
        (ServerError("x", status=502), "502"),
        (TransportError("timed out"), "transport.error"),
        (GenesysError("refused"), "refused"),
    ],
)
def test_every_error_has_a_code(error: GenesysError, code: str) -> None:
    assert error_code(error) == code


def test_a_permission_refusal_says_where_to_look() -> None:
    why = refusal(Forbidden("Missing permission", status=403, code="missing", correlation_id="c1"))
    assert (why.code, why.correlation_id) == ("missing", "c1")
    assert why.message == "Missing permission (check the OAuth client's roles)"


def presence_at(definition_id: str, modified_ms: int | None) -> UserPresence:
    body: dict[str, object] = {"presenceDefinition": {"id": definition_id}}
    if modified_ms is not None:
        body["modifiedDate"] = datetime.fromtimestamp(modified_ms / 1000, UTC).isoformat()
    return UserPresence.model_validate(body)


@pytest.mark.parametrize(
    ("marked", "presence", "applied"),
    [
        (Intent("def-break", 5_000, 9_000), presence_at("def-break", 9_500), True),
        (Intent("def-break", 5_000, 9_000), presence_at("def-break", 5_000), False),
        (Intent("def-break", 5_000, 9_000), presence_at("def-meal", 9_500), False),
        (Intent("def-break", 0, 9_000), presence_at("def-break", 8_000), True),  # within skew
        (Intent("def-break", 0, 9_000), presence_at("def-break", 1_000), False),
        (Intent("def-break", 0, 9_000), presence_at("def-break", None), True),
        (Intent("def-break", 0, 9_000), None, False),
    ],
    ids=[
        "in the target, changed since",
        "in the target, unchanged since before the write",
        "in another presence",
        "in the target, no earlier date known, changed about when marked",
        "in the target long before the mark",
        "no modifiedDate at all: never write twice",
        "nothing read back",
    ],
)
def test_took_effect(marked: Intent, presence: UserPresence | None, applied: bool) -> None:
    assert took_effect(marked, presence) is applied
