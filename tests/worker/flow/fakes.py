"""In-memory stand-ins for every port of the update flows, with an injected clock.

Each fake keeps what a test needs to assert on (calls, rows, reservations) and can be told to
fail at one point. The semantics follow the real implementations' docstrings: newest-marker
ordering, newer-wins state cache, unique request ids and idempotency keys in the audit store.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from models import Outcome
from worker.catalog import Definition, PresenceCatalog
from worker.flow.ports import FlowConfig, Ports
from worker.flow.record import AuditDraft, AuditStore, Recorder, Written
from worker.genesys.client import Answer
from worker.genesys.models import UserPresence
from worker.intents import Intent
from worker.notifications.listener import PresenceEvent
from worker.ordering import AgentBusy
from worker.rules.capacity import CapacityVerdict
from worker.rules.transitions import TransitionMatrix
from worker.state_cache import AgentState
from worker.wfm import STATE_CHANGING

DEFINITIONS = [
    Definition("def-available", "Available", "available", True, False),
    Definition("def-onqueue", "On Queue", "onqueue", True, False),
    Definition("def-break", "Break", "break", True, False),
    Definition("def-coffee", "Coffee", "break", False, False),
    Definition("def-meal", "Meal", "meal", True, False),
    Definition("def-offline", "Offline", "offline", True, False),
]
SYSTEM_OF = {d.id: d.label.upper().replace(" ", "_") for d in DEFINITIONS}
T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


class FakeClock:
    def __init__(self, start: datetime = T0) -> None:
        self.wall = start
        self.mono = 1000.0

    def now(self) -> datetime:
        return self.wall

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.wall += timedelta(seconds=seconds)
        self.mono += seconds


class FakeCatalog(PresenceCatalog):
    """The real name resolution over a fixed list of definitions (no Redis, no fetch)."""

    def __init__(self, definitions: list[Definition] | None = None) -> None:
        self._definitions = definitions or DEFINITIONS
        self.fault: Exception | None = None

    def definitions(self) -> list[Definition]:
        if self.fault is not None:
            raise self.fault
        return self._definitions


class FakeApi:
    """The platform's presence endpoints over a dict of agent → definition id.

    ``faults["write"]`` / ``faults["read"]``: exceptions raised by the next writes / reads, in
    order (``None`` lets one call through); ``faults["after_write"]``: raised by the next writes
    *after* the platform applied them (an answer lost to a timeout); ``faults["budget"]``:
    raised by the next waits in line before a request's work. ``writes`` counts every accepted change per agent.
    """

    def __init__(self, clock: FakeClock, presences: dict[str, str]) -> None:
        self.clock = clock
        self.presences = dict(presences)
        self.modified: dict[str, datetime] = {}
        self.faults: dict[str, list[Exception | None]] = {
            "write": [],
            "read": [],
            "after_write": [],
            "budget": [],
        }
        self.calls: Counter[str] = Counter()
        self.writes: Counter[str] = Counter()
        self.refuse: dict[str, Exception] = {}  # agent → error its write always gets
        self.drift: dict[str, str] = {}  # agent → presence someone sets right after our write

    def _fault(self, kind: str) -> None:
        queue = self.faults[kind]
        if queue:
            error = queue.pop(0)
            if error is not None:
                raise error

    def _presence(self, user_id: str) -> UserPresence:
        definition_id = self.presences[user_id]
        return UserPresence.model_validate(
            {
                "presenceDefinition": {
                    "id": definition_id,
                    "systemPresence": SYSTEM_OF[definition_id],
                },
                "modifiedDate": self.modified.get(user_id, T0 - timedelta(hours=1)).isoformat(),
            }
        )

    def _write(self, user_id: str, definition_id: str) -> UserPresence:
        self.presences[user_id] = definition_id
        self.modified[user_id] = self.clock.now()
        self.writes[user_id] += 1
        answer = self._presence(user_id)
        if user_id in self.drift:
            self.presences[user_id] = self.drift[user_id]
        return answer

    def await_budget(self) -> None:
        self._fault("budget")

    def get_presence(self, user_id: str) -> tuple[UserPresence, Answer]:
        self.calls["get"] += 1
        self._fault("read")
        return self._presence(user_id), Answer(None, "corr-get", 200)

    def patch_presence(
        self, user_id: str, definition_id: str, message: str | None = None
    ) -> tuple[UserPresence, Answer]:
        self.calls["patch"] += 1
        self._fault("write")
        if user_id in self.refuse:
            raise self.refuse[user_id]
        written = self._write(user_id, definition_id)
        self._fault("after_write")
        return written, Answer(None, f"corr-{user_id}", 200)

    def put_presences_bulk(
        self, changes: list[tuple[str, str, str | None]]
    ) -> tuple[list[UserPresence], Answer]:
        self.calls["bulk_put"] += 1
        self._fault("write")
        for user_id, _, _ in changes:  # all-or-nothing, as on the platform
            if user_id in self.refuse:
                raise self.refuse[user_id]
        written = [self._write(u, d) for u, d, _ in changes]
        self._fault("after_write")
        return written, Answer(None, "corr-bulk", 200)

    def get_presences_bulk(self, user_ids: list[str]) -> dict[str, UserPresence]:
        self.calls["bulk_get"] += 1
        self._fault("read")
        return {u: self._presence(u) for u in user_ids if u in self.presences}


class FakeOrdering:
    def __init__(self) -> None:
        self.newest: dict[str, str] = {}
        self.locked: set[str] = set()
        self.busy: set[str] = set()  # agents whose lock another worker holds

    @staticmethod
    def _marker(stamp_us: int, request_id: str) -> str:
        return f"{stamp_us:020d}|{request_id}"

    def register(self, user_id: str, requested_at_us: int, request_id: str) -> None:
        mine = self._marker(requested_at_us, request_id)
        if mine > self.newest.get(user_id, ""):
            self.newest[user_id] = mine

    def register_many(self, requests: list[tuple[str, int, str]]) -> None:
        for request in requests:
            self.register(*request)

    def is_superseded(self, user_id: str, requested_at_us: int, request_id: str) -> bool:
        newest = self.newest.get(user_id)
        if newest is None or newest.partition("|")[2] == request_id:
            return False
        return newest > self._marker(requested_at_us, request_id)

    def superseded_among(self, requests: list[tuple[str, int, str]]) -> set[str]:
        return {r[2] for r in requests if self.is_superseded(*r)}

    @contextmanager
    def lock(self, user_id: str, *, ttl_s: float, wait_s: float) -> Iterator[None]:
        if user_id in self.busy or user_id in self.locked:
            raise AgentBusy(f"agent {user_id} is being updated by another worker")
        self.locked.add(user_id)
        try:
            yield
        finally:
            self.locked.discard(user_id)

    @contextmanager
    def register_and_lock(
        self, user_id: str, requested_at_us: int, request_id: str, *, ttl_s: float, wait_s: float
    ) -> Iterator[bool]:
        self.register(user_id, requested_at_us, request_id)
        with self.lock(user_id, ttl_s=ttl_s, wait_s=wait_s):
            yield self.is_superseded(user_id, requested_at_us, request_id)

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
        with self.register_and_lock(
            user_id, requested_at_us, request_id, ttl_s=ttl_s, wait_s=wait_s
        ) as superseded:
            yield superseded, [key.encode() for key in read]  # read as the lock is held

    def try_lock_many(self, user_ids: list[str], *, ttl_s: float) -> dict[str, str]:
        taken = {}
        for user_id in dict.fromkeys(user_ids):
            if user_id not in self.busy and user_id not in self.locked:
                self.locked.add(user_id)
                taken[user_id] = "owner"
        return taken

    def unlock_many(self, owners: dict[str, str]) -> None:
        self.locked -= set(owners)


class FakeIntents:
    def __init__(self, cache: FakeCache | None = None) -> None:
        self.marks: dict[str, Intent] = {}
        self.cache = cache
        self.reads_with_state = 0

    def first_reads(self, request_id: str, user_id: str) -> list[str]:
        return [f"intent:{request_id}", f"state:{user_id}"]

    def from_first_reads(
        self, user_id: str, values: list[bytes | str | None]
    ) -> tuple[Intent | None, AgentState | None]:
        # The fake ordering "reads" a key as its own name: resolved here.
        self.reads_with_state += 1
        mark, state = (v.decode() if isinstance(v, bytes) else v or "" for v in values)
        intent = self.marks.get(mark.removeprefix("intent:")) if mark else None
        cached = state.removeprefix("state:") if state else None
        entry = self.cache.entries.get(cached) if self.cache is not None and cached else None
        return intent, entry

    def mark(
        self, writes: dict[str, Intent], *, state: tuple[str, AgentState] | None = None
    ) -> None:
        self.marks.update(writes)
        if state is not None and self.cache is not None:
            self.cache.put(*state)

    @contextmanager
    def marking(self, writes: dict[str, Intent]) -> Iterator[None]:
        self.marks.update(writes)  # no budget here: every call inside is let through
        yield

    def marked(self, request_ids: list[str]) -> dict[str, Intent]:
        return {r: self.marks[r] for r in request_ids if r in self.marks}

    def clear(self, request_ids: list[str]) -> None:
        for request_id in request_ids:
            self.marks.pop(request_id, None)


class FakeCache:
    def __init__(self) -> None:
        self.entries: dict[str, AgentState] = {}

    def get(self, user_id: str) -> AgentState | None:
        return self.entries.get(user_id)

    def get_many(self, user_ids: list[str]) -> dict[str, AgentState]:
        return {u: self.entries[u] for u in user_ids if u in self.entries}

    def put(self, user_id: str, state: AgentState) -> bool:
        stored = self.entries.get(user_id)
        if stored is not None and stored.modified_ms > state.modified_ms:
            return False
        self.entries[user_id] = state
        return True


class FakeCapacity:
    """Admits every change unless ``refuse`` names the agent; keeps the reservations."""

    def __init__(self) -> None:
        self.refuse: dict[str, str] = {}
        self.reserved: dict[str, tuple[str, ...]] = {}
        self.released: list[str] = []
        self.asked: list[str] = []

    def check_and_reserve(self, request_id: str, user_id: str) -> CapacityVerdict:
        self.asked.append(user_id)
        if user_id in self.refuse:
            return CapacityVerdict(False, self.refuse[user_id], ("queue-1",))
        self.reserved[request_id] = ("queue-1",)
        return CapacityVerdict(True, "room in every queue", ("queue-1",))

    def release(self, request_id: str, queue_ids: tuple[str, ...]) -> None:
        if self.reserved.pop(request_id, None) is not None:
            self.released.append(request_id)

    def prefetch_memberships(self, user_ids: list[str]) -> dict[str, dict[str, Any]]:
        return {}


@dataclass(eq=False)
class FakeWaiter:
    user_id: str
    confirmations: FakeConfirmations
    events: list[PresenceEvent] = field(default_factory=list)

    def wait_for(
        self, definition_id: str, correlation_id: str | None, modified_ms: int, timeout_s: float
    ) -> PresenceEvent | None:
        """The event arrives at once when the socket delivers this agent's events, else never
        (for an agent seen ``elsewhere``, another process's socket gets it: the shared cache)."""
        if self.user_id in self.confirmations.elsewhere:
            state = AgentState(definition_id, "", modified_ms, "event")
            self.confirmations.cache.put(self.user_id, state)
            return None
        if self.user_id in self.confirmations.silent:
            return None
        return PresenceEvent(self.user_id, definition_id, "", modified_ms, correlation_id)


class FakeConfirmations:
    """A socket that delivers every subscribed agent's event, except the ``silent`` ones'.
    ``priming_fills`` is what its priming's listing puts in the cache when the whole priming is
    waited for (a cold start's fill)."""

    def __init__(self, cache: FakeCache) -> None:
        self.cache = cache
        self.connected = True
        self.silent: set[str] = set()
        self.elsewhere: set[str] = set()
        self.subscribed: set[str] = set()
        self.open: set[FakeWaiter] = set()
        self.subscribed_waits = 0
        self.primed_waits = 0
        self.priming_fills: dict[str, AgentState] = {}

    def wait_subscribed(self) -> bool:
        self.subscribed_waits += 1
        return True

    def wait_primed(self) -> bool:
        self.primed_waits += 1
        for user_id, state in self.priming_fills.items():
            self.cache.put(user_id, state)
        return True

    def ensure_subscribed(self, user_id: str) -> bool:
        if self.connected:
            self.subscribed.add(user_id)
        return self.connected

    def subscribe_many(self, user_ids: list[str]) -> set[str]:
        if not self.connected:
            return set()
        self.subscribed |= set(user_ids)
        return set(user_ids)

    def expect(self, user_id: str) -> FakeWaiter:
        waiter = FakeWaiter(user_id, self)
        self.open.add(waiter)
        return waiter

    def done(self, waiter: FakeWaiter) -> None:
        self.open.discard(waiter)


class FakeAuditStore:
    """Rows by request id; request ids, and idempotency keys within an org, are unique, as in
    the table."""

    def __init__(self) -> None:
        self.rows: dict[str, AuditDraft] = {}
        self.deliveries: list[str] = []
        self.fault: Exception | None = None

    def find_outcome(
        self, *, request_id: str, idempotency_key: str | None, org: str = "default"
    ) -> Outcome | None:
        for row in self.rows.values():
            if row.request_id == request_id or (
                idempotency_key is not None
                and (row.org, row.idempotency_key) == (org, idempotency_key)
            ):
                return row.outcome
        return None

    def audited(
        self, request_ids: list[str], idempotency_keys: list[str], org: str = "default"
    ) -> set[str]:
        keys = {r.idempotency_key for r in self.rows.values() if r.org == org}
        return {i for i in request_ids if i in self.rows} | {
            k for k in idempotency_keys if k in keys
        }

    def write(self, drafts: list[AuditDraft], *, outbox: bool) -> list[Written]:
        if self.fault is not None:
            raise self.fault
        out = []
        for draft in drafts:
            draft.to_row()  # the real conversion must accept every draft
            existing = self.find_outcome(
                request_id=draft.request_id, idempotency_key=draft.idempotency_key, org=draft.org
            )
            if existing is not None:
                out.append(Written(existing, False))
                continue
            self.rows[draft.request_id] = draft
            delivery = None
            if outbox and draft.outcome is not None and draft.outcome.value in STATE_CHANGING:
                self.deliveries.append(draft.request_id)
                delivery = len(self.deliveries)
            out.append(Written(draft.outcome or Outcome.INVALID, True, delivery))
        return out


@dataclass
class World:
    """Every fake, wired into one :class:`Ports`."""

    clock: FakeClock
    api: FakeApi
    catalog: FakeCatalog
    ordering: FakeOrdering
    intents: FakeIntents
    cache: FakeCache
    capacity: FakeCapacity
    confirmations: FakeConfirmations
    store: Any
    enqueued: list[int]
    observed: list[str]
    ports: Ports

    def row(self, request_id: str) -> AuditDraft:
        return self.store.rows[request_id]


def world(
    presences: dict[str, str],
    *,
    matrix: TransitionMatrix | None = None,
    store: AuditStore | None = None,
) -> World:
    """The fakes wired together; ``store`` replaces the in-memory audit store (e.g. the real
    SQL one)."""
    clock = FakeClock()
    store = store or FakeAuditStore()
    enqueued: list[int] = []
    observed: list[str] = []
    cache = FakeCache()
    parts: dict[str, Any] = {
        "api": FakeApi(clock, presences),
        "catalog": FakeCatalog(),
        "ordering": FakeOrdering(),
        "intents": FakeIntents(cache),
        "cache": cache,
        "capacity": FakeCapacity(),
        "confirmations": FakeConfirmations(cache),
    }
    recorder = Recorder(
        store,
        now=clock.now,
        observe=lambda d: observed.append(d.request_id),
        enqueue_wfm=enqueued.append,
        wfm_enabled=True,
    )
    ports = Ports(
        **parts,
        matrix=matrix or TransitionMatrix.load(None),
        audit=store,
        recorder=recorder,
        clock=clock,
        config=FlowConfig(
            ack_timeout_s=2.0,
            agent_lock_ttl_s=60.0,
            agent_lock_wait_s=0.0,
            capacity_observation_ttl_s=10.0,
            capacity_defer_max_s=600.0,
            bulk_batch_size=50,
            max_future_skew_s=300.0,
        ),
        jitter=lambda low, high: low,
    )
    return World(clock, store=store, enqueued=enqueued, observed=observed, ports=ports, **parts)
