"""The worker's broker transport: Kombu's Redis transport, guarded against malformed messages.

Kombu turns a popped Redis list item into a message on the consumer's thread: ``loads`` in
``Channel._brpop_read`` / ``Channel._get``, then ``Transport._deliver`` → the consumer's callback
(``virtual.Message``, ``QoS.append``, Celery's ``on_task_received`` and task strategy). An
exception anywhere there is not a task failure: it ends the worker ("Unrecoverable error") or,
for some shapes, loops the consumer through reconnects; a message already held (Kombu's
``unacked`` hash, the broker ledger's hold) is restored and stops the next worker too. Upstream has no fix in a released version (open:
celery/celery#4308 "Worker dies if unable to decode a message", celery/kombu#2421 "no supported
extension point to intercept or validate the raw message before JSON parsing").

The guard therefore sits at the two points every message passes before any of that:

* ``loads`` of ``kombu.transport.redis`` is wrapped (:func:`install`): text that is not JSON
  becomes an :class:`Unreadable` marker instead of an exception;
* :class:`Transport` (``broker_transport`` in ``worker.app``) checks each message of the task
  queues with :func:`worker.envelopes.inspect_envelope` in ``_deliver``, before the consumer's
  callback, so a refused message is never held: it was removed from the list by the pop and is
  settled (its ledger entry dropped) once it is recorded.

A refused message is recorded where operators look: an ``invalid`` audit row through the
recorder when it is a ``presence.update`` whose ``headers.id`` can key a row, else (or when the
database write fails) a bounded record in the capped Redis list :data:`QUARANTINE_KEY`; it is
counted in ``presence_refused_messages_total`` and logged in one line. The next message is
processed.
"""

from __future__ import annotations

import base64
import inspect
import json
import logging
import os
import socket
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Final

import redis
from kombu.transport import redis as kombu_redis

from models import Outcome
from producer.schema import DEFAULT_ORG, org_of, org_of_queue
from worker import names
from worker.broker import ledger
from worker.envelopes import Refusal, auditable_id, identity, inspect_envelope
from worker.flow.record import AuditDraft, Recorder
from worker.observability import metrics

log = logging.getLogger(__name__)

TRANSPORT: Final = "worker.broker.guard:Transport"
QUARANTINE_KEY: Final = "presence:quarantine"
QUARANTINE_LIMIT: Final = 1000
"""Records kept in the quarantine list (the newest first); older ones are trimmed."""
QUARANTINE_TIMEOUT_S: Final = 5.0
RAW_CHARS: Final = 4096
"""Characters of the raw envelope kept in a quarantine record or an audit row."""
GUARDED_QUEUES: Final = frozenset({names.PRESENCE_QUEUE, names.WFM_QUEUE, names.SHIFTS_QUEUE})
OUR_TASKS: Final = (
    names.UPDATE_TASK,
    names.WAVE_TASK,
    names.WFM_SYNC_TASK,
    names.WFM_SWEEP_TASK,
    names.SHIFTS_DISPATCH_TASK,
)


class Unreadable(dict[str, Any]):
    """What the guarded ``loads`` returns for text that is not JSON: an empty mapping (Kombu's
    own restore paths fail on it as they did on the exception) carrying the text."""

    def __init__(self, text: str, error: str) -> None:
        super().__init__()
        self.text = text
        self.error = error


# Through the module dict: the kombu stubs do not declare the module's imported names.
_kombu_loads: Callable[..., Any] = vars(kombu_redis)["loads"]


def guarded_loads(text: Any, *args: Any, **kwargs: Any) -> Any:
    """Kombu's ``loads``, returning :class:`Unreadable` where it would raise."""
    try:
        return _kombu_loads(text, *args, **kwargs)
    except Exception as exc:
        return Unreadable(
            text if isinstance(text, str) else repr(text), f"{type(exc).__name__}: {exc}"
        )


def install() -> None:
    """Wrap ``loads`` of Kombu's Redis transport (idempotent). Only text that is not JSON
    decodes differently: it would otherwise raise out of the consumer loop, the item already
    popped."""
    vars(kombu_redis)["loads"] = guarded_loads


class Transport(ledger.Transport):
    """Kombu's Redis transport, writing the broker ledger (:mod:`worker.broker.ledger`), with
    restores that survive a lost Redis (:mod:`worker.broker.redis_restore`); messages of
    :data:`GUARDED_QUEUES` that are not well-formed tasks of ours are refused before delivery
    (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        install()
        super().__init__(*args, **kwargs)

    def _deliver(self, message: Any, queue: str | None) -> None:
        if isinstance(message, Unreadable):
            refuse(queue or "", message.text, Refusal("json", f"not JSON: {message.error}"))
            return
        if queue in GUARDED_QUEUES:
            refusal = inspect_envelope(message, task_signatures())
            if refusal is not None:
                refuse(queue, message, refusal)
                self.forget(message)  # recorded: its ledger entry must not push it again
                return
        try:
            super()._deliver(message, queue)
        except (*self.connection_errors, *self.channel_errors):
            raise
        except Exception as exc:
            if queue not in GUARDED_QUEUES:
                raise
            # A shape the check does not know yet: settle the message rather than the worker.
            # Quarantined, not audited: the task may have been handed to the pool already.
            log.exception("delivering a message from %s failed", queue)
            self._settle(message)
            detail = f"delivery failed: {type(exc).__name__}: {exc}"
            refusal = Refusal("delivery", detail[:300], *identity(message))
            refuse(queue, message, refusal, audit=False)

    def _settle(self, message: dict[str, Any]) -> None:
        """Settle a message the consumer's callback already holds (its hold dropped)."""
        tag = message.get("properties", {}).get("delivery_tag")
        for channel in self.channels or []:
            try:
                if tag in (channel.qos._delivered or {}):
                    channel.qos.ack(tag)
            except Exception:
                log.exception("could not settle message %r", tag)


# -- what the check accepts -----------------------------------------------------------------
_signatures: dict[str, inspect.Signature | None] | None = None


def task_signatures() -> dict[str, inspect.Signature | None]:
    """Our task names → their call signatures (from the Celery app, once per process)."""
    global _signatures
    if _signatures is None:
        from worker.app import app

        try:
            app.loader.import_default_modules()  # the app's ``include`` (a worker has them)
        except Exception:
            # Not the guard's failure to report: check the envelopes, skip the arguments.
            log.exception("cannot import the worker's tasks")
            return dict.fromkeys(OUR_TASKS)
        found: dict[str, inspect.Signature | None] = {}
        for name in OUR_TASKS:
            task = app.tasks.get(name)
            if task is not None:
                try:
                    found[name] = inspect.signature(task.run)
                except (TypeError, ValueError):
                    found[name] = None
        _signatures = found
    return _signatures


# -- recording ------------------------------------------------------------------------------
class Sinks:
    """Where refused messages go: the recorder (audit rows) and the Redis of the quarantine."""

    _lock = threading.Lock()
    _current: tuple[int, Sinks] | None = None

    def __init__(self, redis_url: str, database_url: str) -> None:
        from worker.audit import SqlAuditStore
        from worker.clock import SystemClock
        from worker.runtime import observe_row

        # Bounded waits: a Redis that does not answer must not hang the consumer.
        self.redis = redis.Redis.from_url(
            redis_url,
            socket_timeout=QUARANTINE_TIMEOUT_S,
            socket_connect_timeout=QUARANTINE_TIMEOUT_S,
        )
        self.recorder = Recorder(
            SqlAuditStore(database_url),
            now=SystemClock().now,
            observe=observe_row,
            enqueue_wfm=lambda _delivery_id: None,
            wfm_enabled=False,  # an invalid row never changed an agent
        )
        self.worker = f"{socket.gethostname()}:{os.getpid()}"

    @classmethod
    def current(cls) -> Sinks:
        """This process's, from the settings (``REDIS_URL``, ``DATABASE_URL``), built on first
        use after any fork."""
        from worker.settings import get_settings

        with cls._lock:
            if cls._current is None or cls._current[0] != os.getpid():
                settings = get_settings()
                cls._current = (os.getpid(), cls(settings.redis_url, settings.database_url))
            return cls._current[1]


def refuse(
    queue: str, raw: object, refusal: Refusal, *, audit: bool = True, sinks: Sinks | None = None
) -> str:
    """Record, count and log one refused message; returns where it was recorded: ``audit`` (a
    ``presence.update`` with a usable id, unless ``audit`` is false), else ``quarantine``, or
    ``log`` when no store took it. ``sinks`` defaults to this process's. Never raises."""
    text = _raw_text(raw)
    where, note = "log", ""
    if sinks is None:
        try:
            sinks = Sinks.current()
        except Exception as exc:
            note = f"no recorder: {type(exc).__name__}: {exc}"
    auditable = audit and refusal.request_id is not None and refusal.task == names.UPDATE_TASK
    if sinks is not None and auditable:
        try:
            _audit(sinks, refusal, text, raw, queue)
            where = "audit"
        except Exception as exc:
            note = f"audit write failed: {type(exc).__name__}: {exc}"
    if sinks is not None and where == "log":
        try:
            _quarantine(sinks, queue, refusal, text, note)
            where = "quarantine"
        except Exception as exc:
            note = f"{note}; quarantine failed: {type(exc).__name__}: {exc}"
    metrics.record_refused_message(queue, refusal.reason, where)
    log.warning(
        "refused a message on %s (%s): %s; request %s; recorded: %s%s; raw: %.300s",
        queue, refusal.reason, refusal.detail, refusal.request_id, where,
        f" ({note[:300]})" if note else "", text,
    )  # fmt: skip
    return where


def _audit(sinks: Sinks, refusal: Refusal, text: str, raw: object, queue: str) -> None:
    assert refusal.request_id is not None
    payload = _payload(raw)
    named = isinstance(payload, dict) and "org" in payload
    draft = AuditDraft(
        request_id=refusal.request_id,
        # The org the payload names when readable, else the org whose queue the message was on.
        org=org_of(payload) if named else (org_of_queue(queue) or DEFAULT_ORG),
        started_at=datetime.now(UTC),
        worker=sinks.worker,
        payload={"envelope": text[:RAW_CHARS]},
        user_id=_user_id(payload),
        error_code=f"envelope.{refusal.reason}",
        error_message=f"malformed message: {refusal.detail}",
    )
    sinks.recorder.finish(draft, Outcome.INVALID)


def _quarantine(sinks: Sinks, queue: str, refusal: Refusal, text: str, note: str) -> None:
    record = {
        "at": datetime.now(UTC).isoformat(),
        "queue": queue,
        "reason": refusal.reason,
        "detail": refusal.detail,
        "request_id": refusal.request_id,
        "task": refusal.task[:200] if refusal.task is not None else None,
        "worker": sinks.worker,
        "note": note[:500] or None,
        "raw_chars": len(text),
        "raw": text[:RAW_CHARS],
    }
    with sinks.redis.pipeline(transaction=True) as pipe:
        # ASCII JSON: any text (lone surrogates included) can be stored and read back.
        pipe.lpush(QUARANTINE_KEY, json.dumps(record, ensure_ascii=True))
        pipe.ltrim(QUARANTINE_KEY, 0, QUARANTINE_LIMIT - 1)
        pipe.execute()


def _raw_text(raw: object) -> str:
    if isinstance(raw, str):
        return raw
    try:
        return json.dumps(raw, ensure_ascii=True, default=str)
    except (TypeError, ValueError):
        return repr(raw)


def _payload(raw: object) -> object:
    """The message's first positional argument when the body can be read that far; None
    otherwise."""
    try:
        body = raw["body"]  # type: ignore[index]
        if raw["properties"].get("body_encoding") == "base64":  # type: ignore[index]
            body = base64.b64decode(body).decode()
        return json.loads(body)[0][0]
    except Exception:
        return None


def _user_id(payload: object) -> str | None:
    """The payload's ``user_id`` when there is one (for ``presence audit --user``)."""
    try:
        return auditable_id(payload["user_id"])  # type: ignore[index]
    except Exception:
        return None
