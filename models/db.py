"""Engines and sessions, created per process (after fork) and on first use."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

_lock = threading.Lock()
_engines: dict[tuple[int, str], Engine] = {}
_factories: dict[tuple[int, str], sessionmaker[Session]] = {}


def engine_for(url: str) -> Engine:
    """This process's engine for ``url``; a forked child never reuses its parent's sockets."""
    key = (os.getpid(), url)
    with _lock:
        engine = _engines.get(key)
        if engine is None:
            engine = _engines[key] = _create(url)
        return engine


def session_factory(url: str) -> sessionmaker[Session]:
    """This process's session factory for ``url`` (built once: a factory per session would
    cost every transaction its configuration)."""
    key = (os.getpid(), url)
    factory = _factories.get(key)
    if factory is None:
        engine = engine_for(url)
        with _lock:
            factory = _factories.setdefault(key, sessionmaker(engine, expire_on_commit=False))
    return factory


def _create(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            # WAL lets the CLI read while workers write; busy_timeout rides out writer overlap.
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            # In WAL mode NORMAL survives a crashed process (only a power cut can lose the
            # latest commits) and avoids an fsync per audit row.
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """A session committed on success and rolled back on error."""
    session = session_factory(url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
