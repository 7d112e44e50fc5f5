"""A Redis client that keeps one pooled connection per thread.

redis-py checks a connection out of its pool for every command and back in after it; the
checkout also polls the socket for stray data (a system call that releases the GIL). In a
worker whose threads each make several Redis round trips per update, that bookkeeping cost
about a third of the client's own CPU per command in a profile. Here each thread takes one
connection from the pool on its first command and keeps it until the thread ends; pipelines
still check theirs out of the pool as before.
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Any

import redis


class _Bound:
    """One thread's connection: given back to the pool when the thread's locals are dropped
    (the thread ended), unless the process forked since (the parent's, never used again)."""

    __slots__ = ("connection", "pid", "pool")

    def __init__(self, pool: redis.ConnectionPool) -> None:
        self.pool = pool
        self.pid = os.getpid()
        self.connection: Any = pool.get_connection()

    def __del__(self) -> None:
        if self.pid == os.getpid():
            # At interpreter shutdown or on a closed pool there is nothing to give back.
            with contextlib.suppress(Exception):
                self.pool.release(self.connection)


class ThreadBoundRedis(redis.Redis):
    """``redis.Redis`` whose commands run on the calling thread's own connection (taken from
    the client's pool on first use, kept for the thread's life; a forked child takes its own).
    Thread-safe as ``redis.Redis`` is; ``close()`` gives back the calling thread's connection."""

    _local: threading.local

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("single_connection_client"):
            raise ValueError("a thread-bound client is not a single-connection client")
        self._local = threading.local()
        super().__init__(*args, **kwargs)

    @property
    def connection(self) -> Any:
        """The calling thread's connection (redis-py's ``Redis`` reads it for every command)."""
        local = getattr(self, "_local", None)
        if local is None:  # inside redis.Redis.__init__, before the pool exists
            return None
        bound: _Bound | None = getattr(local, "bound", None)
        if bound is None or bound.pid != os.getpid():
            bound = local.bound = _Bound(self.connection_pool)
        return bound.connection

    @connection.setter
    def connection(self, value: Any) -> None:
        local: Any = getattr(self, "_local", None)
        bound = getattr(local, "bound", None) if value is None else None
        if bound is not None:  # close(): it gives the connection back itself
            bound.pid = -1
            del local.bound
