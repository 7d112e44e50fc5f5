"""The org's Genesys request budget, shared by every worker process through Redis.

Algorithm: a sliding-window log on the Redis server clock, the same shape as the platform's own
limit (N requests per rolling 60 s). Each call reserves a slot stamped *provisionally in the
future* (now + the call's timeout) and, when the response arrives, is re-stamped with the
completion time. A request reaches the platform no later than its completion, so the platform's
window never holds more requests than ours: no 429 from our own traffic, and — unlike a GCRA or
token bucket that must keep headroom for network jitter — the budget is used to the last request.

One script per call: the grant counts the window with ``ZCOUNT`` (entries older than the window
do not count, whether trimmed yet or not; the log is trimmed on every :data:`TRIM_EVERY`-th
grant of a process and before any refusal) and returns the server time it was stamped at; the
re-stamp is that time plus the call's duration measured from *before* the grant was asked for
(so never earlier than the completion on the server clock). Re-stamps ride with the process's
next grant, in the grant's own ``ZADD`` (or are written by themselves, ``ZADD XX``, once
:data:`RESTAMP_DELAY_S` has passed without one): until then the entry keeps its later,
provisional stamp, which only ever counts it longer, and the window holds it until its
completion plus a window either way, the delay being far under a window. The log keeps no TTL:
it holds at most ``limit`` entries in the window plus those that left it since the last trim (and
a cool-down's, below).

A grant can also write keys (:func:`granting_with`): a write's mark is then stored exactly when
its call is let through, with no round trip of its own.

A 429 that happens anyway (another tool on the same token, a platform-side limit) sets a shared
cool-down from ``Retry-After`` that every process honours before its next reservation: ``limit``
entries that leave the window when the cool-down ends, so the grant needs no read of its own
for it (a cool-down only ever adds entries, so a shorter one never shortens a longer one). A
budget above :data:`COOL_DOWN_FILL_MAX` per window is not filled: its grants read the
cool-down key instead.

A waiting line keeps a backlog from stampeding: a refused caller gets a *ticket*, the time its
own slot frees given the waiters already ahead of it (waiter ``w`` is told the ``w mod limit``-th
slot to free plus ``w div limit`` windows), kept in a ZSET beside the log under the caller's
waiter id (:func:`waiting_as`; one per :meth:`SharedRateLimiter.acquire` otherwise). Told its
ticket, a re-scheduled task comes back once, when its slot frees, instead of every waiter coming
back at the next slot together. A caller asking again before its ticket keeps it and is not
counted again. One whose ticket passed and who is still refused (a fresh caller took the slot,
or the line runs late: tickets further than a window away assume each call completes as it is
granted) joins a second, short line at the front, so it is not sent to the back of a long
backlog. A ticket counts a call still in flight as completing now (its provisional stamp would
leave its slot idle until the timeout). Only refusals touch the lines (both expire once their
last ticket is a window old): the grant path is unchanged.

Celery's ``rate_limit`` is per worker instance and is deliberately not used.
"""

from __future__ import annotations

import itertools
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import redis

from worker.names import DEFAULT_ORG
from worker.observability import metrics

log = logging.getLogger(__name__)
WINDOW_MS = 60_000
RESTAMP_DELAY_S = 0.25
"""A completed call's re-stamp waits at most this long for the process's next grant to carry
it."""
RESTAMPS_PER_WRITE = 500
"""The most re-stamps one grant or flush writes (the rest wait for the next)."""
TRIM_EVERY = 16
"""A process trims the log of entries older than the window on every this many grants."""
COOL_DOWN_FILL_MAX = 10_000
"""The largest budget a cool-down fills the window for (one entry per request of the budget)."""

# KEYS[1] log zset, KEYS[2] cool-down key, KEYS[3] the line (zset: waiter id -> ticket ms),
# KEYS[4] the front line (zset: waiter id -> ticket ms, for waiters whose ticket passed),
# KEYS[5…] keys to set with a grant. ARGV: limit, provisional_ms, member, window_ms, trim (1: drop
# the entries older than the window first), read cool-down (1: a budget too large for a
# cool-down to fill), waiter id, probe (1: reserve nothing, only say whether a slot is free), n
# re-stamps, then n (stamp, member) pairs, then a (value, ttl s) pair per key to set. Returns
# {1, 0, in_window, now_ms} when reserved (or free, for a probe), {0, wait_ms, in_window} when
# the caller must wait until its ticket ({0, wait_ms} during a cool-down read from its key).
# Re-stamps move entries from a future stamp to a past one inside the window: they change no
# count, so they join the grant's ZADD (an entry trimmed meanwhile would come back outside the
# window, uncounted, and be trimmed again); a refusal writes them with XX before its ticket.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local restamps = tonumber(ARGV[9])
local function restamp()
  if restamps > 0 then
    redis.call('ZADD', KEYS[1], 'XX', unpack(ARGV, 10, 9 + 2 * restamps))
    restamps = 0
  end
end
if ARGV[6] == '1' then
  local cool = tonumber(redis.call('GET', KEYS[2]) or '0')
  if cool > now then
    restamp()
    return {0, cool - now}
  end
end
local window = tonumber(ARGV[4])
if ARGV[5] == '1' then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
end
local limit = tonumber(ARGV[1])
local count = redis.call('ZCOUNT', KEYS[1], '(' .. (now - window), '+inf')
if count < limit then
  if ARGV[8] == '1' then
    restamp()
    return {1, 0, count, now}
  end
  local stamp = now + tonumber(ARGV[2])
  if restamps > 0 then
    redis.call('ZADD', KEYS[1], stamp, ARGV[3], unpack(ARGV, 10, 9 + 2 * restamps))
  else
    redis.call('ZADD', KEYS[1], stamp, ARGV[3])
  end
  local at = 10 + 2 * restamps
  for i = 5, #KEYS do
    redis.call('SET', KEYS[i], ARGV[at], 'EX', ARGV[at + 1])
    at = at + 2
  end
  return {1, 0, count + 1, now}
end
restamp()
if ARGV[5] ~= '1' then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
end
local held = redis.call('ZSCORE', KEYS[3], ARGV[7])
held = held and tonumber(held)
if held and held > now then return {0, held - now, count} end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - window)
local line = KEYS[3]
if held and held > now - window then
  line = KEYS[4]
  redis.call('ZREMRANGEBYSCORE', line, '-inf', now)
end
local ahead = redis.call('ZCOUNT', line, '(' .. now, '+inf')
local rank = count - limit + ahead % limit
local frees = redis.call('ZRANGE', KEYS[1], rank, rank, 'WITHSCORES')
local leaves = tonumber(frees[2])
if leaves - now > tonumber(ARGV[2]) / 2 and string.sub(frees[1], 1, 10) ~= 'cool-down:' then
  leaves = now  -- a call in flight, stamped provisionally: it is expected to complete soon
end
local ticket = math.max(now + 1, leaves + window * (1 + math.floor(ahead / limit)))
local function hold(key)
  redis.call('ZADD', key, ticket, ARGV[7])
  if redis.call('PTTL', key) < ticket - now + window then
    redis.call('PEXPIRE', key, ticket - now + window)
  end
end
hold(KEYS[3])
if line ~= KEYS[3] then hold(line) end
return {0, ticket - now, count}
"""

# KEYS[1] log zset, KEYS[2] the cool-down key (read by grants of a budget too large to fill, and
# by earlier releases). ARGV: seconds, entries to fill (the limit, or 0), window_ms. Fills the
# window until the cool-down ends: entries stamped to leave it then (the same entries when
# several processes see the same Retry-After at once).
_COOL_DOWN = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local untilms = now + tonumber(ARGV[1]) * 1000
local stamp = untilms - tonumber(ARGV[3])
local batch = {}
for i = 1, tonumber(ARGV[2]) do
  batch[#batch + 1] = stamp
  batch[#batch + 1] = 'cool-down:' .. untilms .. ':' .. i
  if #batch >= 2000 then
    redis.call('ZADD', KEYS[1], unpack(batch))
    batch = {}
  end
end
if #batch > 0 then redis.call('ZADD', KEYS[1], unpack(batch)) end
local cur = tonumber(redis.call('GET', KEYS[2]) or '0')
if untilms > cur then
  redis.call('SET', KEYS[2], untilms, 'PX', tonumber(ARGV[1]) * 1000 + 1000)
end
return untilms
"""


class BudgetExhausted(Exception):
    """No slot within the caller's inline wait: re-schedule after ``retry_in_s`` (the caller's
    ticket). ``inline_wait_s`` is the inline wait the caller allowed (infinite when unknown)."""

    def __init__(self, retry_in_s: float, inline_wait_s: float = math.inf) -> None:
        super().__init__(f"Genesys request budget exhausted; next slot in {retry_in_s:.1f} s")
        self.retry_in_s = retry_in_s
        self.inline_wait_s = inline_wait_s


_waiter: ContextVar[str | None] = ContextVar("limiter_waiter", default=None)
_grant_writes: ContextVar[dict[str, tuple[str, int]] | None] = ContextVar(
    "limiter_grant_writes", default=None
)


@contextmanager
def granting_with(values: dict[str, tuple[str, int]]) -> Iterator[None]:
    """Every grant of :meth:`SharedRateLimiter.acquire` inside also sets each key to its value
    with its expiry (seconds), in the grant's script: stored exactly when a call is let
    through, never for a refused one."""
    token = _grant_writes.set(values or None)
    try:
        yield
    finally:
        _grant_writes.reset(token)


@contextmanager
def waiting_as(waiter_id: str) -> Iterator[None]:
    """Every :meth:`SharedRateLimiter.acquire` inside waits in line as ``waiter_id`` (stable
    across a task's re-schedules, e.g. its request id), so that coming back keeps its ticket."""
    token = _waiter.set(waiter_id)
    try:
        yield
    finally:
        _waiter.reset(token)


@dataclass(frozen=True, slots=True)
class Reservation:
    """A granted slot: ``granted_ms`` is the server time of the grant, ``asked_at`` the local
    monotonic time just before the grant was asked for (the re-stamp counts from there)."""

    member: str
    waited_s: float
    granted_ms: int = 0
    asked_at: float = 0.0


class SharedRateLimiter:
    """Reserve before every Genesys call, release after it. Thread-safe; one per process is enough.

    ``limit_per_minute`` is the whole budget of one OAuth client across all processes and
    machines that share ``redis`` (per ``window_s``, 60 s like the platform; shorter in tests).
    Keys sit under ``{prefix}:limiter:`` (``prefix``: the org's key prefix), in one hash slot
    (``{…}``) for Redis Cluster.
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        key: str,
        limit_per_minute: int,
        provisional_s: float,
        window_s: float = WINDOW_MS / 1000,
        sleep: Callable[[float], None] = time.sleep,
        prefix: str = "presence",
        org: str = DEFAULT_ORG,
    ) -> None:
        self.org = org  # metrics labels
        self.redis = client
        self.limit = limit_per_minute
        self.window_ms = int(window_s * 1000)
        self.provisional_ms = int(provisional_s * 1000)
        self.log_key = f"{prefix}:limiter:{{{key}}}:log"
        self.cooldown_key = f"{prefix}:limiter:{{{key}}}:cooldown"
        self.line_key = f"{prefix}:limiter:{{{key}}}:line"
        self.front_key = f"{prefix}:limiter:{{{key}}}:front"
        self.sleep = sleep
        self._acquire = client.register_script(_ACQUIRE)
        self._attempts = itertools.count(1)
        self._read_cool = 0 if limit_per_minute <= COOL_DOWN_FILL_MAX else 1
        self._cool_down = client.register_script(_COOL_DOWN)
        self._restamps: dict[str, int] = {}  # member -> completion ms, for the next grant
        self._restamps_lock = threading.Lock()
        self._flush_timer: threading.Timer | None = None
        # Until when (monotonic) this process last saw the budget exhausted: while it may still
        # be, callers wait in line before doing any work (:meth:`wait_in_line`).
        self._exhausted_until = 0.0
        # Told when (monotonic) the next slot a newcomer could get frees, at each refusal: a
        # fleet of several orgs pauses this org's queue until then (worker.broker.pauses).
        self.on_exhausted: Callable[[float], None] | None = None

    def try_acquire(self, waiter_id: str | None = None) -> tuple[str | None, float]:
        """One attempt: (member, 0) when reserved, (None, seconds until the ticket) otherwise
        (waiting in line as ``waiter_id``, else as the current :func:`waiting_as`, else alone)."""
        waiter = waiter_id or _waiter.get() or uuid.uuid4().hex
        granted = self._attempt(waiter)
        return (granted.member, 0.0) if isinstance(granted, Reservation) else (None, granted)

    def _attempt(
        self, waiter: str, started: float | None = None, *, probe: bool = False
    ) -> Reservation | float:
        """One attempt: the reservation (waited since ``started``; for a ``probe``, a free slot
        that is not reserved), or the seconds to wait."""
        member = uuid.uuid4().hex
        trim = 1 if next(self._attempts) % TRIM_EVERY == 0 else 0
        writes = None if probe else _grant_writes.get()
        restamps = self._take_restamps()
        args: list[str | int] = [
            self.limit,
            self.provisional_ms,
            member,
            self.window_ms,
            trim,
            self._read_cool,
            waiter,
            1 if probe else 0,
            len(restamps),
        ]
        for restamped, ms in restamps.items():
            args += [ms, restamped]
        for value, ttl_s in (writes or {}).values():
            args += [value, ttl_s]
        keys = [self.log_key, self.cooldown_key, self.line_key, self.front_key, *(writes or ())]
        asked_at = time.monotonic()
        try:
            granted, wait_ms, *rest = self._acquire(keys=keys, args=args)
        except BaseException:
            self._keep_restamps(restamps)
            raise
        if rest:  # absent during a cool-down read from its key
            metrics.observe_budget(int(rest[0]), self.limit, org=self.org)
        if not int(granted):
            until = asked_at + int(wait_ms) / 1000.0
            self._exhausted_until = max(self._exhausted_until, until)
            if self.on_exhausted is not None:
                self.on_exhausted(until)
            return int(wait_ms) / 1000.0
        waited_s = time.monotonic() - started if started is not None else 0.0
        return Reservation(member, waited_s, int(rest[1]), asked_at)

    def acquire(self, max_wait_s: float) -> Reservation:
        """Reserve a slot, sleeping while the wait is short.

        Raises BudgetExhausted (with the ticket and ``max_wait_s``) when the caller's ticket is
        further away than ``max_wait_s`` (counted from the first attempt), so that a task can
        re-schedule itself instead of blocking. Waits in line as the current :func:`waiting_as`
        id, else as one id for this call.
        """
        return self._wait(max_wait_s, probe=False)

    def wait_in_line(self, max_wait_s: float) -> None:
        """Before a caller does the work that leads to its call: while this process saw the
        budget exhausted lately, wait in line as :meth:`acquire` does (returning once a slot is
        free, without reserving it; raising BudgetExhausted beyond ``max_wait_s``), so that a
        request over the budget is re-scheduled for its slot before it costs anything else.
        Otherwise returns at once, with no Redis command."""
        if time.monotonic() < self._exhausted_until:
            self._wait(max_wait_s, probe=True)

    def _wait(self, max_wait_s: float, *, probe: bool) -> Reservation:
        waiter = _waiter.get() or uuid.uuid4().hex
        started = time.monotonic()
        while True:
            granted = self._attempt(waiter, started, probe=probe)
            if isinstance(granted, Reservation):
                if not probe:
                    metrics.observe_limiter_wait(granted.waited_s, org=self.org)
                return granted
            wait_s = granted
            waited = time.monotonic() - started
            if waited + wait_s > max_wait_s:
                metrics.observe_budget_exhausted(org=self.org)
                raise BudgetExhausted(wait_s, max_wait_s)
            # No jitter: every waiter sleeps until its own ticket, not a shared next slot.
            self.sleep(wait_s)

    def release(self, reservation: Reservation) -> None:
        """Stamp the reservation with the completion time (the call has been answered): the
        grant's server time plus the time since the grant was asked for, rounded up. Written
        with this process's next grant, or by :meth:`flush` within :data:`RESTAMP_DELAY_S`;
        never raises."""
        elapsed_ms = math.ceil((time.monotonic() - reservation.asked_at) * 1000)
        with self._restamps_lock:
            self._restamps[reservation.member] = reservation.granted_ms + elapsed_ms
            if self._flush_timer is None:
                self._flush_timer = threading.Timer(RESTAMP_DELAY_S, self._flush_later)
                self._flush_timer.daemon = True
                self._flush_timer.start()

    def flush(self) -> None:
        """Write the re-stamps no grant has carried yet (``ZADD XX``: an entry trimmed
        meanwhile stays away). Raises what Redis raises (they are kept for the next grant)."""
        restamps = self._take_restamps()
        if not restamps:
            return
        try:
            self.redis.zadd(self.log_key, restamps, xx=True)
        except BaseException:
            self._keep_restamps(restamps)
            raise

    def _flush_later(self) -> None:
        with self._restamps_lock:
            self._flush_timer = None
        try:
            self.flush()
        except redis.RedisError as exc:
            log.warning("re-stamping completed calls failed (kept for the next grant): %s", exc)

    def _take_restamps(self) -> dict[str, int]:
        """Up to :data:`RESTAMPS_PER_WRITE` pending re-stamps, taken out of the pending ones."""
        with self._restamps_lock:
            if len(self._restamps) <= RESTAMPS_PER_WRITE:
                taken, self._restamps = self._restamps, {}
                return taken
            members = list(itertools.islice(self._restamps, RESTAMPS_PER_WRITE))
            return {m: self._restamps.pop(m) for m in members}

    def _keep_restamps(self, restamps: dict[str, int]) -> None:
        """Put back re-stamps a failed write did not store (a newer one of a member wins)."""
        with self._restamps_lock:
            self._restamps = {**restamps, **self._restamps}

    def cool_down(self, seconds: float) -> None:
        """Pause every process for ``seconds`` (from a 429's Retry-After)."""
        self._cool_down(
            keys=[self.log_key, self.cooldown_key],
            args=[
                max(1, int(seconds + 0.999)),
                0 if self._read_cool else self.limit,
                self.window_ms,
            ],
        )

    def in_window(self) -> int:
        """Requests counted in the current window (in flight included; a cool-down counts as
        the whole limit)."""
        seconds, micros = self.redis.time()
        now_ms = seconds * 1000 + micros // 1000
        return int(self.redis.zcount(self.log_key, now_ms - self.window_ms, "+inf"))
