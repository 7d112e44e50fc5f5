"""A wave: many agents' presence changes applied with bulk PUTs, free of Celery.

:func:`handle_wave` promises, for every element of the wave, exactly one of: a terminal audit
row; a hand-over to ``requeue`` as a single ``presence.update`` with the same request id (the
agent is being changed by another worker, or the change waits for queue capacity); or, for the
elements not finished yet, :class:`~worker.retry.RetryLater`. A wave is idempotent by request
id: a retried or re-dispatched wave skips the elements already audited.

The wave first subscribes all its agents with one notification call (up to a channel's 1,000
topics), then works in batches of ``BULK_BATCH_SIZE``: per-agent locks, latest-wins, the current
presence only where a rule needs it (shared cache, then one bulk GET for the misses), the same
verdict as a single update, one bulk PUT through the shared limiter (a 400 is split in halves
until the refused agents are isolated; 429, 5xx and timeouts retry the wave with backoff),
confirmation as a single update's, then the batch's audit and WFM outbox rows in one
transaction.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from pydantic import ValidationError

from models import Outcome
from models.storable import storable_id
from worker.flow import steps
from worker.flow.decisions import (
    SUPERSEDED,
    Confirmation,
    Defer,
    ReadBack,
    Reject,
    confirm,
    needs_current,
)
from worker.flow.ports import Ports, Waiter
from worker.flow.record import AuditDraft
from worker.flow.request import Attempt, Request, add_note, new_draft, parse, validate
from worker.genesys.client import Answer, CallLog, recording
from worker.genesys.errors import GenesysError
from worker.genesys.models import UserPresence
from worker.limiter import BudgetExhausted, waiting_as
from worker.retry import GiveUp
from worker.rules.capacity import ON_QUEUE
from worker.state_cache import AgentState, state_of

log = logging.getLogger(__name__)
BULK_READ_LIMIT = 50  # the platform's bulk GET limit
LOCK_RETRY_S = 1.0

# (request id, PresenceUpdate payload, countdown in seconds): send it as a single update.
Requeue = Callable[[str, dict[str, Any], float], None]
Done = list[tuple[AuditDraft, Outcome]]


def element_request_id(wave_id: str, index: int, element: Any) -> str:
    """The element's request id, or a stable stand-in for a malformed element."""
    if isinstance(element, dict):
        request_id = element.get("request_id")
        if isinstance(request_id, str) and request_id:
            return storable_id(request_id)
    return storable_id(f"{wave_id}:{index}")


def _identified(elements: list[Any], attempt: Attempt) -> list[tuple[Attempt, Any]]:
    """Each element's own attempt (its request id) and its update payload."""
    out = []
    for index, element in enumerate(elements):
        request_id = element_request_id(attempt.request_id, index, element)
        out.append((attempt.for_request(request_id), element))
    return out


def _payload(element: Any) -> Any:
    return element.get("update") if isinstance(element, dict) else element


def _unaudited(ports: Ports, elements: list[tuple[Attempt, Any]]) -> list[tuple[Attempt, Any]]:
    """The elements without a terminal audit row yet."""
    done = ports.audit.audited([a.request_id for a, _ in elements], [])
    return [(a, e) for a, e in elements if a.request_id not in done]


def _chunks(items: list[Request], size: int) -> Iterator[list[Request]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def handle_wave(
    ports: Ports, elements: list[Any], attempt: Attempt, requeue: Requeue
) -> Counter[str]:
    """Apply a wave; returns how many elements ended in each outcome (``requeued`` included).

    Raises RetryLater when the platform or the budget asks to try again later.
    """
    with waiting_as(attempt.request_id):  # the wave's budget ticket survives its re-schedules
        return _handle_wave(ports, elements, attempt, requeue)


def _handle_wave(
    ports: Ports, elements: list[Any], attempt: Attempt, requeue: Requeue
) -> Counter[str]:
    outcomes: Counter[str] = Counter()
    fresh = _unaudited(ports, _identified(elements, attempt))  # a retried or re-sent wave
    try:
        parsed = _parse(ports, fresh, outcomes)
    except GenesysError as exc:  # refused for good (credentials, permissions): all fail at once
        outcomes.update(_fail_open(ports, fresh, exc))
        return outcomes
    if not parsed:
        return outcomes
    ports.ordering.register_many([r.ordering_key for r in parsed])
    ports.confirmations.wait_subscribed()  # a cold start: priming may soon cover these agents
    with recording() as unbilled:  # the wave's own calls, charged to its first audit row
        covered = ports.confirmations.subscribe_many([r.user_id for r in parsed])
        _prefetch_memberships(ports, parsed)
    for batch in _chunks(parsed, ports.config.bulk_batch_size):
        outcomes.update(_apply_batch(ports, batch, covered, requeue, unbilled))
    return outcomes


def record_wave_dead_letter(
    ports: Ports, elements: list[Any], attempt: Attempt, give_up: GiveUp
) -> Counter[str]:
    """Retries are exhausted: every element not audited yet becomes ``dead_letter``."""
    return record_wave_ended(
        ports, elements, attempt, Outcome.DEAD_LETTER, give_up.code, give_up.message
    )


def record_wave_ended(
    ports: Ports,
    elements: list[Any],
    attempt: Attempt,
    outcome: Outcome,
    code: str,
    message: str,
) -> Counter[str]:
    """End every element not audited yet without applying it (see ``single.record_ended``)."""
    entries: Done = []
    for mine, element in _unaudited(ports, _identified(elements, attempt)):
        draft, _ = validate(mine, _payload(element))
        draft.error_code, draft.error_message = code, message
        entries.append((draft, outcome))
    return Counter(o.value for o in ports.recorder.finish_many(entries))


def _fail_open(
    ports: Ports, elements: list[tuple[Attempt, Any]], exc: GenesysError
) -> Counter[str]:
    """Every element without an audit row yet ends ``failed`` with the platform's refusal."""
    failed = [
        steps.refused(validate(mine, _payload(element))[0], exc)
        for mine, element in _unaudited(ports, elements)
    ]
    return Counter(o.value for o in ports.recorder.finish_many(failed))


def _parse(
    ports: Ports, elements: list[tuple[Attempt, Any]], outcomes: Counter[str]
) -> list[Request]:
    """Validate and resolve every element; the invalid ones are recorded here."""
    parsed: list[Request] = []
    invalid: Done = []
    for mine, element in elements:
        if not isinstance(element, dict) or set(element) != {"request_id", "update"}:
            draft = new_draft(mine, _payload(element))
            draft.error_code = "invalid.payload"
            draft.error_message = 'Invalid wave element — expected {"request_id": …, "update": {…}}'
            invalid.append((draft, Outcome.INVALID))
            continue
        try:
            result = parse(
                ports.catalog,
                mine,
                element["update"],
                max_future_skew_s=ports.config.max_future_skew_s,
            )
        except GenesysError as exc:
            ports.recorder.finish_many(invalid)  # keep what is decided; the retry skips it
            if exc.retryable:
                raise steps.failure(exc) from None
            raise
        except BudgetExhausted as exc:
            ports.recorder.finish_many(invalid)
            raise steps.budget_wait(exc) from None
        if isinstance(result, AuditDraft):
            invalid.append((result, Outcome.INVALID))
        else:
            parsed.append(result)
    outcomes.update(o.value for o in ports.recorder.finish_many(invalid))
    return parsed


def _prefetch_memberships(ports: Ports, requests: list[Request]) -> None:
    """Agents that may leave a queue need their memberships for the capacity guard: list every
    queue's members once instead of reading each agent's queues, when that is cheaper. The
    listing carries presences too, read after the wave subscribed: they fill the state cache."""
    leaving = [
        r.user_id
        for r in requests
        if r.target.system != ON_QUEUE and r.update.capacity_policy != "force"
    ]
    try:
        presences = ports.capacity.prefetch_memberships(leaving)
    except (GenesysError, BudgetExhausted) as exc:
        log.warning("listing queue members failed, reading memberships per agent: %s", exc)
        return
    for user_id, presence in presences.items():
        try:
            ports.cache.put(user_id, state_of(UserPresence.model_validate(presence), "read"))
        except ValidationError:
            continue


def _not_yet_audited(ports: Ports, requests: list[Request]) -> list[Request]:
    if not requests:
        return requests
    done: dict[str, set[str]] = {}
    for org in {r.org for r in requests}:  # one org per wave, but keys are per org regardless
        mine = [r for r in requests if r.org == org]
        done[org] = ports.audit.audited(
            [r.request_id for r in mine],
            [r.update.idempotency_key for r in mine if r.update.idempotency_key],
            org,
        )
    return [
        r
        for r in requests
        if r.request_id not in done[r.org] and (r.update.idempotency_key or "") not in done[r.org]
    ]


def _apply_batch(
    ports: Ports, batch: list[Request], covered: set[str], requeue: Requeue, unbilled: CallLog
) -> Counter[str]:
    outcomes: Counter[str] = Counter()
    owners = ports.ordering.try_lock_many(
        [r.user_id for r in batch], ttl_s=ports.config.agent_lock_ttl_s
    )
    locked: list[Request] = []
    held: set[str] = set()
    for request in batch:
        if request.user_id in owners and request.user_id not in held:
            held.add(request.user_id)
            locked.append(request)
        else:  # another worker (or an earlier element of this wave) is changing the agent
            requeue(request.request_id, request.raw, LOCK_RETRY_S)
            outcomes["requeued"] += 1
    try:
        outcomes.update(_apply_locked(ports, locked, covered, requeue, unbilled))
    finally:
        ports.ordering.unlock_many(owners)
    return outcomes


def _apply_locked(
    ports: Ports, batch: list[Request], covered: set[str], requeue: Requeue, unbilled: CallLog
) -> Counter[str]:
    done: Done = []
    requeued = 0
    live: list[Request] = []
    batch = _not_yet_audited(ports, batch)  # again, under the locks: a single may just have ended
    with recording() as calls:
        try:
            batch = _settle_earlier_writes(ports, batch, done)
            superseded = ports.ordering.superseded_among([r.ordering_key for r in batch])
            for request in batch:
                if request.order_id in superseded:
                    done.append(steps.rejected(request.draft, SUPERSEDED))
                else:
                    live.append(request)
            _load_current(ports, live)
            ready: list[Request] = []
            for request in live:
                decision = steps.verdict(ports, request)
                if isinstance(decision, Reject):
                    done.append(steps.rejected(request.draft, decision))
                elif isinstance(decision, Defer):  # the single flow waits for room
                    requeue(
                        request.request_id, request.raw, ports.config.capacity_observation_ttl_s
                    )
                    requeued += 1
                else:
                    request.reserved = decision.reserved
                    add_note(request.draft, decision.note)
                    ready.append(request)
            done.extend(_put_and_confirm(ports, ready, covered, calls))
        except GenesysError as exc:
            steps.release(ports, live)
            if not exc.retryable:  # e.g. credentials or permissions: every open element fails
                decided = {id(d) for d, _ in done}
                done.extend(steps.refused(r.draft, exc) for r in live if id(r.draft) not in decided)
                _charge(done, calls, unbilled)
                return Counter(o.value for o in ports.recorder.finish_many(done))
            _charge(done, calls, unbilled)
            ports.recorder.finish_many(done)  # decided rows stay decided; the retry skips them
            raise steps.failure(exc) from None
        except BudgetExhausted as exc:
            steps.release(ports, live)
            _charge(done, calls, unbilled)
            ports.recorder.finish_many(done)
            raise steps.budget_wait(exc) from None
    _charge(done, calls, unbilled)
    outcomes: Counter[str] = Counter(o.value for o in ports.recorder.finish_many(done))
    if requeued:
        outcomes["requeued"] += requeued
    return outcomes


def _settle_earlier_writes(ports: Ports, batch: list[Request], done: Done) -> list[Request]:
    """Requests an earlier delivery may have sent are read back (in bulk), never written twice:
    those whose change took effect join ``done`` as applied; the others are returned, to go on."""
    marked = ports.intents.marked([r.request_id for r in batch])
    earlier = [
        r.user_id for r in batch if r.request_id in marked and not marked[r.request_id].accepted
    ]
    read: dict[str, UserPresence] = {}
    for start in range(0, len(earlier), BULK_READ_LIMIT):
        read.update(ports.api.get_presences_bulk(earlier[start : start + BULK_READ_LIMIT]))
    rest = []
    for request in batch:
        mark = marked.get(request.request_id)
        if mark is not None and steps.applied_earlier(
            ports, request, mark, read.get(request.user_id)
        ):
            done.append((request.draft, Outcome.APPLIED_UNCONFIRMED))
        else:
            rest.append(request)
    return rest


def _charge(done: Done, calls: CallLog, unbilled: CallLog) -> None:
    """Put the batch's Genesys calls, and the wave's not yet charged, on the batch's first row,
    so that sums over audit rows stay true."""
    if not done:
        return
    total = CallLog(
        calls=calls.calls + unbilled.calls,
        limiter_wait_s=calls.limiter_wait_s + unbilled.limiter_wait_s,
    )
    unbilled.calls, unbilled.limiter_wait_s = 0, 0.0
    steps.charge(done[0][0], total)
    for draft, _ in done[1:]:
        steps.charge(draft, CallLog())


def _load_current(ports: Ports, requests: list[Request]) -> None:
    """The agents' presence from the shared cache, reading the misses that matter in bulk once
    a cold start's priming, which may fill them, is done."""
    cached = ports.cache.get_many([r.user_id for r in requests])
    missing = _misses(ports, requests, cached)
    if missing and ports.confirmations.wait_primed():
        cached = ports.cache.get_many([r.user_id for r in requests])
        missing = _misses(ports, requests, cached)
    for start in range(0, len(missing), BULK_READ_LIMIT):
        chunk = missing[start : start + BULK_READ_LIMIT]
        for user_id, presence in ports.api.get_presences_bulk(chunk).items():
            read = state_of(presence, "read")
            ports.cache.put(user_id, read)
            cached[user_id] = read
    for request in requests:
        state = cached.get(request.user_id)
        if state is not None:
            steps.describe_current(ports, request, state)


def _misses(ports: Ports, requests: list[Request], cached: Mapping[str, AgentState]) -> list[str]:
    """The agents not in ``cached`` whose current presence a rule needs."""
    return [
        r.user_id
        for r in requests
        if r.user_id not in cached and needs_current(r.target, r.expected, ports.matrix)
    ]


Applied = tuple[Request, UserPresence | None, Answer]


def _put_isolating(
    ports: Ports, requests: list[Request]
) -> tuple[list[Applied], list[tuple[Request, GenesysError]]]:
    """Bulk PUT ``requests``; on a 400 (all-or-nothing) split in halves until every refused
    agent stands alone. Retryable errors propagate."""
    if not requests:
        return [], []
    try:
        presences, answer = ports.api.put_presences_bulk(
            [(r.user_id, r.target.id, r.update.message) for r in requests]
        )
    except GenesysError as exc:
        if exc.retryable or exc.status != 400:
            raise
        if len(requests) == 1:
            return [], [(requests[0], exc)]
        middle = len(requests) // 2
        applied_a, refused_a = _put_isolating(ports, requests[:middle])
        applied_b, refused_b = _put_isolating(ports, requests[middle:])
        return applied_a + applied_b, refused_a + refused_b
    padded: list[UserPresence | None] = [*presences, *[None] * (len(requests) - len(presences))]
    return [(r, p, answer) for r, p in zip(requests, padded, strict=False)], []


def _put_and_confirm(ports: Ports, ready: list[Request], covered: set[str], calls: CallLog) -> Done:
    if not ready:
        return []
    waiters: dict[str, Waiter] = {
        r.user_id: ports.confirmations.expect(r.user_id) for r in ready if r.user_id in covered
    }
    done: Done = []
    unconfirmed: list[tuple[Request, int]] = []
    try:
        intents = {r.request_id: steps.intent(ports, r) for r in ready}
        with ports.intents.marking(intents):  # with the first PUT's grant, as a single's PATCH
            applied, refused = _put_isolating(ports, ready)
        steps.accepted(
            ports, {r.request_id: (intents[r.request_id], a.correlation_id) for r, _, a in applied}
        )
        for request, exc in refused:
            steps.release(ports, [request])
            done.append(steps.refused(request.draft, exc))
        api_ms = round(calls.api_s * 1000, 2)
        started = ports.clock.monotonic()
        deadline = started + ports.config.ack_timeout_s
        for request, presence, answer in applied:
            request.draft.correlation_id, request.draft.api_ms = answer.correlation_id, api_ms
            written_ms = state_of(presence, "patch").modified_ms if presence is not None else 0
            waiter = waiters.get(request.user_id)
            event = (
                waiter.wait_for(
                    request.target.id,
                    answer.correlation_id,
                    written_ms,
                    max(0.0, deadline - ports.clock.monotonic()),
                )
                if waiter is not None
                else None
            )
            if event is not None:
                done.append(_confirmed(ports, request, Confirmation(Outcome.CONFIRMED), started))
            else:
                unconfirmed.append((request, written_ms))
    finally:
        for waiter in waiters.values():
            ports.confirmations.done(waiter)
    done.extend(_confirm_elsewhere_or_read_back(ports, unconfirmed, started))
    return done


def _confirmed(
    ports: Ports, request: Request, confirmation: Confirmation, started: float
) -> tuple[AuditDraft, Outcome]:
    request.draft.confirm_ms = round((ports.clock.monotonic() - started) * 1000, 2)
    return steps.confirmed(request.draft, confirmation)


def _confirm_elsewhere_or_read_back(
    ports: Ports, unconfirmed: list[tuple[Request, int]], started: float
) -> Done:
    """Another process's socket may have seen the event (shared cache); else read back once."""
    if not unconfirmed:
        return []
    done: Done = []
    shared = ports.cache.get_many([r.user_id for r, _ in unconfirmed])
    to_read: list[tuple[Request, int]] = []
    for request, written_ms in unconfirmed:
        confirmation = confirm(
            request.target.id,
            written_ms,
            socket_event=None,
            shared=shared.get(request.user_id),
            read_back=None,
        )
        if confirmation is not None:
            done.append(_confirmed(ports, request, confirmation, started))
        else:
            to_read.append((request, written_ms))
    if not to_read:
        return done
    read_backs = _read_back(ports, [r.user_id for r, _ in to_read])
    for request, written_ms in to_read:
        confirmation = confirm(
            request.target.id,
            written_ms,
            socket_event=None,
            shared=None,
            read_back=read_backs[request.user_id],
        )
        assert confirmation is not None  # a read-back always decides
        done.append(_confirmed(ports, request, confirmation, started))
    return done


def _read_back(ports: Ports, user_ids: list[str]) -> dict[str, ReadBack]:
    """One bulk read per 50 agents; a failed read is recorded as such, never raised."""
    out: dict[str, ReadBack] = {}
    for start in range(0, len(user_ids), BULK_READ_LIMIT):
        chunk = user_ids[start : start + BULK_READ_LIMIT]
        try:
            read = ports.api.get_presences_bulk(chunk)
        except (GenesysError, BudgetExhausted) as exc:
            out.update((u, ReadBack(failure=str(exc))) for u in chunk)
            continue
        for user_id in chunk:
            presence = read.get(user_id)
            if presence is not None:
                ports.cache.put(user_id, state_of(presence, "read"))
            out[user_id] = ReadBack(presence)
    return out
