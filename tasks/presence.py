"""``presence.update`` and ``presence.wave``: thin Celery wrappers around
:func:`worker.flow.single.handle_update` and :func:`worker.flow.wave.handle_wave`."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from typing import Any, TypeVar

from celery import Task
from celery.app.task import Context
from celery.signals import task_revoked
from pydantic import ValidationError

from models import Outcome
from models.storable import storable_id
from producer.schema import PresenceUpdate, queue_for, wave_org
from worker import names
from worker.app import app
from worker.broker import ledger
from worker.broker.retry import broker_client, republish
from worker.flow.ports import Ports
from worker.flow.request import Attempt
from worker.flow.single import handle_update, record_dead_letter, record_ended
from worker.flow.wave import handle_wave, record_wave_dead_letter, record_wave_ended
from worker.orgs import UnknownOrg, org_of
from worker.retry import Delay, GiveUp, PendingDeadLetter, RetryLater
from worker.runtime import Runtime
from worker.settings import get_settings

log = logging.getLogger(__name__)
T = TypeVar("T")
WAVE_LOCK_WAIT_S = 1.0
# The message key of a dead-letter decided but not yet written (the database was down).
PENDING_DEAD_LETTER = "dead_letter"


def _message(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, object, object]:
    """(payload, earlier failures as carried, a pending dead-letter as carried) of a message.
    The task signatures are open on purpose: a message with the wrong arguments is recorded
    ``invalid`` instead of failing inside Celery, where it would vanish without an audit row."""
    payload = (
        args[0]
        if len(args) == 1 and not kwargs.keys() - {"failures", PENDING_DEAD_LETTER}
        else {"args": list(args), **kwargs}
    )
    return payload, kwargs.get("failures", 0), kwargs.get(PENDING_DEAD_LETTER)


def _runtime(task: Task[Any, Any], org: str) -> Runtime:
    """This process's runtime of ``org``. When it cannot be built (a configuration error, Redis
    down at start), the message is retried later, never acknowledged away. Raises UnknownOrg
    when ``org`` is not one this worker serves."""
    try:
        return Runtime.current(org)
    except UnknownOrg:
        raise
    except Exception as exc:
        # The settings themselves were read when the app was imported: they are valid here.
        retry_s = get_settings().runtime_retry_s
        log.error("cannot start the update flow, retrying in %.0f s: %s", retry_s, _why(exc))
        republish(task, countdown_s=retry_s)


def _why(exc: Exception) -> str:
    """One line, without the input values a settings error would otherwise print (secrets)."""
    if isinstance(exc, ValidationError):
        return "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'settings'}: {e['msg']}" for e in exc.errors()
        )
    return f"{type(exc).__name__}: {exc}"


def _attempt(request: Context, runtime: Runtime, failures: object) -> Attempt:
    """This delivery: a storable request id (a task id of any length gets a row) and a failure
    count a producer cannot inflate or turn negative."""
    return Attempt(
        storable_id(str(request.id)),
        runtime.ports.clock.now(),
        failures=runtime.retry.clamp_failures(failures),
        worker=runtime.name,
    )


def _run(
    task: Task[Any, Any],
    runtime: Runtime,
    payload: Any,
    attempt: Attempt,
    age_s: Callable[[], float | None],
    work: Callable[[], T],
    dead_letter: Callable[[GiveUp], T],
    pending: object = None,
) -> T:
    """Run ``work``; on RetryLater ask the retry policy and map its answer onto Celery's retry
    (countdown, failures counted) or ``dead_letter``. ``pending`` is a dead-letter an earlier
    delivery decided but could not write: it is written now, without running ``work`` again.

    Never acknowledges a request whose fate is not written: a retry that cannot be published
    keeps its message (:func:`worker.broker.retry.republish`), a dead-letter that cannot be
    written is retried later."""
    carried = PendingDeadLetter.parse(pending)
    if carried is not None:
        return _dead_letter(task, runtime, payload, attempt, dead_letter, carried)
    try:
        try:
            return work()
        except RetryLater:
            raise
        except Exception as exc:
            # An unexpected error must not lose the request: retry it, then dead-letter it.
            log.exception("request %s failed unexpectedly", attempt.request_id)
            raise RetryLater(
                Delay.FAILURE, f"internal error: {type(exc).__name__}", code="internal.error"
            ) from None
    except RetryLater as later:
        decision = runtime.retry.decide(later, failures=attempt.failures, age_s=age_s())
        if isinstance(decision, GiveUp):
            return _dead_letter(
                task, runtime, payload, attempt, dead_letter, PendingDeadLetter(decision, 0)
            )
        republish(
            task,
            args=(payload,),
            kwargs={"failures": decision.failures},
            countdown_s=decision.countdown_s,
        )


def _dead_letter(
    task: Task[Any, Any],
    runtime: Runtime,
    payload: Any,
    attempt: Attempt,
    dead_letter: Callable[[GiveUp], T],
    pending: PendingDeadLetter,
) -> T:
    """Write the dead-letter row(s); when that fails (the database is down), retry the write
    with the policy's backoff, never giving up and never counting it as a platform failure."""
    try:
        return dead_letter(pending.give_up)
    except Exception as exc:
        countdown_s = runtime.retry.backoff_s(pending.tries)
        log.error(
            "request %s: cannot record dead_letter yet (attempt %d), retrying in %.1f s: %s",
            attempt.request_id,
            pending.tries + 1,
            countdown_s,
            _why(exc),
        )
        republish(
            task,
            args=(payload,),
            kwargs={
                "failures": attempt.failures,
                PENDING_DEAD_LETTER: pending.next_try().to_message(),
            },
            countdown_s=countdown_s,
        )


def _age_s(payload: Any, attempt: Attempt) -> float | None:
    """How long ago the request was made, when its payload says so."""
    try:
        requested_at = PresenceUpdate.model_validate(payload).requested_at
    except ValueError:
        return None
    return (attempt.started_at - requested_at).total_seconds()


@task_revoked.connect
def _record_expired(
    sender: Task[Any, Any] | None = None,
    request: Context | None = None,
    expired: bool = False,
    **_: Any,
) -> None:
    """A message whose producer-set ``expires`` passed before a worker ran it is dropped by
    Celery: record it (``invalid``, ``message.expired``) so that it does not vanish."""
    if not expired or sender is None or request is None:
        return
    if sender.name not in (names.UPDATE_TASK, names.WAVE_TASK):
        return
    try:
        payload, _failures, _pending = _message(
            tuple(request.args or ()), dict(request.kwargs or {})
        )
        elements = payload if isinstance(payload, list) else [payload]
        org = org_of(payload) if sender.name == names.UPDATE_TASK else wave_org(elements)
        try:
            runtime = Runtime.current(org)
        except UnknownOrg as unknown:
            runtime = Runtime.current(unknown.known[0])
        attempt = _attempt(request, runtime, 0)
        message = f"Expired before a worker ran it (the message's expires: {request.expires})"
        if sender.name == names.UPDATE_TASK:
            record_ended(
                runtime.ports, payload, attempt, Outcome.INVALID, "message.expired", message
            )
        else:
            record_wave_ended(
                runtime.ports, elements, attempt, Outcome.INVALID, "message.expired", message
            )
    except Exception:
        log.exception("could not record expired request %s", getattr(request, "id", "?"))


@app.task(name=names.UPDATE_TASK, bind=True, max_retries=None)
def update(self: Task[Any, str], *args: Any, **kwargs: Any) -> str:
    """Apply one presence update (``args == [payload]``); returns its terminal outcome.

    Real failures are retried with backoff up to ``MAX_RETRIES`` and then dead-lettered;
    waits for budget or for another worker's lock re-schedule without counting as failures.
    """
    payload, failures, pending = _message(args, kwargs)
    runtime, unknown = _org_runtime(self, org_of(payload))
    ports = runtime.ports
    attempt = _attempt(self.request, runtime, failures)

    def work() -> str:
        if unknown is not None:
            return record_ended(
                ports, payload, attempt, Outcome.INVALID, "org.unknown", str(unknown)
            ).value
        with runtime.occupying():
            return handle_update(ports, payload, attempt).value

    return _run(
        self,
        runtime,
        payload,
        attempt,
        lambda: _age_s(payload, attempt),
        work,
        lambda give_up: record_dead_letter(ports, payload, attempt, give_up).value,
        pending,
    )


@app.task(name=names.WAVE_TASK, bind=True, max_retries=None)
def wave(self: Task[Any, dict[str, int]], *args: Any, **kwargs: Any) -> dict[str, int]:
    """Apply a wave (``args == [[{"request_id": …, "update": {…}}, …]]``) with bulk PUTs;
    returns the count of each outcome. Retries as ``presence.update`` does; elements already
    audited are skipped on a retry."""
    payload, failures, pending = _message(args, kwargs)
    elements: list[Any] = payload if isinstance(payload, list) else [payload]
    org = wave_org(elements)
    runtime, unknown = _org_runtime(self, org)
    ports = runtime.ports
    attempt = _attempt(self.request, runtime, failures)

    def requeue(request_id: str, update_payload: dict[str, Any], countdown_s: float) -> None:
        # Through the ledger's schedule like any retry: never an ETA held in worker memory.
        entry = ledger.Scheduled(
            request_id, names.UPDATE_TASK, [update_payload], {}, queue_for(org)
        )
        due = runtime.ports.clock.now().timestamp() + countdown_s
        ledger.schedule(broker_client(str(app.conf.broker_url)), entry, due)

    def apply() -> dict[str, int]:
        if unknown is not None:
            return dict(
                record_wave_ended(
                    ports, elements, attempt, Outcome.INVALID, "org.unknown", str(unknown)
                )
            )
        mine = [e for e in elements if wave_org([e]) == org]
        refused = _refuse_other_orgs(
            ports, [e for e in elements if wave_org([e]) != org], attempt, org
        )
        # One wave per process (it fills the process's channel). A busy process hands the wave
        # back instead of parking a pool thread, so single updates and dispatch keep flowing.
        if not runtime.wave_lock.acquire(timeout=WAVE_LOCK_WAIT_S):
            raise RetryLater(
                Delay.WAIT, "this process is applying another wave", countdown_s=WAVE_LOCK_WAIT_S
            )
        try:
            with runtime.occupying():
                return dict(refused + handle_wave(ports, mine, attempt, requeue))
        finally:
            runtime.wave_lock.release()

    return _run(
        self,
        runtime,
        elements,
        attempt,
        lambda: None,  # a wave waits as long as it takes; its elements carry their own ages
        apply,
        lambda give_up: dict(record_wave_dead_letter(ports, elements, attempt, give_up)),
        pending,
    )


def _org_runtime(task: Task[Any, Any], org: str) -> tuple[Runtime, UnknownOrg | None]:
    """The runtime of ``org``; for an org this worker does not serve, the first configured
    org's (one audit database for all) with the refusal to record."""
    try:
        return _runtime(task, org), None
    except UnknownOrg as unknown:
        return _runtime(task, unknown.known[0]), unknown


def _refuse_other_orgs(ports: Ports, others: list[Any], attempt: Attempt, org: str) -> Counter[str]:
    """One wave is applied with one org's runtime: elements naming another org are ``invalid``
    (``org.mixed``)."""
    if not others:
        return Counter()
    refused = record_wave_ended(
        ports,
        others,
        attempt,
        Outcome.INVALID,
        "org.mixed",
        f"a wave holds one org's changes; this wave is org {org!r}'s",
    )
    log.warning("wave %s: %d element(s) of another org refused", attempt.request_id, len(others))
    return refused
