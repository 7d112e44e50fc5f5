"""Presence definitions: names → ids, shared through Redis, refreshed every few minutes."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import redis

from worker.genesys.models import PresenceDefinition


class UnknownPresence(ValueError):
    """The requested state or reason names no active presence definition."""


def normalize(text: str) -> str:
    """ "On Queue", "OnQueue", "ON_QUEUE" and "on queue" all compare equal."""
    return text.replace(" ", "").replace("_", "").replace("-", "").lower()


@dataclass(frozen=True, slots=True)
class Definition:
    id: str
    label: str
    system: str  # normalised system presence, e.g. "onqueue"
    primary: bool
    deactivated: bool


TTL_S = 600


def catalog_key(prefix: str = "presence") -> str:
    """The key holding the definitions of the org whose key prefix is ``prefix``."""
    return f"{prefix}:definitions"


def _definition(d: PresenceDefinition) -> Definition:
    return Definition(
        d.id, d.label, normalize(d.system_presence), d.type == "System", d.deactivated
    )


def _store(
    client: redis.Redis,
    definitions: list[Definition],
    ttl_s: int,
    *,
    prefix: str,
    only_new: bool = False,
) -> bool:
    """Store ``definitions`` for the fleet (``only_new``: unless some are stored already)."""
    text = json.dumps([asdict(d) for d in definitions])
    return bool(client.set(catalog_key(prefix), text, ex=ttl_s, nx=only_new))


def seed(
    client: redis.Redis, entities: list[Any], ttl_s: int = TTL_S, *, prefix: str = "presence"
) -> bool:
    """Store a definitions listing read elsewhere (``deactivated=true``, as the catalog reads it)
    for the fleet's catalog of the org whose key prefix is ``prefix``, unless one is stored
    already. Never raises; False when nothing was stored (an entity of another shape, or Redis
    away)."""
    try:
        definitions = [_definition(PresenceDefinition.model_validate(e)) for e in entities]
    except ValueError:
        return False
    try:
        return _store(client, definitions, ttl_s, prefix=prefix, only_new=True)
    except redis.RedisError:
        return False


class PresenceCatalog:
    """Resolves a request's ``state`` (+ ``reason``) to one active definition.

    Definitions are fetched once per ``ttl_s`` for the whole fleet (one Genesys call), cached in
    Redis (under :func:`catalog_key` of ``prefix``, the org's key prefix) and in process memory.
    """

    def __init__(
        self,
        client: redis.Redis,
        fetch: Callable[[], list[PresenceDefinition]],
        *,
        ttl_s: int = TTL_S,
        clock: Callable[[], float] = time.monotonic,
        prefix: str = "presence",
    ) -> None:
        self.redis = client
        self.prefix = prefix
        self.fetch = fetch
        self.ttl_s = ttl_s
        self.clock = clock
        self._lock = threading.Lock()
        self._local: tuple[float, list[Definition]] | None = None

    def definitions(self) -> list[Definition]:
        with self._lock:
            if self._local is not None and self._local[0] > self.clock():
                return self._local[1]
            raw = self.redis.get(catalog_key(self.prefix))
            if raw is None:
                definitions = [_definition(d) for d in self.fetch()]
                _store(self.redis, definitions, self.ttl_s, prefix=self.prefix)
            else:
                definitions = [Definition(**d) for d in json.loads(raw)]
            self._local = (self.clock() + min(60, self.ttl_s), definitions)
            return definitions

    def by_id(self, definition_id: str) -> Definition | None:
        return next((d for d in self.definitions() if d.id == definition_id), None)

    def resolve(self, state: str, reason: str | None = None) -> Definition:
        """The definition for ``state`` (and ``reason``); raises UnknownPresence with a hint."""
        definitions = self.definitions()
        wanted = normalize(state)
        match = next((d for d in definitions if d.id == state), None)
        if match is None:
            match = next((d for d in definitions if d.primary and d.system == wanted), None)
        if match is None:
            match = next(
                (d for d in definitions if not d.primary and normalize(d.label) == wanted), None
            )
        if match is None:
            names = sorted({d.label for d in definitions if not d.deactivated})
            raise UnknownPresence(f"Unknown state {state!r}; use one of: {', '.join(names)}")
        if reason is not None:
            wanted_reason = normalize(reason)
            secondary = next(
                (
                    d
                    for d in definitions
                    if not d.primary
                    and d.system == match.system
                    and normalize(d.label) == wanted_reason
                ),
                None,
            )
            if secondary is None:
                options = sorted(
                    d.label
                    for d in definitions
                    if not d.primary and d.system == match.system and not d.deactivated
                )
                hint = (
                    f"; reasons for {match.label}: {', '.join(options)}"
                    if options
                    else f"; {match.label} has no reasons"
                )
                raise UnknownPresence(f"Unknown reason {reason!r} for state {state!r}{hint}")
            match = secondary
        if match.deactivated:
            raise UnknownPresence(f"Presence {match.label!r} is deactivated in this org")
        return match
