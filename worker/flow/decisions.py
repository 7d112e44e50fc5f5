"""The decision core shared by single updates and waves: pure functions, no I/O.

- :func:`decide`: may the change go ahead, given the request, the agent's current presence, the
  transition rules and (when asked for) the capacity guard's verdict?
- :func:`confirm`: what is known after an applied write, from the evidence gathered so far.
- :func:`refusal`: the audit fields of a platform error.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from models import Outcome
from producer.schema import PresenceUpdate
from worker.catalog import Definition
from worker.flow.ports import Matrix
from worker.genesys.errors import GenesysError, TransportError
from worker.genesys.models import UserPresence
from worker.intents import Intent
from worker.notifications.listener import PresenceEvent
from worker.rules.capacity import ON_QUEUE, CapacityVerdict, takes_out_of_routing
from worker.state_cache import AgentState


# -- may the change go ahead? ---------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Proceed:
    """Write the change; ``reserved`` are the queues holding a place for it (give them back if
    it is not applied); ``note`` goes on the audit row (a recorded bypass)."""

    reserved: tuple[str, ...] = ()
    note: str | None = None


@dataclass(frozen=True, slots=True)
class Reject:
    """End the request with ``outcome`` and these audit fields."""

    outcome: Outcome
    code: str | None
    message: str


@dataclass(frozen=True, slots=True)
class Defer:
    """Wait for room in the agent's queues and decide again later."""

    message: str


@dataclass(frozen=True, slots=True)
class AskCapacity:
    """The change takes the agent off queue: ask the capacity guard, then decide again with its
    verdict."""


Decision = Proceed | Reject | Defer | AskCapacity

SUPERSEDED = Reject(Outcome.SUPERSEDED, None, "A newer request for this agent was accepted")


def is_in(current: Definition | None, expected: Definition) -> bool:
    """A system presence matches any of its secondary presences; a secondary only itself."""
    if current is None:
        return False
    return current.system == expected.system if expected.primary else current.id == expected.id


def defer_deadline(update: PresenceUpdate, defer_max_s: float) -> datetime:
    """Until when a ``defer`` request waits for room: ``defer_until``, but never more than
    ``defer_max_s`` after the request was made (the default when ``defer_until`` is unset)."""
    latest = update.requested_at + timedelta(seconds=defer_max_s)
    return min(update.defer_until, latest) if update.defer_until is not None else latest


def needs_current(target: Definition, expected: Definition | None, matrix: Matrix) -> bool:
    """Whether any rule depends on the agent's current presence (else it need not be read):
    ``expected_state``, the capacity guard (is the agent on queue now?), the matrix."""
    return expected is not None or target.system != ON_QUEUE or not matrix.always_allows(target)


def decide(
    update: PresenceUpdate,
    target: Definition,
    expected: Definition | None,
    *,
    current: Definition | None,
    current_label: str | None,
    matrix: Matrix,
    room: CapacityVerdict | None,
    now: datetime,
    defer_max_s: float,
) -> Decision:
    """The verdict on one change. ``current`` is None when the agent's presence is unknown (not
    read, or a definition the catalog lacks; ``current_label`` then says what was seen).
    Returns :class:`AskCapacity` when the capacity guard must be asked and ``room`` is None."""
    if expected is not None and not is_in(current, expected):
        seen = current_label or "in an unknown presence"
        return Reject(
            Outcome.REJECTED_TRANSITION,
            "unexpected.state",
            f"Expected {expected.label} but the agent is {seen}",
        )
    if current is not None:
        verdict = matrix.check(current, target)
        if not verdict.allowed:
            return Reject(Outcome.REJECTED_TRANSITION, "transition.denied", verdict.reason)
    if not takes_out_of_routing(current, target):
        return Proceed()
    if update.capacity_policy == "force":
        return Proceed(note=f"capacity guard bypassed: {update.force_reason}")
    if room is None:
        return AskCapacity()
    if room.allowed:
        return Proceed(reserved=room.queues)
    if update.capacity_policy == "defer" and now < defer_deadline(update, defer_max_s):
        return Defer(f"waiting for room: {room.reason}")
    return Reject(Outcome.REJECTED_CAPACITY, "capacity.insufficient", room.reason)


# -- what is known after an applied write? -------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ReadBack:
    """The answer of the read-back after a write: the agent's presence (None when the platform
    listed nothing for the agent), or ``failure`` when the read itself failed."""

    presence: UserPresence | None = None
    failure: str | None = None


@dataclass(frozen=True, slots=True)
class Confirmation:
    """The terminal outcome of an applied change, with its audit fields."""

    outcome: Outcome
    code: str | None = None
    message: str | None = None
    note: str | None = None


def confirm(
    target_id: str,
    written_ms: int,
    *,
    socket_event: PresenceEvent | None,
    shared: AgentState | None,
    read_back: ReadBack | None,
) -> Confirmation | None:
    """Classify an applied write from the evidence so far; None when only a read-back can tell.

    In order: the confirming event on this process's socket; the same event seen by another
    process (the shared cache holds an event-fed entry for the target at or after our write);
    the read-back agreeing (``applied_unconfirmed``) or not (``drifted``). A read-back that
    fails after the write was accepted is ``applied_unconfirmed`` with a note: the change is
    never sent again for it.
    """
    if socket_event is not None:
        return Confirmation(Outcome.CONFIRMED)
    if (
        shared is not None
        and shared.seen_via == "event"
        and shared.definition_id == target_id
        and written_ms
        and shared.modified_ms >= written_ms
    ):
        return Confirmation(Outcome.CONFIRMED)
    if read_back is None:
        return None
    if read_back.failure is not None:
        return Confirmation(
            Outcome.APPLIED_UNCONFIRMED, note=f"read-back failed: {read_back.failure}"
        )
    presence = read_back.presence
    if presence is not None and presence.presence_definition.id == target_id:
        return Confirmation(Outcome.APPLIED_UNCONFIRMED)
    seen = presence.presence_definition.system_presence if presence is not None else "nothing"
    return Confirmation(Outcome.DRIFTED, "drifted", f"Read back {seen} after the change")


# -- did an earlier delivery's write take effect? -----------------------------------------------
# Worker and platform clocks differ by little; past this, a write is taken as applied (the safe
# side: a change recorded applied that the agent already had, rather than a change sent twice).
CLOCK_SKEW_ALLOWANCE_MS = 2000


def took_effect(marked: Intent, presence: UserPresence | None) -> bool:
    """Whether the write ``marked`` before it was sent has taken effect, given the agent's
    presence read back now: the agent is in the target, and its ``modifiedDate`` moved past the
    one known before the write (when none was known: is no older than the mark, give or take
    the clocks' skew). An agent that was already in the target and has not changed since says
    the write never arrived. A write the platform accepted took effect, even when a newer
    change has replaced it since."""
    if marked.accepted:
        return True
    if presence is None or presence.presence_definition.id != marked.target_id:
        return False
    modified = presence.modified_date
    if modified is None:
        return True  # nothing tells them apart: never write twice
    modified_ms = int(modified.timestamp() * 1000)
    if marked.before_ms:
        return modified_ms > marked.before_ms
    return modified_ms >= marked.at_ms - CLOCK_SKEW_ALLOWANCE_MS


# -- what the platform said no with ---------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Refusal:
    code: str
    message: str
    correlation_id: str | None


def error_code(exc: GenesysError) -> str:
    """The platform's ErrorBody code, else the HTTP status, else what kind of failure it was."""
    if exc.code:
        return exc.code
    if exc.status:
        return str(exc.status)
    return "transport.error" if isinstance(exc, TransportError) else "refused"


def refusal(exc: GenesysError) -> Refusal:
    """The audit fields of a request the platform refused (400/401/403/404, bad credentials)."""
    hint = " (check the OAuth client's roles)" if exc.status == 403 else ""
    return Refusal(error_code(exc), f"{exc.message}{hint}", exc.correlation_id)
