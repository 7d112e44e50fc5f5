"""Per-agent ordering: the newest request wins, one change at a time per agent."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import redis

from worker.broker import holders

# KEYS[1] newest marker. ARGV: ts_us, request_id, ttl_s. Keeps the max of (ts, id); returns it.
# The marker is written with the old one read back (one command when this request is the newest,
# as it mostly is); an older request puts the newer marker back, inside the same script.
_REGISTER = """
local mine = string.format('%020d', tonumber(ARGV[1])) .. '|' .. ARGV[2]
local cur = redis.call('SET', KEYS[1], mine, 'EX', tonumber(ARGV[3]), 'GET')
if cur and cur > mine then
  redis.call('SET', KEYS[1], cur, 'EX', tonumber(ARGV[3]))
  return cur
end
return mine
"""
# KEYS[1] newest marker, KEYS[2] lock, KEYS[3…] keys to read once the lock is taken. ARGV:
# ts_us, request_id, ttl_s, owner, lock_ttl_ms. :data:`_REGISTER` (the newest marker kept), then
# the lock taken if free: returns {taken, newest, holder, values read} so the caller learns in
# one command whether it holds the lock, what is newest and, when not, who holds it.
_REGISTER_AND_LOCK = """
local mine = string.format('%020d', tonumber(ARGV[1])) .. '|' .. ARGV[2]
local cur = redis.call('SET', KEYS[1], mine, 'EX', tonumber(ARGV[3]), 'GET')
if cur and cur > mine then
  redis.call('SET', KEYS[1], cur, 'EX', tonumber(ARGV[3]))
else
  cur = mine
end
local taken = redis.call('SET', KEYS[2], ARGV[4], 'NX', 'PX', tonumber(ARGV[5]))
if taken then
  if #KEYS > 2 then return {1, cur, false, redis.call('MGET', unpack(KEYS, 3))} end
  return {1, cur, false}
end
return {0, cur, redis.call('GET', KEYS[2])}
"""
# KEYS[1] lock. ARGV: the holder seen, the new owner, lock_ttl_ms. Take the lock over only if it
# is still the holder seen.
_TAKE_OVER = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('SET', KEYS[1], ARGV[2], 'PX', tonumber(ARGV[3])) and 1 or 0
end
return 0
"""
_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def _newer(newest: bytes | str, requested_at_us: int, request_id: str) -> bool:
    """Whether the stored newest marker belongs to another, newer request."""
    current = newest.decode() if isinstance(newest, bytes) else str(newest)
    if current.partition("|")[2] == request_id:
        return False
    return current > AgentOrdering._marker(requested_at_us, request_id)


class AgentBusy(Exception):
    """Another worker holds the agent's lock beyond the wait allowed."""


class AgentOrdering:
    """Each agent's newest marker and lock under ``{prefix}:agent:<user id>:…`` (``prefix``: the
    org's key prefix)."""

    def __init__(
        self, client: redis.Redis, *, marker_ttl_s: int = 7 * 86_400, prefix: str = "presence"
    ) -> None:
        self.redis = client
        self.marker_ttl_s = marker_ttl_s
        self.prefix = prefix
        self._register = client.register_script(_REGISTER)
        self._unlock = client.register_script(_UNLOCK)
        self._register_and_lock = client.register_script(_REGISTER_AND_LOCK)
        self._take_over = client.register_script(_TAKE_OVER)

    def newest_key(self, user_id: str) -> str:
        return f"{self.prefix}:agent:{user_id}:newest"

    def lock_key(self, user_id: str) -> str:
        return f"{self.prefix}:agent:{user_id}:lock"

    @staticmethod
    def _marker(requested_at_us: int, request_id: str) -> str:
        return f"{requested_at_us:020d}|{request_id}"

    def register(self, user_id: str, requested_at_us: int, request_id: str) -> None:
        """Record that this request exists; the newest registered one stays the marker."""
        self._register(
            keys=[self.newest_key(user_id)],
            args=[requested_at_us, request_id, self.marker_ttl_s],
        )

    def register_many(self, requests: list[tuple[str, int, str]]) -> None:
        """:meth:`register` for many (user_id, requested_at_us, request_id) in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        for user_id, requested_at_us, request_id in requests:
            self._register(
                keys=[self.newest_key(user_id)],
                args=[requested_at_us, request_id, self.marker_ttl_s],
                client=pipe,
            )
        pipe.execute()

    def superseded_among(self, requests: list[tuple[str, int, str]]) -> set[str]:
        """The request ids among (user_id, requested_at_us, request_id) that
        :meth:`is_superseded` would say True for, in one round trip."""
        if not requests:
            return set()
        markers = self.redis.mget([self.newest_key(u) for u, _, _ in requests])
        out = set()
        for (_, requested_at_us, request_id), newest in zip(requests, markers, strict=True):
            if newest is not None and _newer(newest, requested_at_us, request_id):
                out.add(request_id)
        return out

    def is_superseded(self, user_id: str, requested_at_us: int, request_id: str) -> bool:
        """True when a newer request for the agent has been registered (a copy of this same
        request, registered with a later timestamp, does not count)."""
        newest = self.redis.get(self.newest_key(user_id))
        return newest is not None and _newer(newest, requested_at_us, request_id)

    @contextmanager
    def lock(self, user_id: str, *, ttl_s: float, wait_s: float) -> Iterator[None]:
        """Hold the agent's lock; raises AgentBusy when not acquired within ``wait_s``."""
        key = self.lock_key(user_id)
        owner = uuid.uuid4().hex
        deadline = time.monotonic() + wait_s
        while not self.redis.set(key, owner, nx=True, px=int(ttl_s * 1000)):
            if time.monotonic() >= deadline:
                raise AgentBusy(f"agent {user_id} is being updated by another worker")
            time.sleep(0.02)
        try:
            yield
        finally:
            self._unlock(keys=[key], args=[owner])

    @contextmanager
    def register_and_lock(
        self, user_id: str, requested_at_us: int, request_id: str, *, ttl_s: float, wait_s: float
    ) -> Iterator[bool]:
        """:meth:`register`, then hold the agent's lock (as :meth:`lock`) and yield whether the
        request is superseded, read once the lock is held (:meth:`is_superseded`). The
        registration, each lock attempt and that read are one script call."""
        with self.register_lock_and_read(
            user_id, requested_at_us, request_id, ttl_s=ttl_s, wait_s=wait_s
        ) as (superseded, _):
            yield superseded

    @contextmanager
    def register_lock_and_read(
        self,
        user_id: str,
        requested_at_us: int,
        request_id: str,
        *,
        ttl_s: float,
        wait_s: float,
        read: Sequence[str] = (),
    ) -> Iterator[tuple[bool, list[bytes | str | None]]]:
        """:meth:`register_and_lock`, yielding also the values of the keys ``read`` (in order,
        None when absent), read in the same script once the lock is held: a single update's
        first reads cost no round trip of their own. Raises AgentBusy as :meth:`lock`.

        The lock names its request and process: a redelivery of a request whose worker died
        holding the lock (its liveness key, :mod:`worker.broker.holders`, expired) takes it over
        at once, before any other request's change can reach the agent, so it reads back what
        its earlier delivery did and never mistakes its own applied change for a newer
        request's. A delivery of the same request by a live process waits like any other."""
        key = self.lock_key(user_id)
        newest_key = self.newest_key(user_id)
        owner = f"{request_id}|{holders.PROCESS_ID}"
        deadline = time.monotonic() + wait_s
        args: list[str | int] = [
            requested_at_us,
            request_id,
            self.marker_ttl_s,
            owner,
            int(ttl_s * 1000),
        ]
        # Registering again while waiting is harmless: the marker keeps the max.
        while True:
            taken, newest, holder, *read_back = self._register_and_lock(
                keys=[newest_key, key, *read], args=args
            )
            if int(taken):
                values: list[bytes | str | None] = list(read_back[0]) if read else []
                break
            if self._dead_delivery_taken_over(key, holder, request_id, owner, ttl_s):
                values = list(self.redis.mget(read)) if read else []
                break
            if time.monotonic() >= deadline:
                raise AgentBusy(f"agent {user_id} is being updated by another worker")
            time.sleep(0.02)
        try:
            yield newest is not None and _newer(newest, requested_at_us, request_id), values
        finally:
            self._unlock(keys=[key], args=[owner])

    def _dead_delivery_taken_over(
        self, key: str, holder: bytes | str | None, request_id: str, owner: str, ttl_s: float
    ) -> bool:
        """Take the lock over when ``holder`` is an earlier delivery of this same request by a
        process that is no longer alive; whether it was taken."""
        if holder is None:
            return False
        seen = holder.decode() if isinstance(holder, bytes) else str(holder)
        held_for, _, process = seen.rpartition("|")
        if held_for != request_id or seen == owner:
            return False
        if self.redis.exists(holders.ALIVE_PREFIX + process):
            return False
        return bool(self._take_over(keys=[key], args=[seen, owner, int(ttl_s * 1000)]))

    def try_lock_many(self, user_ids: list[str], *, ttl_s: float) -> dict[str, str]:
        """Take the free locks among ``user_ids`` without waiting (one round trip); returns
        {user_id: owner} for those taken. Release them with :meth:`unlock_many`."""
        owners = {u: uuid.uuid4().hex for u in dict.fromkeys(user_ids)}
        pipe = self.redis.pipeline(transaction=False)
        for user_id, owner in owners.items():
            pipe.set(self.lock_key(user_id), owner, nx=True, px=int(ttl_s * 1000))
        taken = pipe.execute()
        return {u: o for (u, o), ok in zip(owners.items(), taken, strict=True) if ok}

    def unlock_many(self, owners: dict[str, str]) -> None:
        """Release locks taken by :meth:`try_lock_many` (each only if still ours), in one
        round trip."""
        if not owners:
            return
        pipe = self.redis.pipeline(transaction=False)
        for user_id, owner in owners.items():
            self._unlock(keys=[self.lock_key(user_id)], args=[owner], client=pipe)
        pipe.execute()
