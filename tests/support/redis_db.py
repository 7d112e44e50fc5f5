"""A Redis database number of this test run's own on a shared server.

Other runs, other suites and other programs keep data on the same server. A run claims a
database that is empty (or was left by an earlier test run) with a lease key set atomically in
the same step, empties only that database, and gives it back at the end; a run that crashed
leaves its lease to expire and its database reusable. ``REDIS_URL`` names the one database to
claim; without it any free number is taken.
"""

from __future__ import annotations

import os
import uuid
from collections import Counter
from collections.abc import Callable
from urllib.parse import urlsplit

import redis

LEASE_KEY = "presence-tests:lease"  # who holds the database now (expires)
TAG_KEY = "presence-tests:database"  # the database holds only test data (never expires)
LEASE_S = 6 * 3600
SKIPPED = (0, 15)  # the default database and the demo's

# KEYS[1]=lease KEYS[2]=tag ARGV[1]=owner ARGV[2]=lease seconds. 1 = claimed.
_CLAIM = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
if redis.call('DBSIZE') > 0 and redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
redis.call('FLUSHDB')
redis.call('SET', KEYS[2], '1')
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return 1
"""
# Empties the database unless another run holds it; keeps (and renews) the lease. 1 = emptied.
_EMPTY = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('FLUSHDB')
redis.call('SET', KEYS[2], '1')
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return 1
"""


def split_database(url: str) -> tuple[str, int]:
    """``redis://host:port/9`` → (``redis://host:port``, 9); no number means database 0."""
    parts = urlsplit(url)
    number = parts.path.strip("/")
    return parts._replace(path="", query="", fragment="").geturl(), int(number or 0)


class NoFreeDatabase(RuntimeError):
    """Every database of the server holds someone's data or another run's lease."""


class ClaimedDatabase:
    """One claimed database: ``url``; :meth:`empty` before each test, :meth:`release` at the
    end."""

    def __init__(self, base_url: str, number: int, owner: str) -> None:
        self.url = f"{base_url}/{number}"
        self.number = number
        self.owner = owner

    def empty(self) -> None:
        """Delete everything in the database (only while this run holds it)."""
        with redis.Redis.from_url(self.url) as client:
            if not client.eval(_EMPTY, 2, LEASE_KEY, TAG_KEY, self.owner, LEASE_S):
                raise RuntimeError(f"{self.url} is no longer this test run's database")

    def release(self) -> None:
        """Empty the database and drop the lease (a no-op once another run holds it)."""
        with redis.Redis.from_url(self.url) as client:
            if client.get(LEASE_KEY) == self.owner.encode():
                client.flushdb()


def _try_claim(base_url: str, number: int, owner: str) -> bool:
    with redis.Redis.from_url(f"{base_url}/{number}") as client:
        return bool(client.eval(_CLAIM, 2, LEASE_KEY, TAG_KEY, owner, LEASE_S))


def claim_given_database(base_url: str, number: int) -> ClaimedDatabase:
    """Claim database ``number``; ``NoFreeDatabase`` when it holds other data or another run's
    lease (it is never emptied then)."""
    owner = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    if _try_claim(base_url, number, owner):
        return ClaimedDatabase(base_url, number, owner)
    with redis.Redis.from_url(f"{base_url}/{number}") as client:
        leased = client.exists(LEASE_KEY)
    why = "another test run holds it" if leased else "it holds data that is not the tests'"
    raise NoFreeDatabase(
        f"REDIS_URL names database {number}, but {why}: point REDIS_URL at an empty database "
        "(the tests empty it before each test), or unset it to let them pick one"
    )


def claim_database(base_url: str) -> ClaimedDatabase:
    """Claim a free database number on the server at ``base_url`` (no database number)."""
    owner = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    with redis.Redis.from_url(f"{base_url}/0") as client:
        try:
            count = int(client.config_get("databases").get("databases", 16))
        except redis.ResponseError:  # CONFIG may be disabled: assume the default
            count = 16
    for number in range(count):
        if number in SKIPPED:
            continue
        if _try_claim(base_url, number, owner):
            return ClaimedDatabase(base_url, number, owner)
    raise NoFreeDatabase(
        f"no free database on {base_url}: every one holds data or another test run's lease; "
        "set REDIS_URL to a server and database the tests may empty"
    )


_SET_UP = frozenset({"hello", "select", "client", "auth", "ping"})


def commands_during(client: redis.Redis, action: Callable[[], object]) -> dict[str, int]:
    """The commands run on ``client``'s database (by any client, inside scripts too) while
    ``action`` ran, by lower-case name; a new connection's set-up (``HELLO``, ``SELECT``…) is
    not counted. Read with ``MONITOR``: other databases on the same server do not count."""
    db = int(client.connection_pool.connection_kwargs.get("db", 0))
    marker = f"commands-during-{uuid.uuid4().hex}"
    counts: Counter[str] = Counter()
    with client.monitor() as monitor:
        action()
        client.echo(marker)
        while True:
            seen = monitor.next_command()
            if marker in seen["command"]:
                return dict(counts)
            name = seen["command"].split(" ", 1)[0].lower()
            if int(seen["db"]) == db and name not in _SET_UP:
                counts[name] += 1
