"""The broker ledger: a request's custody in Redis from its push to its acknowledgement.

Kombu's Redis transport pops a message with ``BRPOP`` and only then copies it to its ``unacked``
hash; a worker SIGKILLed in between loses it, and a Celery countdown retry sits unacknowledged
in a worker's memory until its ETA. For ``presence.update`` and ``presence.wave`` messages the
ledger replaces kombu's ``unacked`` altogether:

* **queued** — every such message pushed through :class:`Channel` (the producer library, the
  worker's own sends, restores) gets an entry, keyed by its delivery tag, written before its
  ``LPUSH`` in the same round trip: the message itself, its list, when it was pushed. The
  message carries a ``ledger`` property naming its list and push time, so the consumer knows
  the entry exists.
* **held** — the consumer's hold is one ``ZADD`` (``tag|holder`` in :data:`QUEUED_KEY`), the
  entry staying as the held copy; the acknowledgement is two commands: the entry, then its time
  and hold in one ``ZREM``. A hold whose process is dead (:mod:`worker.broker.holders`) or older than the
  visibility timeout is pushed back by any live worker's mover (:func:`restore_held`).
* **popped, never held** — an entry neither held nor in its list after ``check_after_s`` is
  pushed again by the mover (:func:`move_due`).
* **scheduled** — :func:`schedule` writes a retry (the task, its arguments, when it is due,
  keyed by the task id) and only then is the message acknowledged; the mover publishes it when
  due.

A message of these tasks without the ``ledger`` property (a client that writes the broker's
lists itself) is held the kombu way, in ``unacked`` with its holder, and gets an entry when
kombu restores it. Every step writes the next custody before dropping the last, so a crash
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
from worker.bound_redis import ThreadBoundRedis
from worker.broker import holders, pauses, redis_restore

log = logging.getLogger(__name__)
# Through the module dict: the kombu stubs do not declare the module's imported names.
_dumps: Callable[[Any], str] = vars(kombu_redis)["dumps"]

TRANSPORT: Final = "worker.broker.ledger:Transport"
QUEUED_KEY: Final = "presence:ledger:queued"
"""Sorted set of times: a delivery tag → when its message was pushed (or last found waiting),
and a hold, ``tag|holder`` (a process id) → minus when the holder took the message. Negative,
so that a range of push times never meets a hold, and one ``ZREM`` drops both at the ack."""
SCHEDULED_KEY: Final = "presence:ledger:scheduled"
"""Sorted set: task id → when its retry is due (or its claim ends), epoch seconds."""
ENTRIES_KEY: Final = "presence:ledger:entries"
"""Hash: a queued entry under its delivery tag, a scheduled one under its task id (JSON, with
``state`` ``queued`` or ``scheduled``)."""
TAKEN_KEY: Final = "presence:ledger:taken_at"
"""Sorted set: list → the newest push time of a ledgered message a consumer took from it (kept
with ``ZADD GT``, written by each consumer's mover)."""
MARK: Final = "ledger"
"""The message property naming a ledgered message's list and push time: its entry exists."""
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

# KEYS: queued, scheduled, entries, taken. ARGV: now, limit, claim until, queued before,
# scan max. Queued entries old enough are looked up here (held or still listed: looked at again
# later; neither: pushed again); scheduled ones due are claimed and returned. A list is first
# in, first out: while no message pushed after an entry's was taken from a long list, the
# entry's message is still in it, and the list is not searched.
_CLAIM: Final = """
local function listed(entry)
  local taken = tonumber(redis.call('ZSCORE', KEYS[4], entry.list) or '-1')
  if taken < (entry.pushed or 0) and redis.call('LLEN', entry.list) > tonumber(ARGV[5]) then
    return true
  end
  return redis.call('LPOS', entry.list, entry.message, 'RANK', -1)
end
local holding = nil
local function held(tag)
  if not holding then
    holding = {}
    for _, member in ipairs(redis.call('ZRANGE', KEYS[1], '-inf', '(0', 'BYSCORE')) do
      holding[string.match(member, '^[^|]*')] = true
    end
  end
  return holding[tag]
end
local requeued, waiting = 0, 0
local old = redis.call('ZRANGE', KEYS[1], 0, ARGV[4], 'BYSCORE', 'LIMIT', 0, ARGV[2])
for _, tag in ipairs(old) do
  local raw = redis.call('HGET', KEYS[3], tag)
  local entry = raw and cjson.decode(raw)
  if not entry or entry.state ~= 'queued' then
    redis.call('ZREM', KEYS[1], tag)
  elseif held(tag) or listed(entry) then
    redis.call('ZADD', KEYS[1], ARGV[1], tag)
    waiting = waiting + 1
  else
    redis.call('LPUSH', entry.list, entry.message)
    entry.pushed = tonumber(ARGV[1])
    redis.call('HSET', KEYS[3], tag, cjson.encode(entry))
    redis.call('ZADD', KEYS[1], ARGV[1], tag)
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
return {requeued, waiting, scheduled}
"""

# KEYS: scheduled, entries. ARGV: id, the entry's JSON. Drop the scheduled entry of ARGV[1]
# only if it is still exactly ARGV[2]: a newer one under the same id is kept.
_SETTLE: Final = """
if redis.call('HGET', KEYS[2], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return 1
"""

# KEYS: queued, entries, the list. ARGV: hold member, tag, message, entry JSON, now, 'front' or
# 'back'. A held message back on its list, queued again, if the hold is still there
# and the message not acknowledged meanwhile (only one of two concurrent restores pushes).
_RESTORE: Final = """
if redis.call('HEXISTS', KEYS[2], ARGV[2]) == 0 then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return 0
end
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
if ARGV[6] == 'front' then
  redis.call('RPUSH', KEYS[3], ARGV[3])
else
  redis.call('LPUSH', KEYS[3], ARGV[3])
end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[4])
redis.call('ZADD', KEYS[1], ARGV[5], ARGV[2])
return 1
"""

# KEYS: unacked index, unacked, holders, entries, queued. ARGV: delivery tag, now, the unacked
# value, holder, task id or ''. Kombu's ``unacked`` write with its holder, atomically: a message
# the ledger does not hold. A ledgered task's message without the mark may come from a producer
# of the release before, which ledgered it under its task id: that entry is dropped here, as that
# release's consumers did, or the mover would push the message again.
_HOLD_UNACKED: Final = """
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[4])
if ARGV[5] == '' then return 0 end
local raw = redis.call('HGET', KEYS[4], ARGV[5])
if not raw then return 0 end
local entry = cjson.decode(raw)
if entry.state ~= 'queued' or entry.tag ~= ARGV[1] then return 0 end
redis.call('ZREM', KEYS[5], ARGV[5])
redis.call('HDEL', KEYS[4], ARGV[5])
return 1
"""

# Registered on a client that never connects: each script runs on the client given per call
# (EVALSHA, loading it once per server).
_SCRIPTS: Final = redis.Redis()
_CLAIM_SCRIPT: Final = _SCRIPTS.register_script(_CLAIM)
_SETTLE_SCRIPT: Final = _SCRIPTS.register_script(_SETTLE)
_RESTORE_SCRIPT: Final = _SCRIPTS.register_script(_RESTORE)
_HOLD_UNACKED_SCRIPT: Final = _SCRIPTS.register_script(_HOLD_UNACKED)


def _new_token() -> str:
    return uuid.uuid4().hex


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(frozen=True, slots=True)
class Scheduled:
    """A task to publish when due: ``id`` is its Celery task id (kept across the retry) and
    ``expires`` the original message's ``expires`` (ISO-8601), kept too. ``token`` tells one
    scheduling from the next: a task that waits again (same arguments) while the mover that
    published it has not yet settled must not look like the entry being settled, or the settle
    would delete the new retry. ``retries`` is Celery's count of earlier attempts, carried in the
    published message's ``retries`` header (Flower shows it)."""

    id: str
    task: str
    args: list[Any]
    kwargs: dict[str, Any]
    queue: str
    expires: str | None = None
    retries: int = 0
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
                "retries": self.retries,
                "token": self.token,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, raw: str | bytes) -> Scheduled:
        data = json.loads(raw)
        expires, retries, token = data.get("expires"), data.get("retries"), data.get("token")
        return cls(
            data["id"],
            data["task"],
            data["args"],
            data["kwargs"],
            data["queue"],
            expires=expires if isinstance(expires, str) else None,
            retries=retries if type(retries) is int and retries >= 0 else 0,
            token=token if isinstance(token, str) else _new_token(),
        )


@dataclass(frozen=True, slots=True)
class Moved:
    """What one :func:`move_due` pass did."""

    published: int = 0
    requeued: int = 0  # queued entries popped by a worker that died before holding them
    waiting: int = 0  # queued entries still in their list, or held
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


def mark(message: dict[str, Any], list_key: str, pushed: float) -> None:
    """Write the :data:`MARK` property on a message dict about to be pushed with its entry."""
    properties = message.setdefault("properties", {})
    if isinstance(properties, dict):
        properties[MARK] = {"list": list_key, "pushed": pushed}


def marked_place(message: Any) -> tuple[str, float] | None:
    """A ledgered message's list and push time (its :data:`MARK`), or None for a message
    without an entry (another task's, or one a client pushed without this transport)."""
    if not isinstance(message, Mapping) or ledgered_id(message) is None:
        return None
    properties = message.get("properties")
    place = properties.get(MARK) if isinstance(properties, Mapping) else None
    if not isinstance(place, Mapping):
        return None
    list_key, pushed = place.get("list"), place.get("pushed")
    if not isinstance(list_key, str) or not isinstance(pushed, int | float):
        return None
    return list_key, float(pushed)


def queued_entry(task_id: str, list_key: str, tag: str, message: str, pushed: float) -> str:
    """A queued entry: ``pushed`` is when the message went to the back of its list (0 for one
    restored to its front, which is taken next)."""
    return json.dumps(
        {
            "state": "queued",
            "id": task_id,
            "list": list_key,
            "tag": tag,
            "message": message,
            "pushed": pushed,
        },
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
    """Queue the commands writing the queued entry of delivery ``tag`` on ``pipe`` (a pipeline
    or publish batch); ``front``: pushed to the end taken next. The time first: a partial write
    leaves a tag without entry (dropped by the claim), never an entry the claim would take for
    old."""
    entry = queued_entry(task_id, list_key, tag, message, 0.0 if front else now)
    pipe.zadd(QUEUED_KEY, {tag: now})
    pipe.hset(ENTRIES_KEY, tag, entry)


def hold_member(tag: str) -> str:
    """This process's hold of delivery ``tag`` in :data:`QUEUED_KEY`."""
    return f"{tag}|{holders.PROCESS_ID}"


def hold_score(at: float) -> float:
    """The score in :data:`QUEUED_KEY` of a hold taken at ``at`` (epoch seconds)."""
    return -at


def release_commands(tag: str, member: str) -> list[tuple[str, ...]]:
    """The acknowledgement of a ledger hold: the entry first, so that a partial write leaves
    only a hold without entry, which a restore drops; then its time and hold."""
    return [("hdel", ENTRIES_KEY, tag), ("zrem", QUEUED_KEY, tag, member)]


def schedule(client: redis.Redis, entry: Scheduled, due: float) -> None:
    """Write ``entry`` to be published at ``due`` (epoch seconds); returns once Redis has it.
    Raises ``redis.RedisError`` when it cannot."""
    with client.pipeline() as pipe:
        pipe.hset(ENTRIES_KEY, entry.id, entry.to_json())
        pipe.zadd(SCHEDULED_KEY, {entry.id: due})
        pipe.execute()


def forget_queued(client: Any, tag: str) -> None:
    """Drop the queued entry of delivery ``tag`` (on ``client``, a Redis client or pipeline):
    its message's fate is written and it was never held."""
    pipe = client.pipeline(transaction=False)
    pipe.hdel(ENTRIES_KEY, tag)
    pipe.zrem(QUEUED_KEY, tag)
    pipe.execute()


def settle(client: redis.Redis, entry_id: str, raw: str) -> bool:
    """Drop the scheduled entry of ``entry_id`` if it is still ``raw`` (published, nothing
    newer)."""
    return bool(
        _SETTLE_SCRIPT(keys=(SCHEDULED_KEY, ENTRIES_KEY), args=(entry_id, raw), client=client)
    )


def restore_held(client: redis.Redis, member: str, *, now: float, front: bool = True) -> bool:
    """Put the message of hold ``member`` back on its list (``front``: taken next, as kombu
    restores; else at the back, as a requeueing reject), marked redelivered and queued again;
    False when the hold is gone or its message was acknowledged. Raises ``redis.RedisError``."""
    tag = member.split("|", 1)[0]
    raw = client.hget(ENTRIES_KEY, tag)
    entry = json.loads(raw) if raw is not None else None
    if not isinstance(entry, dict) or entry.get("state") != "queued":
        client.zrem(QUEUED_KEY, member)
        return False
    message = json.loads(entry["message"])
    headers, properties = message.get("headers"), message.get("properties")
    if isinstance(headers, dict):
        headers["redelivered"] = True
    if isinstance(properties, dict) and isinstance(properties.get("delivery_info"), dict):
        properties["delivery_info"]["redelivered"] = True
    pushed = 0.0 if front else now
    mark(message, entry["list"], pushed)
    text = _dumps(message)
    again = queued_entry(str(entry.get("id") or ""), entry["list"], tag, text, pushed)
    keys = (QUEUED_KEY, ENTRIES_KEY, entry["list"])
    args = (member, tag, text, again, now, "front" if front else "back")
    return bool(_RESTORE_SCRIPT(keys=keys, args=args, client=client))


def holds(client: redis.Redis) -> list[tuple[str, float]]:
    """Every ledger hold (its ``tag|holder`` member) and when it was taken, oldest first."""
    rows = cast(
        list[tuple[Any, float]],
        client.zrangebyscore(QUEUED_KEY, "-inf", "(0", withscores=True),
    )
    return [(_text(member), -score) for member, score in reversed(rows)]


def orphaned_holds(
    client: redis.Redis,
    *,
    now: float,
    visibility_s: float,
    limit: int = MOVE_LIMIT,
    page: int = 1000,
) -> list[str]:
    """Up to ``limit`` holds, oldest first, older than :data:`holders.ALIVE_TTL_S` whose process
    is no longer alive, or older than ``visibility_s`` whatever their holder (alive but stuck,
    as kombu's visibility timeout). Every hold old enough is looked at (``page`` per read), so
    many live ones never hide a dead one."""
    oldest = f"({hold_score(now - holders.ALIVE_TTL_S)!r}"
    holds: list[tuple[str, float]] = []
    while True:
        rows = cast(
            list[tuple[Any, float]],
            client.zrevrangebyscore(
                QUEUED_KEY, "(0", oldest, start=len(holds), num=page, withscores=True
            ),
        )
        holds += [(_text(member), -score) for member, score in rows]
        if len(rows) < page:
            break
    if not holds:
        return []
    owners = sorted({member.rpartition("|")[2] for member, _ in holds})
    alive = dict(zip(owners, client.mget([holders.ALIVE_PREFIX + o for o in owners]), strict=True))
    return [
        member
        for member, at in holds
        if alive[member.rpartition("|")[2]] is None or at < now - visibility_s
    ][:limit]


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
    (held, or still in their list: looked at again ``check_after_s`` later; neither, so popped
    and lost: pushed again); scheduled entries due are claimed for ``claim_s`` and published
    with ``send``, then dropped unless a newer entry replaced them. A list longer than
    ``scan_max`` is not searched while no message pushed after the entry's was taken from it
    (first in, first out: it is still there). Raises ``redis.RedisError`` when Redis cannot be
    reached; a failed ``send`` is logged and tried again after ``claim_s``."""
    keys = (QUEUED_KEY, SCHEDULED_KEY, ENTRIES_KEY, TAKEN_KEY)
    args = (now, limit, now + claim_s, now - check_after_s, scan_max)
    requeued, waiting, claimed = _CLAIM_SCRIPT(keys=keys, args=args, client=client)
    published = failed = 0
    for raw in claimed:
        text = _text(raw)
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
    return Moved(published, int(requeued), int(waiting), failed)


def pending(client: redis.Redis) -> list[dict[str, Any]]:
    """Every entry (for operators and tests): the decoded JSON plus its ``key`` (a delivery tag
    or, for a retry, the task id), its ``at`` time (pushed or last found waiting for a queued
    entry, due for a scheduled one) and, for a held message, its ``holder``."""
    entries = cast(dict[bytes, bytes], client.hgetall(ENTRIES_KEY))
    scores: dict[Any, Any] = {}
    holds: dict[str, str] = {}
    for key in (QUEUED_KEY, SCHEDULED_KEY):
        for member, score in cast(
            list[tuple[bytes, float]], client.zrange(key, 0, -1, withscores=True)
        ):
            tag, _, holder = _text(member).partition("|")
            if holder:
                holds[tag] = holder
            else:
                scores[member] = score
    return [
        {
            **json.loads(raw),
            "key": _text(key),
            "at": scores.get(key),
            "holder": holds.get(_text(key)),
        }
        for key, raw in entries.items()
    ]


class TakenTimes:
    """The newest push time of a ledgered message this process took from each list, kept in
    memory at each hold and written to :data:`TAKEN_KEY` by the mover: one command per list and
    pass instead of one per message. Written late, a time is only lower than the truth, which
    makes the claim search a list or look again later, never push a listed message again."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._newest: dict[str, float] = {}

    def note(self, list_key: str, pushed: float) -> None:
        with self._lock:
            if pushed > self._newest.get(list_key, -1.0):
                self._newest[list_key] = pushed

    def write(self, client: redis.Redis) -> None:
        """Write the times noted since the last write; raises what Redis raises (they are
        kept for the next write)."""
        with self._lock:
            newest, self._newest = self._newest, {}
        if not newest:
            return
        try:
            pipe = client.pipeline(transaction=False)
            for list_key, pushed in newest.items():
                pipe.zadd(TAKEN_KEY, {list_key: pushed}, gt=True)
            pipe.execute()
        except redis.RedisError:
            for list_key, pushed in newest.items():
                self.note(list_key, pushed)
            raise


TAKEN: Final = TakenTimes()


# -- the transport ------------------------------------------------------------------------------
class PendingAcks:
    """Acknowledgements Redis could not take (it was away when a task ended), kept in this
    process and settled by its mover once Redis answers again. Without them the finished
    message would be delivered again once its hold is taken for stuck."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._commands: dict[str, list[tuple[str, ...]]] = {}  # delivery tag → its removal

    def add(self, delivery_tag: str, commands: list[tuple[str, ...]]) -> None:
        with self._lock:
            self._commands[delivery_tag] = commands

    def __len__(self) -> int:
        with self._lock:
            return len(self._commands)

    def settle(self, client: redis.Redis) -> int:
        """Run every pending removal in one round trip; how many were settled. Raises what
        Redis raises (they stay pending)."""
        with self._lock:
            pending = dict(self._commands)
        if not pending:
            return 0
        pipe = client.pipeline(transaction=False)
        for commands in pending.values():
            _queue_commands(pipe, commands)
        pipe.execute()
        with self._lock:
            for tag in pending:
                self._commands.pop(tag, None)
        return len(pending)


def _queue_commands(pipe: Any, commands: list[tuple[str, ...]]) -> None:
    for name, *args in commands:
        getattr(pipe, name)(*args)


PENDING_ACKS: Final = PendingAcks()


class QoS(redis_restore.QoS):
    """Kombu's Redis QoS with the ledger's hold for ledgered messages (:data:`MARK`), and this
    process named the holder of every other message in ``unacked``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._holds: dict[str, str] = {}  # delivery tag → its hold member, for ledger holds

    def append(self, message: Any, delivery_tag: str) -> None:
        """Hold ``message``: a ledgered one with one ``ZADD`` (its entry is the held copy),
        any other with kombu's ``unacked`` write and its holder, in one script."""
        raw = getattr(message, "_raw", None)
        place = marked_place(raw)
        channel: Any = self.channel
        with channel.conn_or_acquire() as client:
            if place is not None:
                member = hold_member(delivery_tag)
                client.zadd(QUEUED_KEY, {member: hold_score(time.time())})
                self._holds[delivery_tag] = member
                TAKEN.note(*place)
            else:
                delivery = message.delivery_info
                value = _dumps([raw, delivery["exchange"], delivery["routing_key"]])
                task_id = ledgered_id(raw) if isinstance(raw, Mapping) else None
                keys = (
                    self.unacked_index_key,
                    self.unacked_key,
                    holders.HOLDERS_KEY,
                    ENTRIES_KEY,
                    QUEUED_KEY,
                )
                args = (delivery_tag, time.time(), value, holders.PROCESS_ID, task_id or "")
                _HOLD_UNACKED_SCRIPT(keys=keys, args=args, client=client)
        kombu_virtual.QoS.append(self, message, delivery_tag)

    def ack(self, delivery_tag: str) -> None:
        """Drop the message's custody in one pipeline without a transaction (a ledger hold:
        its entry, time and hold; else ``unacked``, its index and holder, ``unacked`` first, so
        a partial write leaves only an index entry, which kombu's restore drops). When Redis
        cannot take it, the removal is run later by the mover (:data:`PENDING_ACKS`). Celery
        would only log the failure (``ack_log_error``)."""
        member = self._holds.pop(delivery_tag, None)
        if member is not None:
            commands = release_commands(delivery_tag, member)
        else:
            commands = [
                ("hdel", self.unacked_key, delivery_tag),
                ("zrem", self.unacked_index_key, delivery_tag),
                ("hdel", holders.HOLDERS_KEY, delivery_tag),
            ]
        try:
            channel: Any = self.channel
            with channel.conn_or_acquire() as client:
                pipe = client.pipeline(transaction=False)
                _queue_commands(pipe, commands)
                pipe.execute()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            PENDING_ACKS.add(delivery_tag, commands)
            log.warning(
                "cannot acknowledge %s yet (%s); settling it when Redis is back", delivery_tag, exc
            )
        kombu_virtual.QoS.ack(self, delivery_tag)  # settled here either way: never restore it

    def restore_by_tag(self, tag: str, client: Any = None, leftmost: bool = False) -> None:
        """Kombu's restore (shutdown, a requeueing reject); a ledger hold goes back through
        :func:`restore_held`. Raises what Redis raises (the hold stays, for a later ack or
        another worker's restore)."""
        member = self._holds.get(tag)
        if member is None:
            super().restore_by_tag(tag, client, leftmost)
            return
        channel: Any = self.channel
        with channel.conn_or_acquire(client) as conn:
            restore_held(conn, member, now=time.time(), front=not leftmost)
        self._holds.pop(tag, None)

    def _remove_from_indices(self, delivery_tag: str, pipe: Any = None) -> Any:
        """Kombu's removal from ``unacked`` (a reject, a restore), with the holder's entry; a
        ledger hold's removal instead for a ledgered message."""
        member = self._holds.pop(delivery_tag, None)
        if member is not None:
            with self.pipe_or_acquire(pipe) as removing:
                _queue_commands(removing, release_commands(delivery_tag, member))
                return removing
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
        response-callback table) for every push, hold and ack, each thread on its own pooled
        connection (:class:`~worker.bound_redis.ThreadBoundRedis`); the pool is the channel's as
        before."""
        if client:
            yield client
            return
        me: Any = self
        pool = me.pool
        shared = self._shared
        if shared is None or shared[0] is not pool:
            shared = self._shared = (pool, ThreadBoundRedis(connection_pool=pool))
        yield shared[1]

    def _put(self, queue: str, message: dict[str, Any], **kwargs: Any) -> None:
        me: Any = self  # kombu's stubs leave out the Redis channel's helpers
        task_id = ledgered_id(message)
        tag = delivery_tag(message)
        if task_id is None or tag is None or (me._expires and queue in me._expires):
            super()._put(queue, message, **kwargs)
            return
        key = me._q_for_pri(queue, me._get_message_priority(message, reverse=False))
        now = time.time()
        mark(message, key, now)
        text = _dumps(message)
        batch = kwargs.pop("_publish_batch", None)
        if batch is not None:
            # A non-transactional batch: the entry first, so a partial write errs on its side.
            batch.add("zadd", QUEUED_KEY, {tag: now})
            batch.add("hset", ENTRIES_KEY, tag, queued_entry(task_id, key, tag, text, now))
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
        """Kombu's restore from ``unacked`` (back onto the list), the message marked and its
        queued entry written in the same transaction: a restored message can be popped and lost
        like a new one."""
        me: Any = self
        task_id = ledgered_id(payload) if isinstance(payload, Mapping) else None
        tag = delivery_tag(payload) if isinstance(payload, Mapping) else None
        queues = list(me._lookup(exchange, routing_key)) if task_id and tag else []
        now = time.time()
        keys = [
            me._q_for_pri(queue, me._get_message_priority(payload, reverse=False))
            for queue in queues
        ]
        if len(keys) == 1:  # one list, the only case the mark can name
            mark(payload, keys[0], 0.0 if not leftmost else now)
        cast(Any, super())._do_restore_message(payload, exchange, routing_key, pipe, leftmost)
        if task_id is None or tag is None or len(keys) != 1:
            return
        text = _dumps(payload)  # what kombu pushed (the payload marked redelivered)
        record_queued(pipe, task_id, keys[0], tag, text, now, front=not leftmost)


class Transport(redis_restore.Transport):
    Channel = Channel

    def forget(self, message: Any) -> None:
        """Drop the queued entry of a message that was never held but whose fate is written (a
        refused message). Never raises: a kept entry only costs a redelivery."""
        if not isinstance(message, Mapping):
            return
        task_id, tag = ledgered_id(message), delivery_tag(message)
        if task_id is None or tag is None:
            return
        channels: list[Any] = list(self.channels or [])
        for channel in channels:
            try:
                with channel.conn_or_acquire() as client:
                    forget_queued(client, tag)
                return
            except Exception as exc:
                log.warning("could not clear the ledger entry of %s: %s", task_id, exc)
                return
