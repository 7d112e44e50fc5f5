"""A wave: many agents' presence changes applied with bulk PUTs, free of Celery.

:func:`handle_wave` promises, for every element of the wave, exactly one of: a terminal audit
row; a hand-over to ``requeue`` as a single ``presence.update`` with the same request id (the
agent is being changed by another worker, or the change waits for queue capacity); or, for the
elements not finished yet, :class:`~worker.updates.RetryLater`. A wave is idempotent by request
id: a retried or re-dispatched wave skips the elements already audited.

The wave first subscribes all its agents with one notification call (up to a channel's 1,000
topics), then works in batches of ``BULK_BATCH_SIZE``: per-agent locks, latest-wins, the current
presence only where a rule needs it (shared cache, then one bulk GET for the misses), expected
state and transition matrix, capacity guard, one bulk PUT through the shared limiter (a 400 is
split in halves until the refused agents are isolated; 429, 5xx and timeouts retry the wave with
backoff), confirmation on the socket or one bulk read-back, then the batch's audit and WFM
outbox rows in one transaction.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

from pydantic import ValidationError

from models import Outcome
from models.db import session_scope
from producer.schema import PresenceUpdate
from worker import audit
from worker.catalog import Definition, UnknownPresence
from worker.genesys.client import Answer, CallLog, recording
from worker.genesys.errors import GenesysError
from worker.genesys.models import UserPresence
from worker.limiter import BudgetExhausted
from worker.notifications.listener import Waiter
from worker.rules.capacity import ON_QUEUE, takes_out_of_routing
from worker.runtime import Runtime
from worker.updates import (
    Attempt,
    Draft,
    RetryLater,
    as_state,
    base_fields,
    finish_batch,
    is_in,
    order_id,
    record_dead_letter,
    retry_or_fail,
    validated,
    wait_later,
)

log = logging.getLogger(__name__)


# (request id, PresenceUpdate payload, countdown in seconds): send it as a single update.
Requeue = Callable[[str, dict[str, Any], float], None]


@dataclass(slots=True)
class Element:
    attempt: Attempt
    raw: dict[str, Any]
    update: PresenceUpdate
    target: Definition
    expected: Definition | None
    stamp_us: int
    draft: Draft
    current: Definition | None = None
    reserved: tuple[str, ...] = ()

    @property
    def user_id(self) -> str:
        return self.update.user_id


def element_request_id(wave_id: str, index: int, element: Any) -> str:
    """The element's request id, or a stable stand-in for a malformed element."""
    if isinstance(element, dict):
        request_id = element.get("request_id")
        if isinstance(request_id, str) and 0 < len(request_id) <= 64:
            return request_id
    return f"{wave_id[:50]}:{index}"


def _ordering_key(element: Element) -> tuple[str, int, str]:
    return element.user_id, element.stamp_us, order_id(element.update, element.attempt)


def _identified(elements: list[Any], attempt: Attempt) -> list[tuple[str, Any]]:
    return [(element_request_id(attempt.request_id, i, e), e) for i, e in enumerate(elements)]


def _unaudited(rt: Runtime, elements: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """The (request id, element) pairs without a terminal audit row yet."""
    with session_scope(rt.settings.database_url) as session:
        done = audit.existing_request_ids(session, [rid for rid, _ in elements])
    return [(rid, e) for rid, e in elements if rid not in done]


def _chunks(items: list[Element], size: int) -> Iterator[list[Element]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def handle_wave(
    rt: Runtime, elements: list[Any], attempt: Attempt, requeue: Requeue
) -> Counter[str]:
    """Apply a wave; returns how many elements ended in each outcome (``requeued`` included).

    Raises RetryLater when the platform or the budget asks to try again later.
    """
    outcomes: Counter[str] = Counter()
    fresh = _unaudited(rt, _identified(elements, attempt))  # a retried or re-sent wave
    try:
        parsed = _parse(rt, fresh, attempt, outcomes)
    except GenesysError as exc:  # refused for good (credentials, permissions): all fail at once
        outcomes.update(_fail_open(rt, fresh, attempt, exc))
        return outcomes
    if not parsed:
        return outcomes
    rt.ordering.register_many([_ordering_key(e) for e in parsed])
    with recording() as unbilled:  # the wave's own calls, charged to its first audit row
        covered = rt.listener.subscribe_many([e.user_id for e in parsed])
        _prefetch_memberships(rt, parsed)
    for batch in _chunks(parsed, rt.settings.bulk_batch_size):
        outcomes.update(_apply_batch(rt, batch, covered, requeue, unbilled))
    return outcomes


def _prefetch_memberships(rt: Runtime, elements: list[Element]) -> None:
    """Agents that may leave a queue need their memberships for the capacity guard: list every
    queue's members once instead of reading each agent's queues, when that is cheaper. The
    listing carries presences too, read after the wave subscribed: they fill the state cache."""
    leaving = [
        e.user_id
        for e in elements
        if e.target.system != ON_QUEUE and e.update.capacity_policy != "force"
    ]
    try:
        presences = rt.capacity.prefetch_memberships(leaving)
    except (GenesysError, BudgetExhausted) as exc:
        log.warning("listing queue members failed, reading memberships per agent: %s", exc)
        return
    for user_id, presence in presences.items():
        try:
            rt.cache.put(user_id, as_state(UserPresence.model_validate(presence), "read"))
        except ValidationError:
            continue


def record_wave_dead_letter(
    rt: Runtime, elements: list[Any], attempt: Attempt, error: RetryLater
) -> Counter[str]:
    """Retries are exhausted: every element not audited yet becomes ``dead_letter``."""
    outcomes: Counter[str] = Counter()
    for request_id, element in _unaudited(rt, _identified(elements, attempt)):
        raw = element.get("update") if isinstance(element, dict) else element
        outcome = record_dead_letter(rt, raw, replace(attempt, request_id=request_id), error)
        outcomes[outcome.value] += 1
    return outcomes


def _fail_open(
    rt: Runtime, elements: list[tuple[str, Any]], attempt: Attempt, exc: GenesysError
) -> Counter[str]:
    """Every element without an audit row yet ends ``failed`` with the platform's refusal."""
    failed: list[tuple[Draft, Outcome]] = []
    for request_id, element in _unaudited(rt, elements):
        mine = replace(attempt, request_id=request_id)
        raw = element.get("update") if isinstance(element, dict) else element
        draft = Draft(base_fields(mine, raw))
        validated(draft, raw, mine)
        draft.set(error_code=exc.code or str(exc.status), error_message=exc.message)
        failed.append((draft, Outcome.FAILED))
    return Counter(o.value for o in finish_batch(rt, failed))


def _parse(
    rt: Runtime, elements: list[tuple[str, Any]], attempt: Attempt, outcomes: Counter[str]
) -> list[Element]:
    """Validate and resolve every (request id, element); the invalid ones are audited here."""
    parsed: list[Element] = []
    invalid: list[tuple[Draft, Outcome]] = []
    for request_id, element in elements:
        mine = replace(attempt, request_id=request_id)
        raw = element.get("update") if isinstance(element, dict) else element
        draft = Draft(base_fields(mine, raw))
        if not isinstance(element, dict) or set(element) != {"request_id", "update"}:
            draft.set(
                error_code="invalid.payload",
                error_message='Invalid wave element — expected {"request_id": …, "update": {…}}',
            )
            invalid.append((draft, Outcome.INVALID))
            continue
        update = validated(draft, raw, mine)
        if update is None:
            invalid.append((draft, Outcome.INVALID))
            continue
        try:
            target = rt.catalog.resolve(update.state, update.reason)
            expected = rt.catalog.resolve(update.expected_state) if update.expected_state else None
        except UnknownPresence as exc:
            draft.set(error_code="unknown.presence", error_message=str(exc))
            invalid.append((draft, Outcome.INVALID))
            continue
        except GenesysError as exc:
            finish_batch(rt, invalid)  # keep what is decided; the retry skips it
            if exc.retryable:
                raise retry_or_fail(rt, attempt, exc) from None
            raise
        except BudgetExhausted as exc:
            finish_batch(rt, invalid)
            raise wait_later(rt, 0.0, exc.retry_in_s, str(exc)) from None
        draft.set(to_state=target.label, to_definition_id=target.id)
        stamp_us = int(update.requested_at.timestamp() * 1_000_000)
        assert isinstance(raw, dict)  # validated above
        parsed.append(Element(mine, raw, update, target, expected, stamp_us, draft))
    outcomes.update(o.value for o in finish_batch(rt, invalid))
    return parsed


def _not_yet_audited(rt: Runtime, parsed: list[Element]) -> list[Element]:
    if not parsed:
        return parsed
    with session_scope(rt.settings.database_url) as session:
        done = audit.existing_request_ids(
            session,
            [e.attempt.request_id for e in parsed],
            [e.update.idempotency_key for e in parsed if e.update.idempotency_key],
        )
    return [
        e
        for e in parsed
        if e.attempt.request_id not in done and (e.update.idempotency_key or "") not in done
    ]


def _apply_batch(
    rt: Runtime, batch: list[Element], covered: set[str], requeue: Requeue, unbilled: CallLog
) -> Counter[str]:
    outcomes: Counter[str] = Counter()
    owners = rt.ordering.try_lock_many(
        [e.user_id for e in batch], ttl_s=rt.settings.agent_lock_ttl_s
    )
    locked: list[Element] = []
    held: set[str] = set()
    for element in batch:
        if element.user_id in owners and element.user_id not in held:
            held.add(element.user_id)
            locked.append(element)
        else:  # another worker (or an earlier element of this wave) is changing the agent
            requeue(element.attempt.request_id, element.raw, 1.0)
            outcomes["requeued"] += 1
    try:
        outcomes.update(_apply_locked(rt, locked, covered, requeue, unbilled))
    finally:
        rt.ordering.unlock_many(owners)
    return outcomes


def _apply_locked(
    rt: Runtime, batch: list[Element], covered: set[str], requeue: Requeue, unbilled: CallLog
) -> Counter[str]:
    done: list[tuple[Draft, Outcome]] = []
    requeued = 0
    live: list[Element] = []
    batch = _not_yet_audited(rt, batch)  # again, under the locks: a single may just have ended
    superseded = rt.ordering.superseded_among([_ordering_key(e) for e in batch])
    for element in batch:
        if order_id(element.update, element.attempt) in superseded:
            element.draft.set(error_message="A newer request for this agent was accepted")
            done.append((element.draft, Outcome.SUPERSEDED))
        else:
            live.append(element)
    with recording() as call_log:
        try:
            _load_current(rt, live)
            ready: list[Element] = []
            for element in live:
                verdict = _rules(rt, element)
                if verdict is None:
                    ready.append(element)
                elif not isinstance(verdict, Outcome):  # capacity defer
                    requeue(
                        element.attempt.request_id,
                        element.raw,
                        rt.settings.capacity_observation_ttl_s,
                    )
                    requeued += 1
                else:
                    done.append((element.draft, verdict))
            done.extend(_put_and_confirm(rt, ready, covered, call_log))
        except GenesysError as exc:
            _release(rt, live)
            if not exc.retryable:  # e.g. credentials or permissions: every open element fails
                decided = {id(d) for d, _ in done}
                for element in live:
                    if id(element.draft) not in decided:
                        element.draft.set(
                            error_code=exc.code or str(exc.status), error_message=exc.message
                        )
                        done.append((element.draft, Outcome.FAILED))
                _charge(done, call_log, unbilled)
                return Counter(o.value for o in finish_batch(rt, done))
            _charge(done, call_log, unbilled)
            finish_batch(rt, done)  # decided rows stay decided; the retry skips them
            raise retry_or_fail(rt, batch[0].attempt, exc) from None
        except BudgetExhausted as exc:
            _release(rt, live)
            _charge(done, call_log, unbilled)
            finish_batch(rt, done)
            raise wait_later(rt, 0.0, exc.retry_in_s, str(exc)) from None
    _charge(done, call_log, unbilled)
    outcomes: Counter[str] = Counter(o.value for o in finish_batch(rt, done))
    if requeued:
        outcomes["requeued"] += requeued
    return outcomes


def _charge(done: list[tuple[Draft, Outcome]], call_log: CallLog, unbilled: CallLog) -> None:
    """Put the batch's Genesys calls, and the wave's not yet charged, on the batch's first row,
    so that sums over audit rows stay true."""
    if not done:
        return
    calls = call_log.calls + unbilled.calls
    wait_s = call_log.limiter_wait_s + unbilled.limiter_wait_s
    unbilled.calls, unbilled.limiter_wait_s = 0, 0.0
    for index, (draft, _) in enumerate(done):
        draft.set(
            genesys_requests=calls if index == 0 else 0,
            limiter_wait_ms=round(wait_s * 1000, 2) if index == 0 else 0.0,
        )


def _release(rt: Runtime, elements: list[Element]) -> None:
    for element in elements:
        if element.reserved:
            rt.capacity.release(element.attempt.request_id, element.reserved)
            element.reserved = ()


def _needs_current(rt: Runtime, element: Element) -> bool:
    """Whether a rule depends on the agent's current presence (else the wave need not read it)."""
    return (
        element.expected is not None
        or element.target.system != ON_QUEUE  # the capacity guard: is the agent on queue now?
        or not rt.matrix.always_allows(element.target)
    )


def _load_current(rt: Runtime, elements: list[Element]) -> None:
    """Fill ``current`` from the shared cache, reading the misses that matter in one bulk GET."""
    cached = rt.cache.get_many([e.user_id for e in elements])
    missing = [e.user_id for e in elements if e.user_id not in cached and _needs_current(rt, e)]
    for start in range(0, len(missing), 50):  # the platform's bulk read limit
        for user_id, presence in rt.client.get_presences_bulk(missing[start : start + 50]).items():
            read = as_state(presence, "read")
            rt.cache.put(user_id, read)
            cached[user_id] = read
    for element in elements:
        state = cached.get(element.user_id)
        if state is None:
            continue
        element.current = rt.catalog.by_id(state.definition_id)
        label = element.current.label if element.current is not None else state.system_presence
        element.draft.set(
            from_state=label,
            from_definition_id=element.current.id if element.current else state.definition_id,
        )


def _rules(rt: Runtime, element: Element) -> Outcome | str | None:
    """None when the change may go ahead; a terminal outcome; or "requeue" (capacity defer)."""
    current, draft = element.current, element.draft
    if element.expected is not None and not is_in(current, element.expected):
        label = current.label if current is not None else "in an unknown presence"
        draft.set(
            error_code="unexpected.state",
            error_message=f"Expected {element.expected.label} but the agent is {label}",
        )
        return Outcome.REJECTED_TRANSITION
    if current is not None:
        verdict = rt.matrix.check(current, element.target)
        if not verdict.allowed:
            draft.set(error_code="transition.denied", error_message=verdict.reason)
            return Outcome.REJECTED_TRANSITION
    if not takes_out_of_routing(current, element.target):
        return None
    if element.update.capacity_policy == "force":
        draft.set(note=f"capacity guard bypassed: {element.update.force_reason}")
        return None
    room = rt.capacity.check_and_reserve(element.attempt.request_id, element.user_id)
    if room.allowed:
        element.reserved = room.queues
        return None
    if element.update.capacity_policy == "defer":
        return "requeue"  # the single flow waits for room until the change's deadline
    draft.set(error_code="capacity.insufficient", error_message=room.reason)
    return Outcome.REJECTED_CAPACITY


Applied = tuple[Element, UserPresence | None, Answer]


def _put_isolating(
    rt: Runtime, elements: list[Element]
) -> tuple[list[Applied], list[tuple[Element, GenesysError]]]:
    """Bulk PUT ``elements``; on a 400 (all-or-nothing) split in halves until every refused
    agent stands alone. Retryable errors propagate."""
    if not elements:
        return [], []
    try:
        presences, answer = rt.client.put_presences_bulk(
            [(e.user_id, e.target.id, e.update.message) for e in elements]
        )
    except GenesysError as exc:
        if exc.retryable or exc.status != 400:
            raise
        if len(elements) == 1:
            return [], [(elements[0], exc)]
        middle = len(elements) // 2
        applied_a, refused_a = _put_isolating(rt, elements[:middle])
        applied_b, refused_b = _put_isolating(rt, elements[middle:])
        return applied_a + applied_b, refused_a + refused_b
    padded: list[UserPresence | None] = [*presences, *[None] * (len(elements) - len(presences))]
    return [(e, p, answer) for e, p in zip(elements, padded, strict=False)], []


def _put_and_confirm(
    rt: Runtime, ready: list[Element], covered: set[str], call_log: CallLog
) -> list[tuple[Draft, Outcome]]:
    if not ready:
        return []
    waiters: dict[str, Waiter] = {
        e.user_id: rt.listener.expect(e.user_id) for e in ready if e.user_id in covered
    }
    done: list[tuple[Draft, Outcome]] = []
    try:
        applied, refused = _put_isolating(rt, ready)
        for element, exc in refused:
            _release(rt, [element])
            element.draft.set(
                error_code=exc.code or str(exc.status),
                error_message=exc.message,
                correlation_id=exc.correlation_id,
            )
            done.append((element.draft, Outcome.FAILED))
        api_ms = round(call_log.api_s * 1000, 2)
        confirm_started = time.perf_counter()
        deadline = time.monotonic() + rt.settings.ack_timeout_s
        unconfirmed: list[tuple[Element, int]] = []
        for element, presence, answer in applied:
            element.draft.set(correlation_id=answer.correlation_id, api_ms=api_ms)
            modified_ms = as_state(presence, "patch").modified_ms if presence is not None else 0
            waiter = waiters.get(element.user_id)
            event = (
                waiter.wait_for(
                    element.target.id,
                    answer.correlation_id,
                    modified_ms,
                    max(0.0, deadline - time.monotonic()),
                )
                if waiter is not None
                else None
            )
            if event is not None:
                element.draft.set(
                    confirm_ms=round((time.perf_counter() - confirm_started) * 1000, 2)
                )
                done.append((element.draft, Outcome.CONFIRMED))
            else:
                unconfirmed.append((element, modified_ms))
    finally:
        for waiter in waiters.values():
            rt.listener.done(waiter)
    done.extend(_confirm_elsewhere_or_read_back(rt, unconfirmed, confirm_started))
    return done


def _confirm_elsewhere_or_read_back(
    rt: Runtime, unconfirmed: list[tuple[Element, int]], confirm_started: float
) -> list[tuple[Draft, Outcome]]:
    """Another process's socket may have seen the event (shared cache); else read back once."""
    if not unconfirmed:
        return []
    done: list[tuple[Draft, Outcome]] = []
    cached = rt.cache.get_many([e.user_id for e, _ in unconfirmed])
    to_read: list[Element] = []
    for element, modified_ms in unconfirmed:
        state = cached.get(element.user_id)
        if (
            state is not None
            and state.seen_via == "event"
            and state.definition_id == element.target.id
            and modified_ms
            and state.modified_ms >= modified_ms
        ):
            element.draft.set(confirm_ms=round((time.perf_counter() - confirm_started) * 1000, 2))
            done.append((element.draft, Outcome.CONFIRMED))
        else:
            to_read.append(element)
    if not to_read:
        return done
    try:
        read = rt.client.get_presences_bulk([e.user_id for e in to_read])
    except (GenesysError, BudgetExhausted) as exc:
        # The PUT was accepted: record it applied rather than apply it again on a retry.
        for element in to_read:
            element.draft.set(note=f"read-back failed: {exc}")
            done.append((element.draft, Outcome.APPLIED_UNCONFIRMED))
        return done
    confirm_ms = round((time.perf_counter() - confirm_started) * 1000, 2)
    for element in to_read:
        element.draft.set(confirm_ms=confirm_ms)
        presence = read.get(element.user_id)
        if presence is not None:
            rt.cache.put(element.user_id, as_state(presence, "read"))
        if presence is not None and presence.presence_definition.id == element.target.id:
            done.append((element.draft, Outcome.APPLIED_UNCONFIRMED))
        else:
            seen = presence.presence_definition.system_presence if presence else "nothing"
            element.draft.set(
                error_code="drifted", error_message=f"Read back {seen} after the change"
            )
            done.append((element.draft, Outcome.DRIFTED))
    return done
