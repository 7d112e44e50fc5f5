"""The small typed interfaces the update flows depend on.

The worker's runtime (:mod:`worker.runtime`) satisfies each with the real thing — the Genesys
client, the notification listener, Redis-backed ordering, cache and capacity guard, the SQL audit
store; the in-process tests pass fakes. The flows reach nothing else.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, TypeVar

from worker.catalog import Definition
from worker.flow.record import AuditStore, Recorder
from worker.genesys.client import Answer
from worker.genesys.models import UserPresence
from worker.intents import Intent
from worker.notifications.listener import PresenceEvent
from worker.rules.capacity import CapacityVerdict
from worker.rules.transitions import Verdict
from worker.state_cache import AgentState


class PresenceApi(Protocol):
    """The platform's presence endpoints. Each call may raise ``GenesysError`` or
    ``BudgetExhausted``."""

    def await_budget(self) -> None:
        """Before any other work of a request: wait for a budget slot when the budget was
        exhausted lately (raises ``BudgetExhausted`` when the slot is further than an inline
        wait), so a request over the budget is re-scheduled before it costs anything."""

    def get_presence(self, user_id: str) -> tuple[UserPresence, Answer]: ...

    def patch_presence(
        self, user_id: str, definition_id: str, message: str | None = None
    ) -> tuple[UserPresence, Answer]: ...

    def put_presences_bulk(
        self, changes: list[tuple[str, str, str | None]]
    ) -> tuple[list[UserPresence], Answer]: ...

    def get_presences_bulk(self, user_ids: list[str]) -> dict[str, UserPresence]: ...


class Catalog(Protocol):
    """Presence definitions by name and id."""

    def resolve(self, state: str, reason: str | None = None) -> Definition:
        """Raises ``UnknownPresence``, ``GenesysError`` or ``BudgetExhausted``."""
        ...

    def by_id(self, definition_id: str) -> Definition | None: ...


class Matrix(Protocol):
    """The transition rules."""

    def check(self, current: Definition, target: Definition) -> Verdict: ...

    def always_allows(self, target: Definition) -> bool: ...


class Ordering(Protocol):
    """Latest-wins markers and per-agent locks, shared by every worker."""

    def register(self, user_id: str, requested_at_us: int, request_id: str) -> None: ...

    def register_many(self, requests: list[tuple[str, int, str]]) -> None: ...

    def is_superseded(self, user_id: str, requested_at_us: int, request_id: str) -> bool: ...

    def superseded_among(self, requests: list[tuple[str, int, str]]) -> set[str]: ...

    def lock(self, user_id: str, *, ttl_s: float, wait_s: float) -> AbstractContextManager[None]:
        """Held for the block; raises ``AgentBusy`` when not acquired within ``wait_s``."""
        ...

    def register_and_lock(
        self, user_id: str, requested_at_us: int, request_id: str, *, ttl_s: float, wait_s: float
    ) -> AbstractContextManager[bool]:
        """``register``, then held for the block, yielding ``is_superseded`` as read once the
        lock is held; raises ``AgentBusy`` when not acquired within ``wait_s``."""
        ...

    def register_lock_and_read(
        self,
        user_id: str,
        requested_at_us: int,
        request_id: str,
        *,
        ttl_s: float,
        wait_s: float,
        read: Sequence[str] = (),
    ) -> AbstractContextManager[tuple[bool, list[bytes | str | None]]]:
        """``register_and_lock``, yielding also the values of the keys ``read`` (None when
        absent), read once the lock is held, in the same round trip."""
        ...

    def try_lock_many(self, user_ids: list[str], *, ttl_s: float) -> dict[str, str]: ...

    def unlock_many(self, owners: dict[str, str]) -> None: ...


class Intents(Protocol):
    """Marks of requests whose write may have reached the platform."""

    def mark(
        self, writes: dict[str, Intent], *, state: tuple[str, AgentState] | None = None
    ) -> None:
        """Record each request's intent (id → its intent; once answered, ``accepted``); with
        ``state`` (user id, what a write's answer says), put that in the shared state cache
        too. Marks made before sending go through :meth:`marking`."""
        ...

    def marking(self, writes: dict[str, Intent]) -> AbstractContextManager[None]:
        """Inside, the marks of ``writes`` are stored as the call sending them is let through
        (before it leaves), never for a call the budget refused."""
        ...

    def marked(self, request_ids: list[str]) -> dict[str, Intent]: ...

    def first_reads(self, request_id: str, user_id: str) -> list[str]:
        """The keys of the request's mark and the agent's entry in the shared state cache (a
        single update's first reads), read with the agent's lock
        (:meth:`Ordering.register_lock_and_read`, on the same Redis)."""
        ...

    def from_first_reads(
        self, user_id: str, values: list[bytes | str | None]
    ) -> tuple[Intent | None, AgentState | None]:
        """The mark (None: not marked) and the cached state (None: not cached) from the values
        of :meth:`first_reads`."""
        ...

    def clear(self, request_ids: list[str]) -> None:
        """Drop marks of writes that were certainly never sent."""
        ...


class StateCache(Protocol):
    """The shared view of agents' current presence."""

    def get(self, user_id: str) -> AgentState | None: ...

    def get_many(self, user_ids: list[str]) -> dict[str, AgentState]: ...

    def put(self, user_id: str, state: AgentState) -> bool: ...


class Capacity(Protocol):
    """The queue-capacity guard."""

    def check_and_reserve(self, request_id: str, user_id: str) -> CapacityVerdict: ...

    def release(self, request_id: str, queue_ids: tuple[str, ...]) -> None: ...

    def prefetch_memberships(self, user_ids: list[str]) -> dict[str, dict[str, Any]]: ...


class Waiter(Protocol):
    """One agent's events, collected from registration on."""

    @property
    def events(self) -> list[PresenceEvent]: ...

    def wait_for(
        self, definition_id: str, correlation_id: str | None, modified_ms: int, timeout_s: float
    ) -> PresenceEvent | None: ...


W = TypeVar("W", bound=Waiter)


class Confirmations(Protocol[W]):
    """This process's notification socket."""

    def wait_subscribed(self) -> bool:
        """Wait (bounded, once per process) for the priming's subscriptions, so a write spends no
        subscription call on an agent priming is about to cover; True when they are made."""
        ...

    def wait_primed(self) -> bool:
        """Wait (the same bound) for the whole priming, subscriptions and the cache's fill, so a
        read is spent only on an agent the fill will not cover; True when primed."""
        ...

    def ensure_subscribed(self, user_id: str) -> bool:
        """Subscribe before a write; False when the caller must confirm by read-back."""
        ...

    def subscribe_many(self, user_ids: list[str]) -> set[str]:
        """Subscribe many in at most one call; the agents whose events will arrive here."""
        ...

    def expect(self, user_id: str) -> W:
        """Start collecting the agent's events; pair with :meth:`done`."""
        ...

    def done(self, waiter: W) -> None: ...


class Clock(Protocol):
    """Wall time (audit rows, deadlines) and a monotonic one (durations)."""

    def now(self) -> datetime: ...

    def monotonic(self) -> float: ...


@dataclass(frozen=True, slots=True)
class FlowConfig:
    """The settings the flows read."""

    ack_timeout_s: float
    agent_lock_ttl_s: float
    agent_lock_wait_s: float
    capacity_observation_ttl_s: float
    capacity_defer_max_s: float
    bulk_batch_size: int
    max_future_skew_s: float


@dataclass(frozen=True, slots=True)
class Ports:
    """Everything a flow uses, in one bundle."""

    api: PresenceApi
    catalog: Catalog
    matrix: Matrix
    ordering: Ordering
    intents: Intents
    cache: StateCache
    capacity: Capacity
    confirmations: Confirmations[Any]
    audit: AuditStore
    recorder: Recorder
    clock: Clock
    config: FlowConfig
    jitter: Callable[[float, float], float]
