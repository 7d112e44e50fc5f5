"""The broker ledger: a request's custody in Redis whenever no worker's acknowledgement holds it.

Kombu's Redis transport keeps a held message in its ``unacked`` hash and restores it after the
visibility timeout. Two gaps remain, and the ledger closes both:

* **popped, never held** — a consumer's ``BRPOP`` removes a message from its list before the
  consumer writes it to ``unacked``; a worker SIGKILLed in between loses it. So every
  ``presence.update`` and ``presence.wave`` message pushed through :class:`Channel` (the
  producer library, the worker's own sends, kombu's restores) gets a *queued* entry written
  before its ``LPUSH`` in the same round trip, and the ``unacked`` write clears it in the same
  script (:meth:`QoS.append`). An entry still there after ``check_after_s`` is looked up: held in
  ``unacked`` (cleared), still in its list (looked at again later), or neither — popped and
  lost — and pushed again.
* **waiting for a retry** — a Celery countdown retry sits unacknowledged in a worker's memory
  until its ETA, which is why the visibility timeout had to exceed the longest retry delay.
  Instead, :func:`schedule` writes a *scheduled* entry (the task, its arguments, when it is
  due) and only then is the message acknowledged; :func:`move_due` (run by every worker, see
  :mod:`worker.broker.mover`) publishes it when due.

Three keys: the hash :data:`ENTRIES_KEY` (id → the entry as JSON) and two sorted sets,
:data:`QUEUED_KEY` (when each queued entry was pushed) and :data:`SCHEDULED_KEY` (when each
retry is due); how long a queued entry may wait before it is looked up is the workers' setting,
not the producers'. Ids are Celery task ids: a request id for
``presence.update``. Every step writes the next custody before dropping the last, so a crash
anywhere leaves a duplicate at worst, which the per-request idempotency (audit table, write
intents) makes harmless.

Upstream: the pop-then-record window is celery/celery#7950 (and the warm-shutdown variant
celery/celery#4354); ETA messages held past the visibility timeout are celery/kombu#337 and
celery/celery#2599. No kombu release changes either, hence this subclass of kombu's transport.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Final, cast

import redis
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual as kombu_virtual

from worker import names
from worker.broker import holders, pauses, redis_restore

log = logging.getLogger(__name__)
# Through the module dict: the kombu stubs do not declare the module's imported names.
_dumps: Callable[[Any], str] = vars(kombu_redis)["dumps"]

TRANSPORT: Final = "worker.broker.ledger:Transport"
QUEUED_KEY: Final = "presence:ledger:queued"
"""Sorted set: id → when its message was pushed (or last found waiting), epoch seconds."""
SCHEDULED_KEY: Final = "presence:ledger:scheduled"
"""Sorted set: id → when its retry is due (or its claim ends), epoch seconds."""
ENTRIES_KEY: Final = "presence:ledger:entries"
"""Hash: id → the entry as JSON (``state`` ``queued`` or ``scheduled``)."""
TAKEN_KEY: Final = "presence:ledger:taken_at"
"""Sorted set: list → the newest push time of a ledgered message a consumer took from it (kept
with ``ZADD GT``, one command per message)."""
SCAN_MAX: Final = 1000
"""A list this long or shorter is searched for an old entry's message whatever its position."""
UNACKED_KEY: Final = "unacked"  # kombu's default ``unacked_key``
LEDGERED_TASKS: Final = frozenset({names.UPDATE_TASK, names.WAVE_TASK})
"""Tasks whose messages get a queued entry. WFM deliveries have their outbox and sweeper, shift
dispatch runs again on its interval."""
CHECK_AFTER_S: Final = 120.0
"""Default age after which a queued entry is looked up (``LEDGER_CHECK_AFTER_S``)."""
CLAIM_S: Final = 30.0
"""A scheduled entry taken by a mover is due again after this unless the mover settles it."""
MOVE_LIMIT: Final = 200

# KEYS: queued, scheduled, entries, unacked, taken. ARGV: now, limit, claim until, queued
# before, scan max. Queued entries old enough are settled here; scheduled ones due are claimed
# and returned. A list is first in, first out: while no message pushed after an entry's was
# taken from a long list, the entry's message is still in it, and the list is not searched.
_CLAIM: Final = """
local function listed(entry)
  local taken = tonumber(redis.call('ZSCORE', KEYS[5], entry.list) or '-1')
  if taken < (entry.pushed or 0) and redis.call('LLEN', entry.list) > tonumber(ARGV[5]) then
    return true
  end
  return redis.call('LPOS', entry.list, entry.message, 'RANK', -1)
end
local requeued, settled, waiting = 0, 0, 0
local old = redis.call('ZRANGE', KEYS[1], '-inf', ARGV[4], 'BYSCORE', 'LIMIT', 0, ARGV[2])
for _, id in ipairs(old) do
  local raw = redis.call('HGET', KEYS[3], id)
  local entry = raw and cjson.decode(raw)
  if not entry or entry.state ~= 'queued' then
    redis.call('ZREM', KEYS[1], id)
  elseif redis.call('HEXISTS', KEYS[4], entry.tag) == 1 then
    redis.call('ZREM', KEYS[1], id)
    redis.call('HDEL', KEYS[3], id)
    settled = settled + 1
  elseif listed(entry) then
    redis.call('ZADD', KEYS[1], ARGV[1], id)
    waiting = waiting + 1
  else
    redis.call('LPUSH', entry.list, entry.message)
    entry.pushed = tonumber(ARGV[1])
    redis.call('HSET', KEYS[3], id, cjson.encode(entry))
    redis.call('ZADD', KEYS[1], ARGV[1], id)
    requeued = requeued + 1
  end
end
local scheduled = {}
local due = redis.call('ZRANGE', KEYS[2], '-inf', ARGV[1], 'BYSCORE', 'LIMIT', 0, ARGV[2])
for _, id in ipairs(due) do
  local raw = redis.call('HGET', KEYS[3], id)
  if not raw or cjson.decode(raw).state ~= 'scheduled' then
    redis.call('ZREM', KEYS[2], id)
  else
    redis.call('ZADD', KEYS[2], ARGV[3], id)
    table.insert(scheduled, raw)
  end
end
return {requeued, settled, waiting, scheduled}
"""

# KEYS: queued, scheduled, entries, taken. ARGV: id, a delivery tag or '', an entry's JSON or ''.
# Drop the entry of ARGV[1] only if it is still the one the caller knows: the queued entry of
# delivery ARGV[2] (its push time then counts as taken from its list), or exactly ARGV[3]; a
# newer entry under the same id is kept.
_SETTLE: Final = """
local raw = redis.call('HGET', KEYS[3], ARGV[1])
if not raw then return 0 end
if ARGV[2] ~= '' then
  local entry = cjson.decode(raw)
  if entry.state ~= 'queued' or entry.tag ~= ARGV[2] then return 0 end
  if entry.pushed then redis.call('ZADD', KEYS[4], 'GT', entry.pushed, entry.list) end
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[3], ARGV[1])
  return 1
elseif raw ~= ARGV[3] then
  return 0
end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
return 1
"""

# KEYS: unacked index, unacked, holders, entries, queued, taken. ARGV: delivery tag, now, the
# unacked value, holder, task id or ''. Kombu's ``unacked`` write with its holder, and (for a
# ledgered task) :data:`_SETTLE`'s drop of the delivery's queued entry, in one atomic script.
# A queued entry is never in the scheduled set: a stale member there (the entry was scheduled
# before this push replaced it) is dropped by the mover's claim, which ignores ids whose entry
# is not scheduled.
_HOLD: Final = """
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[4])
if ARGV[5] == '' then return 0 end
local raw = redis.call('HGET', KEYS[4], ARGV[5])
if not raw then return 0 end
local entry = cjson.decode(raw)
if entry.state ~= 'queued' or entry.tag ~= ARGV[1] then return 0 end
if entry.pushed then redis.call('ZADD', KEYS[6], 'GT', entry.pushed, entry.list) end
redis.call('ZREM', KEYS[5], ARGV[5])
redis.call('HDEL', KEYS[4], ARGV[5])
return 1
"""


def _new_token() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True, slots=True)
class Scheduled:
    """A task to publish when due: ``id`` is its Celery task id (kept across the retry) and
    ``expires`` the original message's ``expires`` (ISO-8601), kept too. ``token`` tells one
    scheduling from the next: a task that waits again (same arguments) while the mover that
    published it has not yet settled must not look like the entry being settled, or the settle
    would delete the new retry."""

    id: str
    task: str
    args: list[Any]
    kwargs: dict[str, Any]
    queue: str
    expires: str | None = None
    token: str = field(default_factory=_new_token, compare=False)

    def to_json(self) -> str:
        return json.dumps(
            {
                "state": "scheduled",
                "id": self.id,
                "task": self.task,
                "args": self.args,
                "kwargs": self.kwargs,
                "queue": self.queue,
                "expires": self.expires,
                "token": self.token,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, raw: str | bytes) -> Scheduled:
        data = json.loads(raw)
        expires = data.get("expires")
        token = data.get("token")
        return cls(
            data["id"],
            data["task"],
            data["args"],
            data["kwargs"],
            data["queue"],
            expires if isinstance(expires, str) else None,
            token if isinstance(token, str) else _new_token(),
        )


@dataclass(frozen=True, slots=True)
class Moved:
    """What one :func:`move_due` pass did."""

    published: int = 0
    requeued: int = 0  # queued entries popped by a worker that died before holding them
    settled: int = 0  # queued entries found held (their clear was lost)
    waiting: int = 0  # queued entries still in their list
    failed: int = 0  # scheduled entries whose publish failed (due again after CLAIM_S)


def ledgered_id(message: Mapping[str, Any]) -> str | None:
    """The task id a kombu message dict is ledgered under, or None for messages of other tasks
    (or any shape but a Celery protocol-2 envelope)."""
    headers = message.get("headers")
    if not isinstance(headers, Mapping) or headers.get("task") not in LEDGERED_TASKS:
        return None
    task_id = headers.get("id")
    return task_id if isinstance(task_id, str) and task_id else None


def delivery_tag(message: Mapping[str, Any]) -> str | None:
    properties = message.get("properties")
    tag = properties.get("delivery_tag") if isinstance(properties, Mapping) else None
    return tag if isinstance(tag, str) else None


def queued_entry(list_key: str, tag: str, message: str, pushed: float) -> str:
    """A queued entry: ``pushed`` is when the message went to the back of its list (0 for one
    restored to its front, which is taken next)."""
    return json.dumps(
        {"state": "queued", "list": list_key, "tag": tag, "message": message, "pushed": pushed},
        separators=(",", ":"),
    )


def record_queued(
    pipe: Any,
    task_id: str,
    list_key: str,
    tag: str,
    message: str,
    now: float,
    *,
    front: bool = False,
) -> None:
    """Queue the commands writing a queued entry on ``pipe`` (a pipeline or publish batch),
    replacing any scheduled one of ``task_id`` (its id may stay in the scheduled set: the
    mover's claim drops ids whose entry is not scheduled); ``front``: pushed to the end taken
    next. The time first: a partial write leaves an id without entry (dropped by the claim),
    never an entry the claim would take for old."""
    entry = queued_entry(list_key, tag, message, 0.0 if front else now)
    pipe.zadd(QUEUED_KEY, {task_id: now})
    pipe.hset(ENTRIES_KEY, task_id, entry)


def schedule(client: redis.Redis, entry: Scheduled, due: float) -> None:
    """Write ``entry`` to be published at ``due`` (epoch seconds); returns once Redis has it.
    Raises ``redis.RedisError`` when it cannot."""
    with client.pipeline() as pipe:
        pipe.hset(ENTRIES_KEY, entry.id, entry.to_json())
        pipe.zadd(SCHEDULED_KEY, {entry.id: due})
        pipe.zrem(QUEUED_KEY, entry.id)
        pipe.execute()


def forget_queued(client: Any, task_id: str, tag: str) -> None:
    """Drop the queued entry of ``task_id`` if it is the one of delivery ``tag`` (on ``client``,
    a Redis client or pipeline): the message is held in ``unacked`` now, or its fate written."""
    client.eval(_SETTLE, 4, QUEUED_KEY, SCHEDULED_KEY, ENTRIES_KEY, TAKEN_KEY, task_id, tag, "")


def settle(client: redis.Redis, entry_id: str, raw: str) -> bool:
    """Drop the entry of ``entry_id`` if it is still ``raw`` (published, nothing newer)."""
    keys = (QUEUED_KEY, SCHEDULED_KEY, ENTRIES_KEY, TAKEN_KEY)
    return bool(client.eval(_SETTLE, 4, *keys, entry_id, "", raw))


def move_due(
    client: redis.Redis,
    send: Callable[[Scheduled], None],
    *,
    now: float,
    check_after_s: float = CHECK_AFTER_S,
    claim_s: float = CLAIM_S,
    limit: int = MOVE_LIMIT,
    scan_max: int = SCAN_MAX,
) -> Moved:
    """One pass at ``now``: queued entries older than ``check_after_s`` are settled in Redis
    (held in ``unacked``: dropped; still in their list: looked at again ``check_after_s``
    later; neither, so popped and lost: pushed again); scheduled entries due are claimed for
    ``claim_s`` and published with ``send``, then dropped unless a newer entry replaced them (a
    ledgered task's publish writes its queued entry). A list longer than ``scan_max`` is not
    searched while no message pushed after the entry's was taken from it (first in, first out:
    it is still there). Raises ``redis.RedisError`` when Redis cannot be reached; a failed
    ``send`` is logged and tried again after ``claim_s``."""
    keys = (QUEUED_KEY, SCHEDULED_KEY, ENTRIES_KEY, UNACKED_KEY, TAKEN_KEY)
    args = (now, limit, now + claim_s, now - check_after_s, scan_max)
    result = client.eval(_CLAIM, 5, *keys, *args)
    requeued, settled, waiting, claimed = result
    published = failed = 0
    for raw in claimed:
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        entry = Scheduled.from_json(text)
        try:
            send(entry)
        except Exception as exc:
            failed += 1
            log.warning("could not publish scheduled %s %s yet: %s", entry.task, entry.id, exc)
            continue
        settle(client, entry.id, text)
        published += 1
    if requeued:
        log.warning(
            "re-enqueued %d message(s) a worker took from the queue and died before holding",
            requeued,
        )
    return Moved(published, int(requeued), int(settled), int(waiting), failed)


def pending(client: redis.Redis) -> list[dict[str, Any]]:
    """Every entry (for operators and tests): the decoded JSON plus its ``at`` time (pushed or
    last found waiting for a queued entry, due for a scheduled one)."""
    entries = cast(dict[bytes, bytes], client.hgetall(ENTRIES_KEY))
    scores: dict[Any, Any] = {}
    for key in (QUEUED_KEY, SCHEDULED_KEY):
        scores.update(cast(list[tuple[Any, Any]], client.zrange(key, 0, -1, withscores=True)))
    return [
        {**json.loads(raw), "key": key.decode(), "at": scores.get(key)}
        for key, raw in entries.items()
    ]


# -- the transport ------------------------------------------------------------------------------
class PendingAcks:
    """Acknowledgements Redis could not take (it was away when a task ended), kept in this
    process and settled by its mover once Redis answers again. Without them the finished
    message would sit in ``unacked`` until the visibility timeout redelivered it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tags: dict[str, tuple[str, str]] = {}  # delivery tag → (unacked key, index key)

    def add(self, delivery_tag: str, unacked_key: str, index_key: str) -> None:
        with self._lock:
            self._tags[delivery_tag] = (unacked_key, index_key)

    def __len__(self) -> int:
        with self._lock:
            return len(self._tags)

    def settle(self, client: redis.Redis) -> int:
        """Remove every pending tag from ``unacked`` in one round trip; how many were settled.
        Raises what Redis raises (the tags stay pending)."""
        with self._lock:
            pending = dict(self._tags)
        if not pending:
            return 0
        pipe = client.pipeline(transaction=False)
        for tag, (unacked_key, index_key) in pending.items():
            pipe.hdel(unacked_key, tag)
            pipe.zrem(index_key, tag)
        pipe.execute()
        with self._lock:
            for tag in pending:
                self._tags.pop(tag, None)
        return len(pending)


PENDING_ACKS: Final = PendingAcks()
# Registered on a client that never connects: the script runs on the client given per call
# (EVALSHA, loading it once per server).
_HOLD_SCRIPT: Final = redis.Redis().register_script(_HOLD)


class QoS(redis_restore.QoS):
    def ack(self, delivery_tag: str) -> None:
        """Kombu's ``ack`` (the message out of ``unacked``, with its holder) as one pipeline
        without a transaction: ``unacked`` first, so a partial write leaves only an index entry,
        which kombu's restore drops; a concurrent restore watches ``unacked`` and starts over.
        When Redis cannot take it, the tag is settled later by the mover
        (:data:`PENDING_ACKS`) instead of waiting out the visibility timeout. Celery would only
        log the failure (``ack_log_error``)."""
        try:
            channel: Any = self.channel
            with channel.conn_or_acquire() as client:
                pipe = client.pipeline(transaction=False)
                pipe.hdel(self.unacked_key, delivery_tag)
                pipe.zrem(self.unacked_index_key, delivery_tag)
                holders.release(pipe, delivery_tag)
                pipe.execute()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            PENDING_ACKS.add(delivery_tag, self.unacked_key, self.unacked_index_key)
            log.warning(
                "cannot acknowledge %s yet (%s); settling it when Redis is back", delivery_tag, exc
            )
        kombu_virtual.QoS.ack(self, delivery_tag)  # settled here either way: never restore it

    def append(self, message: Any, delivery_tag: str) -> None:
        """Kombu's ``append`` (the ``unacked`` write), with this process named its holder and a
        ledgered message's queued entry dropped, in one script: custody passes from the ledger
        to ``unacked`` atomically, in one round trip."""
        raw = getattr(message, "_raw", None)
        task_id = ledgered_id(raw) if isinstance(raw, Mapping) else None
        delivery = message.delivery_info
        value = _dumps([raw, delivery["exchange"], delivery["routing_key"]])
        keys = (
            self.unacked_index_key,
            self.unacked_key,
            holders.HOLDERS_KEY,
            ENTRIES_KEY,
            QUEUED_KEY,
            TAKEN_KEY,
        )
        args = (delivery_tag, time.time(), value, holders.PROCESS_ID, task_id or "")
        channel: Any = self.channel
        with channel.conn_or_acquire() as client:
            _HOLD_SCRIPT(keys=keys, args=args, client=client)
        kombu_virtual.QoS.append(self, message, delivery_tag)

    def _remove_from_indices(self, delivery_tag: str, pipe: Any = None) -> Any:
        """Kombu's removal from ``unacked`` (ack, reject, restore), with the holder's entry."""
        removing = super()._remove_from_indices(delivery_tag, pipe)  # type: ignore[misc]
        holders.release(removing, delivery_tag)
        return removing


class Channel(redis_restore.Channel):
    """Kombu's Redis channel writing the ledger with each push of a ledgered task's message,
    its blocking pop leaving out the queues this process paused (:mod:`worker.broker.pauses`)."""

    QoS = QoS
    _shared: tuple[Any, Any] | None = None  # (pool, the client over it)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        me: Any = self
        me._queue_cycle = pauses.PausingCycle(me._queue_cycle)

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        """Kombu's, with one client per connection pool instead of a new one (and its
        response-callback table) for every push, hold and ack. Redis clients are thread-safe;
        the pool is the channel's as before."""
        if client:
            yield client
            return
        me: Any = self
        pool = me.pool
        shared = self._shared
        if shared is None or shared[0] is not pool:
            shared = self._shared = (pool, me._create_client())
        yield shared[1]

    def _put(self, queue: str, message: dict[str, Any], **kwargs: Any) -> None:
        me: Any = self  # kombu's stubs leave out the Redis channel's helpers
        task_id = ledgered_id(message)
        tag = delivery_tag(message)
        if task_id is None or tag is None or (me._expires and queue in me._expires):
            super()._put(queue, message, **kwargs)
            return
        key = me._q_for_pri(queue, me._get_message_priority(message, reverse=False))
        text = _dumps(message)
        now = time.time()
        batch = kwargs.pop("_publish_batch", None)
        if batch is not None:
            # A non-transactional batch: the entry first, so a partial write errs on its side.
            # A non-transactional batch: the entry first, so a partial write errs on its side.
            batch.add("zadd", QUEUED_KEY, {task_id: now})
            batch.add("hset", ENTRIES_KEY, task_id, queued_entry(key, tag, text, now))
            batch.add("lpush", key, text)
            return
        # No transaction: the entry is written before the push, so a partial write errs on its
        # side (the mover pushes a message whose entry it finds nowhere), as a batch does.
        with me.conn_or_acquire() as client, client.pipeline(transaction=False) as pipe:
            record_queued(pipe, task_id, key, tag, text, now)
            pipe.lpush(key, text)
            pipe.execute()

    def _do_restore_message(
        self, payload: Any, exchange: str, routing_key: str, pipe: Any, leftmost: bool = False
    ) -> None:
        """Kombu's restore (back onto the list), with a queued entry written in its
        transaction: a restored message can be popped and lost like a new one."""
        me: Any = self
        cast(Any, super())._do_restore_message(payload, exchange, routing_key, pipe, leftmost)
        task_id = ledgered_id(payload) if isinstance(payload, Mapping) else None
        tag = delivery_tag(payload) if isinstance(payload, Mapping) else None
        if task_id is None or tag is None:
            return
        text = _dumps(payload)  # what kombu pushed (the payload marked redelivered)
        for queue in me._lookup(exchange, routing_key):
            key = me._q_for_pri(queue, me._get_message_priority(payload, reverse=False))
            record_queued(pipe, task_id, key, tag, text, time.time(), front=not leftmost)


class Transport(redis_restore.Transport):
    Channel = Channel

    def forget(self, message: Any) -> None:
        """Drop the queued entry of a message that never reached ``unacked`` but whose fate is
        written (a refused message). Never raises: a kept entry only costs a redelivery."""
        if not isinstance(message, Mapping):
            return
        task_id, tag = ledgered_id(message), delivery_tag(message)
        if task_id is None or tag is None:
            return
        channels: list[Any] = list(self.channels or [])
        for channel in channels:
            try:
                with channel.conn_or_acquire() as client:
                    forget_queued(client, task_id, tag)
                return
            except Exception as exc:
                log.warning("could not clear the ledger entry of %s: %s", task_id, exc)
                return
