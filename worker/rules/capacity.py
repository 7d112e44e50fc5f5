"""The queue-capacity guard: taking an agent out of routing must not starve a queue.

For a change that takes an agent off queue, every queue the agent is joined to is checked
against its policy — at least ``min_on_queue`` agents stay on queue, and waiting interactions per
remaining on-queue agent stay at or under ``max_waiting_per_agent``. The numbers come from the
platform's queue observations, cached briefly in Redis and shared by every worker (one query
covers all the queues a check needs). Concurrent workers cannot drain a queue together: each
admitted change holds an atomic reservation per queue in Redis, counted against the cached
observation until an observation taken after the change replaces it.
"""

from __future__ import annotations

import json
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import redis
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from producer.schema import error_location
from worker.catalog import Definition
from worker.genesys.client import GenesysClient

ON_QUEUE = "onqueue"
OBSERVING_MS = 3000  # longest a check waits for another worker's observation of a queue
LISTING_MS = 30_000  # longest one worker holds the listing of every queue's members

# KEYS: one reservation zset per queue. ARGV: request_id, then per queue 5 values:
# on_queue, waiting, min_on_queue, max_waiting_per_agent, expires_at_ms.
# Returns {1} when every queue has room (reservations made), else
# {0, queue_index, on_queue, reserved, waiting, reason} without reserving anything.
_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local member = ARGV[1]
for i, key in ipairs(KEYS) do
  local base = 1 + (i - 1) * 5
  local on_queue = tonumber(ARGV[base + 1])
  local waiting = tonumber(ARGV[base + 2])
  local min_on = tonumber(ARGV[base + 3])
  local max_wait = tonumber(ARGV[base + 4])
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  local reserved = redis.call('ZCARD', key)
  if redis.call('ZSCORE', key, member) then reserved = reserved - 1 end
  local remaining = on_queue - reserved - 1
  if remaining < min_on then
    return {0, i, on_queue, reserved, waiting, 'min_on_queue'}
  end
  if waiting > 0 and (remaining <= 0 or waiting / remaining > max_wait) then
    return {0, i, on_queue, reserved, waiting, 'waiting'}
  end
end
for i, key in ipairs(KEYS) do
  local expires = tonumber(ARGV[1 + (i - 1) * 5 + 5])
  redis.call('ZADD', key, expires, member)
  redis.call('PEXPIRE', key, math.max(1000, expires - now + 1000))
end
return {1}
"""


@dataclass(frozen=True, slots=True)
class QueuePolicy:
    min_on_queue: int = 1
    max_waiting_per_agent: float = 5.0


@dataclass(frozen=True, slots=True)
class QueueLoad:
    queue_id: str
    on_queue: int
    waiting: int
    expires_at_ms: int


@dataclass(frozen=True, slots=True)
class CapacityVerdict:
    allowed: bool
    reason: str
    queues: tuple[str, ...] = ()


class _Policy(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    min_on_queue: int = Field(default=1, ge=0)
    max_waiting_per_agent: float = Field(default=5.0, ge=0, allow_inf_nan=False)


class _OverridesFile(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    queues: dict[Annotated[str, StringConstraints(min_length=1, max_length=64)], _Policy] = {}


def load_overrides(path: Path | None) -> dict[str, QueuePolicy]:
    """Per-queue policies from a TOML file: ``[queues."<queue id>"] min_on_queue = 3 …``.

    Raises ValueError (one line, naming the file and the value) when the file cannot be read,
    is not TOML, has unknown keys, or holds a wrong type, a negative or a non-finite number.
    """
    if path is None:
        return {}
    try:
        data = _OverridesFile.model_validate(tomllib.loads(path.read_text(encoding="utf-8")))
    except OSError as exc:
        raise ValueError(f"cannot read CAPACITY_OVERRIDES_FILE {path}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"CAPACITY_OVERRIDES_FILE {path}: {exc}") from None
    except ValidationError as exc:
        error = exc.errors()[0]
        where = error_location(error["loc"], "file")
        raise ValueError(f"CAPACITY_OVERRIDES_FILE {path}: {where}: {error['msg']}") from None
    return {
        queue_id: QueuePolicy(p.min_on_queue, p.max_waiting_per_agent)
        for queue_id, p in data.queues.items()
    }


def takes_out_of_routing(current: Definition | None, target: Definition) -> bool:
    """On Queue → anything else. (Available and the other presences are already off queue.)"""
    return current is not None and current.system == ON_QUEUE and target.system != ON_QUEUE


class CapacityGuard:
    """Observations, reservations and memberships under ``{prefix}:capacity:…`` (``prefix``:
    the org's key prefix)."""

    def __init__(
        self,
        client: redis.Redis,
        genesys: GenesysClient,
        *,
        default: QueuePolicy,
        overrides: dict[str, QueuePolicy],
        observation_ttl_s: float,
        membership_ttl_s: int,
        reservation_grace_s: float,
        prefix: str = "presence",
    ) -> None:
        self.redis = client
        self.prefix = prefix
        self.genesys = genesys
        self.default = default
        self.overrides = overrides
        self.observation_ttl_ms = int(observation_ttl_s * 1000)
        self.membership_ttl_s = membership_ttl_s
        self.reservation_grace_ms = int(reservation_grace_s * 1000)
        self._reserve = client.register_script(_RESERVE)

    def policy(self, queue_id: str) -> QueuePolicy:
        return self.overrides.get(queue_id, self.default)

    # -- inputs (cached, shared) ------------------------------------------------------------
    def joined_queues(self, user_id: str) -> list[str]:
        """The queues the agent is joined to; one Genesys call per agent per membership TTL."""
        key = _membership(self.prefix, user_id)
        raw = self.redis.get(key)
        if raw is not None:
            cached: list[str] = json.loads(raw)
            return cached
        answer = self.genesys.call(
            "GET", f"/api/v2/users/{user_id}/queues", params={"joined": "true", "pageSize": 100}
        )
        queue_ids = [q["id"] for q in answer.data.get("entities", []) if q.get("joined", True)]
        self.redis.set(key, json.dumps(queue_ids), ex=self.membership_ttl_s)
        return queue_ids

    def prefetch_memberships(self, user_ids: list[str]) -> dict[str, dict[str, Any]]:
        """Cache the joined queues of many agents at once (a wave), when listing every queue's
        joined members costs fewer Genesys calls than one membership read per uncached agent.

        Returns the presences the listing carried (``expand=presence``), by agent, for the
        caller's state cache; empty when nothing was listed. The listing is single-flight across
        the fleet: a concurrent caller waits for it, then reads the cache.
        """
        keys = [_membership(self.prefix, u) for u in user_ids]
        missing = [
            u
            for u, raw in zip(user_ids, self.redis.mget(keys) if keys else [], strict=True)
            if raw is None
        ]
        if len(missing) < 2:
            return {}
        # The listing's cost, learnt earlier.
        known_pages = self.redis.get(_listing_pages(self.prefix))
        if known_pages is not None and int(known_pages) >= len(missing):
            return {}
        if not self.redis.set(_listing(self.prefix), 1, px=LISTING_MS, nx=True):
            deadline = time.monotonic() + LISTING_MS / 1000
            while self.redis.exists(_listing(self.prefix)) and time.monotonic() < deadline:
                time.sleep(0.05)
            return {}
        try:
            queues = self._all_queues()
            pages = sum(
                max(1, -(-int(q.get("joinedMemberCount", q.get("memberCount", 0))) // 100))
                for q in queues
            )
            self.redis.set(_listing_pages(self.prefix), pages, ex=self.membership_ttl_s)
            if pages >= len(missing):
                return {}
            joined: dict[str, list[str]] = {}
            presences: dict[str, dict[str, Any]] = {}
            for queue in queues:
                for member in self._joined_members(queue["id"]):
                    joined.setdefault(member["id"], []).append(queue["id"])
                    presence = (member.get("user") or {}).get("presence")
                    if presence:
                        presences[member["id"]] = presence
            pipe = self.redis.pipeline(transaction=False)
            for user_id in {*joined, *missing}:
                pipe.set(
                    _membership(self.prefix, user_id),
                    json.dumps(joined.get(user_id, [])),
                    ex=self.membership_ttl_s,
                )
            pipe.execute()
            return presences
        finally:
            self.redis.delete(_listing(self.prefix))

    def _all_queues(self) -> list[dict[str, Any]]:
        queues: list[dict[str, Any]] = []
        page = 1
        while True:
            answer = self.genesys.call(
                "GET", "/api/v2/routing/queues", params={"pageSize": 100, "pageNumber": page}
            )
            entities = answer.data.get("entities") or []
            queues.extend(entities)
            if len(entities) < 100:
                return queues
            page += 1

    def _joined_members(self, queue_id: str) -> list[dict[str, Any]]:
        members: list[dict[str, Any]] = []
        page = 1
        while True:
            answer = self.genesys.call(
                "GET",
                f"/api/v2/routing/queues/{queue_id}/members",
                params={
                    "pageSize": 100,
                    "pageNumber": page,
                    "joined": "true",
                    "expand": "presence",
                },
            )
            entities = answer.data.get("entities") or []
            members.extend(entities)
            if len(entities) < 100:
                return members
            page += 1

    def loads(self, queue_ids: list[str]) -> dict[str, QueueLoad]:
        """Current load of each queue: cached observations, the stale ones fetched in one query."""
        keys = [_observation(self.prefix, q) for q in queue_ids]
        out: dict[str, QueueLoad] = {}
        stale = []
        for queue_id, raw in zip(queue_ids, self.redis.mget(keys) if keys else [], strict=True):
            if raw is None:
                stale.append(queue_id)
            else:
                out[queue_id] = QueueLoad(**json.loads(raw))
        if not stale:
            return out
        # One query per queue at a time across the fleet: a burst of checks arriving together
        # (everyone to lunch at noon) waits for the first one's observation instead of each
        # querying analytics. A queue whose observer gives no answer in time is queried here.
        mine = [
            q
            for q in stale
            if self.redis.set(_observing(self.prefix, q), 1, px=OBSERVING_MS, nx=True)
        ]
        try:
            if mine:
                # Read again under the lock: an observer may have stored its answer and let go
                # between our first read and our lock.
                self._cached(mine, out)
                missing = [q for q in mine if q not in out]
                if missing:
                    self._store(self._observe(missing), out)
        finally:
            if mine:
                self.redis.delete(*[_observing(self.prefix, q) for q in mine])
        theirs = [q for q in stale if q not in mine]
        deadline = time.monotonic() + OBSERVING_MS / 1000
        while theirs and time.monotonic() < deadline:
            time.sleep(0.02)
            # The lock first, then the answer: an observer stores its answer before letting go.
            observing = any(self.redis.exists(_observing(self.prefix, q)) for q in theirs)
            self._cached(theirs, out)
            theirs = [q for q in theirs if q not in out]
            if theirs and not observing:
                break  # their observer failed: query them ourselves
        if theirs:
            self._store(self._observe(theirs), out)
        return out

    def _cached(self, queue_ids: list[str], out: dict[str, QueueLoad]) -> None:
        """Add the queues' shared observations that exist now to ``out``."""
        raws = self.redis.mget([_observation(self.prefix, q) for q in queue_ids])
        for queue_id, raw in zip(queue_ids, raws, strict=True):
            if raw is not None:
                out[queue_id] = QueueLoad(**json.loads(raw))

    def _store(self, loads: list[QueueLoad], out: dict[str, QueueLoad]) -> None:
        for load in loads:
            key = _observation(self.prefix, load.queue_id)
            # First writer wins: a racing fetch must not replace the observation that
            # existing reservations are counted against.
            if self.redis.set(key, json.dumps(_as_dict(load)), px=self.observation_ttl_ms, nx=True):
                out[load.queue_id] = load
            else:
                raw = self.redis.get(key)
                out[load.queue_id] = QueueLoad(**json.loads(raw)) if raw is not None else load

    def _observe(self, queue_ids: list[str]) -> list[QueueLoad]:
        query = {
            "filter": {
                "type": "or",
                "predicates": [
                    {"type": "dimension", "dimension": "queueId", "operator": "matches", "value": q}
                    for q in queue_ids
                ],
            },
            "metrics": ["oOnQueueUsers", "oWaiting"],
        }
        answer = self.genesys.call(
            "POST", "/api/v2/analytics/queues/observations/query", json=query
        )
        on_queue = dict.fromkeys(queue_ids, 0)
        waiting = dict.fromkeys(queue_ids, 0)
        for result in answer.data.get("results", []):
            queue_id = result.get("group", {}).get("queueId")
            if queue_id not in on_queue:
                continue
            for datum in result.get("data", []):
                count = int((datum.get("stats") or {}).get("count") or 0)
                if datum.get("metric") == "oOnQueueUsers":
                    on_queue[queue_id] += count  # summed over routing-status qualifiers
                elif datum.get("metric") == "oWaiting":
                    waiting[queue_id] += count
        expires = _server_ms(self.redis) + self.observation_ttl_ms
        return [QueueLoad(q, on_queue[q], waiting[q], expires) for q in queue_ids]

    # -- the decision -----------------------------------------------------------------------
    def check_and_reserve(self, request_id: str, user_id: str) -> CapacityVerdict:
        """Admit (reserving a place in every queue) or refuse with the deciding numbers."""
        queue_ids = self.joined_queues(user_id)
        if not queue_ids:
            return CapacityVerdict(True, "the agent is joined to no queue")
        loads = self.loads(queue_ids)
        keys: list[str] = []
        args: list[Any] = [request_id]
        for queue_id in queue_ids:
            load, policy = loads[queue_id], self.policy(queue_id)
            keys.append(_reserved(self.prefix, queue_id))
            args += [
                load.on_queue,
                load.waiting,
                policy.min_on_queue,
                policy.max_waiting_per_agent,
                load.expires_at_ms + self.reservation_grace_ms,
            ]
        result: list[Any] = self._reserve(keys=keys, args=args)
        if int(result[0]) == 1:
            return CapacityVerdict(True, "room in every queue", tuple(queue_ids))
        index, on_queue, reserved, waiting, why = result[1:]
        queue_id = queue_ids[int(index) - 1]
        policy = self.policy(queue_id)
        why = why.decode() if isinstance(why, bytes) else str(why)
        if why == "min_on_queue":
            reason = (
                f"queue {queue_id}: {on_queue} on queue, {reserved} already leaving, "
                f"minimum {policy.min_on_queue}"
            )
        else:
            reason = (
                f"queue {queue_id}: {waiting} waiting for {int(on_queue) - int(reserved) - 1} "
                f"remaining agents, limit {policy.max_waiting_per_agent:g} per agent"
            )
        return CapacityVerdict(False, reason, tuple(queue_ids))

    def release(self, request_id: str, queue_ids: tuple[str, ...]) -> None:
        """Give the places back: the change was not applied."""
        for queue_id in queue_ids:
            self.redis.zrem(_reserved(self.prefix, queue_id), request_id)


def _membership(prefix: str, user_id: str) -> str:
    """The key caching the agent's joined queues (a JSON list of queue ids)."""
    return f"{prefix}:capacity:queues:{user_id}"


def _observing(prefix: str, queue_id: str) -> str:
    """The key held while one worker queries the queue's observation."""
    return f"{prefix}:capacity:observing:{queue_id}"


def _observation(prefix: str, queue_id: str) -> str:
    """The key caching the queue's shared observation (a :class:`QueueLoad`)."""
    return f"{prefix}:capacity:obs:{queue_id}"


def _reserved(prefix: str, queue_id: str) -> str:
    """The zset of the queue's reservations: request id → expiry (ms)."""
    return f"{prefix}:capacity:reserved:{queue_id}"


def _listing(prefix: str) -> str:
    """The key held while one worker lists every queue's members."""
    return f"{prefix}:capacity:listing"


def _listing_pages(prefix: str) -> str:
    """The number of member pages of every queue, learnt by the last listing."""
    return f"{prefix}:capacity:listing_pages"


def _as_dict(load: QueueLoad) -> dict[str, Any]:
    return {
        "queue_id": load.queue_id,
        "on_queue": load.on_queue,
        "waiting": load.waiting,
        "expires_at_ms": load.expires_at_ms,
    }


def _server_ms(client: redis.Redis) -> int:
    seconds, micros = client.time()
    return int(seconds) * 1000 + int(micros) // 1000
