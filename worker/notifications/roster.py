"""The org's active agents as the fleet last listed them, so that processes starting together
list the org once instead of once each, and read its presences once.

A process priming its channels asks :meth:`Roster.active`: a listing another process stored
within ``ttl_s`` is used as it is; otherwise one process lists (holding a short claim) while the
others wait for its answer, and list themselves only if it does not come. An agent activated
since the stored listing is subscribed when its first update arrives, as any agent outside the
primed set is.

The presences that fill the shared state cache must be read *after* a process subscribed, or a
change between the read and the subscription would never reach the cache. A read that a
fleet-mate *started* after this process had subscribed is as good as its own: from then on this
process's own events keep the cache current (entries are replaced only by newer ones). So each
process subscribes inside :meth:`Roster.subscribing`, then calls :meth:`Roster.fill_once`: the
last process to finish subscribing reads for all, the others wait for it (bounded) and read
themselves only if it does not finish.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import redis

SUBSCRIBING_S = 30.0
TTL_S = 60.0
WAIT_S = 20.0
POLL_S = 0.1
GRACE_S = 1.0
"""How long a process that would read first waits for fleet-mates starting just after it."""


@dataclass(frozen=True, slots=True)
class FirstPage:
    """Page 1 of the org's active-agent listing
    (:meth:`~worker.genesys.client.GenesysClient.list_active_users`' pages), read by someone else
    (the start checks); ``more``: the listing has a page 2."""

    ids: list[str]
    more: bool


ListActive = Callable[[int, FirstPage | None], list[str]]
"""Lists up to the given number of active agents' ids, from page 2 on when given page 1
(raises what the client raises)."""


def roster_key(key: str, prefix: str = "presence") -> str:
    """Where the listing of OAuth client ``key`` of the org under ``prefix`` is kept."""
    return f"{prefix}:roster:{{{key}}}"


def seed_first_page(
    client: redis.Redis,
    key: str,
    page: FirstPage,
    *,
    ttl_s: float = TTL_S,
    prefix: str = "presence",
) -> bool:
    """Keep ``page`` for ``ttl_s`` so that the fleet's listing (:meth:`Roster.active`) starts at
    page 2 (or needs no call when ``page`` is the whole org). Never raises; False when Redis is
    away."""
    text = json.dumps({"ids": page.ids, "more": page.more})
    try:
        return bool(client.set(f"{roster_key(key, prefix)}:first", text, px=int(ttl_s * 1000)))
    except redis.RedisError:
        return False


# KEYS: snapshot, subscribing. ARGV: since (server ms), owner, ttl ms. 'skip': a read started
# after ``since`` (strictly: a read in the same millisecond may have begun before) has finished; 'wait': one is running, or a fleet-mate is still subscribing;
# 'list': none, so the caller reads (and is recorded as reading).
_DECIDE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local raw = redis.call('GET', KEYS[1])
if raw then
  local snap = cjson.decode(raw)
  if tonumber(snap.started) > tonumber(ARGV[1]) then
    if snap.done then return 'skip' end
    return 'wait'
  end
end
if redis.call('ZCARD', KEYS[2]) > 0 then return 'wait' end
if ARGV[4] ~= '1' then return 'free' end
redis.call('SET', KEYS[1], cjson.encode({started = now, done = false, by = ARGV[2]}), 'PX', ARGV[3])
return 'list'
"""

# KEYS: snapshot. ARGV: owner, 'done' or 'abandon'. Only the read's owner settles it.
_SETTLE = """
local raw = redis.call('GET', KEYS[1])
if not raw then return 0 end
local snap = cjson.decode(raw)
if snap.by ~= ARGV[1] then return 0 end
if ARGV[2] == 'done' then
  snap.done = true
  redis.call('SET', KEYS[1], cjson.encode(snap), 'KEEPTTL')
else
  redis.call('DEL', KEYS[1])
end
return 1
"""


class Roster:
    """The listing of one OAuth client (``key``) and its claims under ``{prefix}:roster:``
    (``prefix``: the org's key prefix)."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        key: str,
        ttl_s: float = TTL_S,
        wait_s: float = WAIT_S,
        grace_s: float = GRACE_S,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        prefix: str = "presence",
    ) -> None:
        self.redis = client
        self.key = roster_key(key, prefix)
        self.listing_key = f"{self.key}:listing"
        self.first_key = f"{self.key}:first"
        self.subscribing_key = f"{self.key}:subscribing"
        self.snapshot_key = f"{self.key}:snapshot"
        self.owner = uuid.uuid4().hex
        self.ttl_ms = int(ttl_s * 1000)
        self.wait_s = wait_s
        self.grace_s = grace_s
        self.sleep = sleep
        self.clock = clock
        self._decide = client.register_script(_DECIDE)
        self._settle = client.register_script(_SETTLE)

    def active(self, limit: int, list_active: ListActive) -> list[str]:
        """Up to ``limit`` active agents: the fleet's stored listing when it covers ``limit``,
        else ``list_active(limit, first)`` (``first``: a page 1 read by the start checks within
        ``ttl_s``, or None; that page alone when it covers ``limit``), stored for the others.
        Redis errors fall back to listing; errors of ``list_active`` propagate (nothing is
        stored)."""
        deadline = self.clock() + self.wait_s
        while True:
            stored = self._stored(limit)
            if stored is not None:
                return stored
            if self._claim():
                stored = self._stored(limit)  # stored just before the claim was free again
                if stored is not None:
                    self._release()
                    return stored
                break
            if self.clock() >= deadline:
                break
            self.sleep(POLL_S)
        first = self._first_page()
        try:
            if first is not None and (not first.more or len(first.ids) >= limit):
                ids = first.ids[:limit]
            else:
                ids = list_active(limit, first)
        except BaseException:
            self._release()
            raise
        self._store(limit, ids)
        return ids

    def _read_json(self, key: str) -> dict[str, Any] | None:
        """The JSON object stored at ``key``; None when absent, unreadable or Redis is away."""
        try:
            raw = self.redis.get(key)
        except redis.RedisError:
            return None
        if not isinstance(raw, bytes):
            return None
        try:
            data = json.loads(raw)
        except ValueError:
            return None
        return data if isinstance(data, dict) else None

    def _first_page(self) -> FirstPage | None:
        data = self._read_json(self.first_key)
        try:
            return (
                None
                if data is None
                else FirstPage([str(i) for i in data["ids"]], bool(data["more"]))
            )
        except (KeyError, TypeError):
            return None

    def _stored(self, limit: int) -> list[str] | None:
        data = self._read_json(self.key)
        if data is None:
            return None
        try:
            asked, ids = int(data["limit"]), [str(i) for i in data["ids"]]
        except (ValueError, KeyError, TypeError):
            return None
        # A listing for fewer agents covers this one only if it found fewer than it asked for.
        return ids[:limit] if asked >= limit or len(ids) < asked else None

    def _claim(self) -> bool:
        try:
            return bool(self.redis.set(self.listing_key, 1, nx=True, px=int(self.wait_s * 1000)))
        except redis.RedisError:
            return True  # nobody can coordinate: list

    def _release(self) -> None:
        with contextlib.suppress(redis.RedisError):
            self.redis.delete(self.listing_key)

    def _store(self, limit: int, ids: list[str]) -> None:
        try:
            with self.redis.pipeline() as pipe:
                pipe.set(self.key, json.dumps({"limit": limit, "ids": ids}), px=self.ttl_ms)
                pipe.delete(self.listing_key)
                pipe.execute()
        except redis.RedisError:
            pass

    # -- the presence read ------------------------------------------------------------------------
    @contextlib.contextmanager
    def subscribing(self) -> Iterator[None]:
        """Around this process's subscribing: fleet-mates hold their read until it is done."""
        with contextlib.suppress(redis.RedisError):
            expiry = self._server_ms() + int(SUBSCRIBING_S * 1000)
            with self.redis.pipeline() as pipe:
                pipe.zadd(self.subscribing_key, {self.owner: expiry})
                pipe.pexpire(self.subscribing_key, int(SUBSCRIBING_S * 2000))
                pipe.execute()
        try:
            yield
        finally:
            with contextlib.suppress(redis.RedisError):
                self.redis.zrem(self.subscribing_key, self.owner)

    def fill_once(self, fill: Callable[[], None]) -> bool:
        """Call right after :meth:`subscribing`: run ``fill`` (read the presences into the shared
        cache) unless a fleet-mate's read started after this process had subscribed finishes
        within the bound; a process that would read first gives fleet-mates starting just after
        it ``grace_s`` to join. Returns whether this process read. Errors of ``fill`` propagate (its
        claim is given up first); Redis errors mean reading."""
        try:
            since = self._server_ms()
        except redis.RedisError:
            fill()
            return True
        started = self.clock()
        deadline = started + self.wait_s
        while self.clock() < deadline:
            claim = "1" if self.clock() >= started + self.grace_s else "0"
            try:
                verdict = self._decide(
                    keys=[self.snapshot_key, self.subscribing_key],
                    args=[since, self.owner, self.ttl_ms, claim],
                )
            except redis.RedisError:
                break
            verdict = verdict.decode() if isinstance(verdict, bytes) else str(verdict)
            if verdict == "skip":
                return False
            if verdict == "list":
                self._read(fill)
                return True
            self.sleep(POLL_S)
        fill()
        return True

    def _read(self, fill: Callable[[], None]) -> None:
        try:
            fill()
        except BaseException:
            self._settle_read("abandon")
            raise
        self._settle_read("done")

    def _settle_read(self, how: str) -> None:
        with contextlib.suppress(redis.RedisError):
            self._settle(keys=[self.snapshot_key], args=[self.owner, how])

    def _server_ms(self) -> int:
        seconds, micros = self.redis.time()
        return int(seconds) * 1000 + int(micros) // 1000
