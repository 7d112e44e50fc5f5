"""The steps both drivers take, each over the ports: what the agent is in now, the verdict with
the capacity guard asked when needed, and the ways a request ends."""

from __future__ import annotations

import logging
from dataclasses import replace

from models import Outcome
from worker.flow.decisions import (
    AskCapacity,
    Confirmation,
    Decision,
    Defer,
    Proceed,
    Reject,
    decide,
    error_code,
    refusal,
    took_effect,
)
from worker.flow.ports import Ports
from worker.flow.record import AuditDraft
from worker.flow.request import Request, add_note
from worker.genesys.client import CallLog
from worker.genesys.errors import GenesysError
from worker.genesys.models import UserPresence
from worker.intents import Intent
from worker.limiter import BudgetExhausted
from worker.retry import Delay, RetryLater
from worker.rules.capacity import CapacityVerdict
from worker.state_cache import AgentState, state_of

log = logging.getLogger(__name__)


def describe_current(ports: Ports, request: Request, state: AgentState) -> None:
    """Take ``state`` as the agent's presence before the change."""
    definition = ports.catalog.by_id(state.definition_id)
    label = definition.label if definition is not None else state.system_presence
    request.set_current(definition, label, state.definition_id, state.modified_ms)


def verdict(ports: Ports, request: Request) -> Proceed | Reject | Defer:
    """The decision core's verdict, asking the capacity guard (and reserving room) only when the
    change takes the agent off queue. Never :class:`AskCapacity`. Raises what the guard raises
    (``GenesysError``, ``BudgetExhausted``)."""

    def ask(room: CapacityVerdict | None = None) -> Decision:
        return decide(
            request.update,
            request.target,
            request.expected,
            current=request.current,
            current_label=request.current_label,
            matrix=ports.matrix,
            room=room,
            now=ports.clock.now(),
            defer_max_s=ports.config.capacity_defer_max_s,
        )

    decision = ask()
    if isinstance(decision, AskCapacity):
        decision = ask(ports.capacity.check_and_reserve(request.request_id, request.user_id))
    assert not isinstance(decision, AskCapacity)  # decide() never asks twice
    return decision


EARLIER_WRITE = "an earlier delivery sent this change; read back"


def intent(ports: Ports, request: Request) -> Intent:
    """What to mark before sending ``request``'s write."""
    at_ms = int(ports.clock.now().timestamp() * 1000)
    return Intent(request.target.id, request.current_ms, at_ms)


def applied_earlier(
    ports: Ports, request: Request, marked: Intent, presence: UserPresence | None
) -> bool:
    """Whether a marked request's earlier write took effect, from the agent's read-back
    (``presence``): then its row is settled ``applied_unconfirmed``, never written again."""
    if presence is not None:
        ports.cache.put(request.user_id, state_of(presence, "read"))
    if not took_effect(marked, presence):
        return False
    add_note(request.draft, EARLIER_WRITE)
    request.draft.correlation_id = request.draft.correlation_id or marked.correlation_id
    return True


def accepted(
    ports: Ports,
    sent: dict[str, tuple[Intent, str | None]],
    *,
    state: tuple[str, AgentState] | None = None,
) -> None:
    """Mark these requests' writes (request id → (its intent, the answer's correlation id)) as
    accepted by the platform, so that a redelivery records them as applied without reading the
    agent back, even after a newer change replaced them; with ``state`` (a single write's agent
    and what its answer says), cache that too, in the same round trip. Best effort, never
    raises: the write is already applied, without the mark a redelivery still reads the agent
    back, and without the cache entry the socket event or a read-back fills it."""
    try:
        ports.intents.mark(
            {
                request_id: replace(intent, accepted=True, correlation_id=correlation_id)
                for request_id, (intent, correlation_id) in sent.items()
            },
            state=state,
        )
    except Exception as exc:  # Redis away: the terminal row, written next, is what counts
        log.warning("cannot mark %d accepted write(s): %s", len(sent), exc)


def release(ports: Ports, requests: list[Request]) -> None:
    """Give back the queue places of changes that were not applied."""
    for request in requests:
        if request.reserved:
            ports.capacity.release(request.request_id, request.reserved)
            request.reserved = ()


def charge(draft: AuditDraft, calls: CallLog) -> None:
    """Put the Genesys calls made for the request on its row."""
    draft.genesys_requests = calls.calls
    draft.limiter_wait_ms = round(calls.limiter_wait_s * 1000, 2)


def rejected(draft: AuditDraft, decision: Reject) -> tuple[AuditDraft, Outcome]:
    draft.error_code, draft.error_message = decision.code, decision.message
    return draft, decision.outcome


def refused(draft: AuditDraft, exc: GenesysError) -> tuple[AuditDraft, Outcome]:
    """The platform refused the request for good: ``failed`` with its code and message."""
    why = refusal(exc)
    draft.error_code, draft.error_message = why.code, why.message
    draft.correlation_id = why.correlation_id or draft.correlation_id
    return draft, Outcome.FAILED


def confirmed(draft: AuditDraft, confirmation: Confirmation) -> tuple[AuditDraft, Outcome]:
    if confirmation.code is not None:
        draft.error_code, draft.error_message = confirmation.code, confirmation.message
    add_note(draft, confirmation.note)
    return draft, confirmation.outcome


def failure(exc: GenesysError) -> RetryLater:
    """A retryable platform failure (429, 5xx, timeout): try again after the backoff."""
    return RetryLater(
        Delay.FAILURE,
        exc.message,
        countdown_s=exc.retry_after_s or 0.0,
        code=error_code(exc),
    )


def wait(countdown_s: float, message: str) -> RetryLater:
    """Budget or another worker's lock: try again after ``countdown_s`` (not a failure)."""
    return RetryLater(Delay.WAIT, message, countdown_s=countdown_s)


BUDGET_EARLY_S = 1.0
"""A budget wait's retry arrives this much before its slot frees (its jitter and the schedule's
poll would otherwise make it late), and waits the rest inline on the limiter (which sleeps up
to ``LIMITER_MAX_INLINE_WAIT_S``), so a saturated budget's next minute starts on time. Never
earlier than the inline wait the limiter was allowed: it would be refused again at once."""


def budget_wait(exc: BudgetExhausted) -> RetryLater:
    """No budget slot within the inline wait: try again just before the caller's ticket."""
    early_s = min(BUDGET_EARLY_S, exc.inline_wait_s)
    return wait(max(0.0, exc.retry_in_s - early_s), str(exc))
