"""The notification channels of one process: up to ``max_channels``, each a
:class:`NotificationListener` with its own fleet slot, so one process confirms up to
``max_channels`` times 1,000 agents.

An agent lives on one channel. A new agent goes to the first channel with room (one POST adding
topics); a new channel is opened (a slot permitting) before any channel must evict, so a whole
topic list is replaced (PUT) only when the fleet's slots are all taken. At start the process
primes up to ``prime_agents`` active agents spread over as many channels as they need (the
fleet's one listing of the org, :class:`~worker.notifications.roster.Roster`; one POST per
channel; one listing with presences to fill the state cache), so an org
larger than one channel is covered from the start; tasks wait for that (bounded) instead of
spending requests on agents it is about to cover.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import redis

from worker.genesys.client import GenesysClient
from worker.genesys.errors import GenesysError
from worker.limiter import BudgetExhausted
from worker.notifications.listener import (
    NotificationListener,
    Waiter,
    WaiterRegistry,
    parse_ms,
)
from worker.notifications.roster import FirstPage, Roster
from worker.notifications.slots import ChannelSlots
from worker.settings import Settings
from worker.state_cache import AgentState, StateCache

log = logging.getLogger(__name__)

MemberFactory = Callable[[WaiterRegistry], NotificationListener]


def channel_group(
    settings: Settings,
    client: GenesysClient,
    cache: StateCache,
    r: redis.Redis,
    key: str,
    *,
    prefix: str = "presence",
) -> ChannelGroup:
    """The process's channels as the settings describe them; each holds its own fleet slot
    (slots and roster kept under ``prefix``, the org's key prefix)."""

    def member(waiters: WaiterRegistry) -> NotificationListener:
        return NotificationListener(
            client,
            cache,
            ChannelSlots(r, key=key, max_slots=settings.channel_slots, prefix=prefix),
            heartbeat_s=settings.notification_heartbeat_s,
            extend_after_s=settings.channel_extend_after_s,
            waiters=waiters,
        )

    return ChannelGroup(
        member,
        client,
        cache,
        Roster(r, key=key, prefix=prefix),
        max_channels=settings.notification_channels,
        prime_agents=settings.notification_prime_agents,
        prime_wait_s=settings.notification_prime_wait_s,
    )


PRIME_RETRY_S = 30.0


class ChannelGroup:
    """The task-side API of :class:`NotificationListener` over several channels."""

    def __init__(
        self,
        make_member: MemberFactory,
        client: GenesysClient,
        cache: StateCache,
        roster: Roster,
        *,
        max_channels: int,
        prime_agents: int = 0,
        prime_wait_s: float = 30.0,
        connect_timeout_s: float = 10.0,
    ) -> None:
        self.make_member = make_member
        self.client = client
        self.cache = cache
        self.max_channels = max(1, max_channels)
        self.prime_agents = prime_agents
        self.prime_wait_s = prime_wait_s
        self.connect_timeout_s = connect_timeout_s
        self.roster = roster
        self.waiters = WaiterRegistry()
        self.members: list[NotificationListener] = []
        self.subscribed = threading.Event()
        self.primed = threading.Event()
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._started_at: float | None = None

    # -- channels ---------------------------------------------------------------------------------
    def start(self) -> None:
        with self._lock:
            if self._started_at is not None:
                return
            self._started_at = time.monotonic()
        first = self.make_member(self.waiters)
        with self._lock:
            self.members.append(first)
        first.start()  # the first channel waits for a slot like any single listener
        if self.prime_agents > 0:
            threading.Thread(target=self._prime, name="genesys-prime", daemon=True).start()

    def _open_member(self) -> NotificationListener | None:
        """One more channel when this process may hold it and the fleet has a slot free."""
        with self._lock:
            if len(self.members) >= self.max_channels or self.stopping.is_set():
                return None
        member = self.make_member(self.waiters)
        if not member.slots.claim():
            return None
        with self._lock:
            self.members.append(member)
        member.start()
        return member

    def _snapshot(self) -> list[NotificationListener]:
        with self._lock:
            return list(self.members)

    def _holder(self, user_id: str) -> NotificationListener | None:
        return next((m for m in self._snapshot() if m.holds(user_id)), None)

    def _with_room(self) -> NotificationListener | None:
        """The first channel with room, connected or not: a channel reconnecting is back within
        a second, and opening another for that moment would waste a slot."""
        return next((m for m in self._snapshot() if m.room() > 0), None)

    # -- task-side API ----------------------------------------------------------------------------
    def wait_subscribed(self) -> bool:
        """See :meth:`NotificationListener.wait_subscribed`; the bound runs from the group's
        start."""
        return self._wait(self.subscribed)

    def wait_primed(self) -> bool:
        """See :meth:`NotificationListener.wait_primed`; the bound runs from the group's start."""
        return self._wait(self.primed)

    def _wait(self, stage: threading.Event) -> bool:
        if self.prime_agents <= 0 or stage.is_set():
            return True
        self.start()
        assert self._started_at is not None
        left = self._started_at + self.prime_wait_s - time.monotonic()
        return stage.wait(left) if left > 0 else False

    def ensure_subscribed(self, user_id: str, *, wait_s: float = 2.0) -> bool:
        """The agent's channel, else the first with room, else a new one, else the first
        (which evicts its least recently used agent)."""
        self.start()
        member = self._holder(user_id) or self._with_room() or self._open_member()
        if member is None:
            member = self._snapshot()[0]
        return member.ensure_subscribed(user_id, wait_s=wait_s)

    def subscribe_many(self, user_ids: list[str], *, wait_s: float = 2.0) -> set[str]:
        """At most one call per channel touched; the agents whose events reach this process."""
        self.start()
        wanted = list(dict.fromkeys(user_ids))
        covered: set[str] = set()
        held: dict[int, list[str]] = {}
        missing: list[str] = []
        members = self._snapshot()
        for user_id in wanted:
            index = next((i for i, m in enumerate(members) if m.holds(user_id)), None)
            if index is None:
                missing.append(user_id)
            else:
                held.setdefault(index, []).append(user_id)
        for index, ids in held.items():  # no call: marks them recently used
            covered |= members[index].subscribe_many(ids, wait_s=wait_s)
        for member in members:
            if not missing:
                break
            room = member.room()
            if room > 0:
                chunk, missing = missing[:room], missing[room:]
                covered |= member.subscribe_many(chunk, wait_s=wait_s)
        while missing:
            extra = self._open_member()
            if extra is None:
                break
            chunk, missing = missing[: extra.max_topics], missing[extra.max_topics :]
            covered |= extra.subscribe_many(chunk, wait_s=max(wait_s, self.connect_timeout_s))
        if missing:  # every slot taken: the first channel makes room
            covered |= self._snapshot()[0].subscribe_many(missing, wait_s=wait_s)
        # Making room may have evicted agents counted above: only those still held count.
        return {u for u in covered if self._holder(u) is not None}

    def expect(self, user_id: str) -> Waiter:
        return self.waiters.add(user_id)

    def done(self, waiter: Waiter) -> None:
        self.waiters.remove(waiter)

    def stop(self) -> None:
        self.stopping.set()
        for member in self._snapshot():
            member.stop()

    @property
    def connected(self) -> threading.Event:
        """The first channel's connection (the one every process has)."""
        self.start()
        return self._snapshot()[0].connected

    # -- priming ----------------------------------------------------------------------------------
    def _prime(self) -> None:
        """Subscribe the first ``prime_agents`` active agents over as many channels as they need
        (agents already subscribed keep their place), then fill the state cache from a listing
        taken *after* subscribing, so no change falls between the two (a fleet-mate's listing
        started after this process subscribed serves as well: :meth:`Roster.fill_once`)."""
        first = self._snapshot()[0]
        while not self.stopping.is_set():
            try:
                with self.roster.subscribing():  # fleet-mates hold their read until it is done
                    if not first.connected.wait(self.connect_timeout_s):
                        continue
                    self._subscribe_primed(self._active_ids())
                self.subscribed.set()
                self.roster.fill_once(self._fill_cache)
                self.primed.set()
                return
            except (GenesysError, BudgetExhausted) as exc:
                log.warning("priming the notification channels failed (again soon): %s", exc)
                self.stopping.wait(PRIME_RETRY_S)

    def _active_ids(self) -> list[str]:
        """The agents to prime: the fleet's shared listing (:class:`Roster`)."""

        def listing(limit: int, first: FirstPage | None) -> list[str]:
            ids = [] if first is None else first.ids[:limit]
            if first is None or first.more:
                more = self.client.list_active_users(
                    limit - len(ids), from_page=1 if first is None else 2
                )
                ids += [str(u["id"]) for u in more]
            return ids

        return self.roster.active(self.prime_agents, listing)

    def _subscribe_primed(self, ids: list[str]) -> None:
        pending = [u for u in ids if self._holder(u) is None]
        index = 0
        while pending:
            members = self._snapshot()
            member = members[index] if index < len(members) else self._open_member()
            if member is None:
                break
            index += 1
            room = member.room()
            if room <= 0:
                continue
            chunk, pending = pending[:room], pending[room:]
            member.subscribe_many(chunk, wait_s=self.connect_timeout_s)

    def _fill_cache(self) -> None:
        for user in self.client.list_active_users(self.prime_agents, expand_presence=True):
            presence = user.get("presence") or {}
            definition = presence.get("presenceDefinition") or {}
            if "id" in definition and self._holder(str(user["id"])) is not None:
                self.cache.put(
                    str(user["id"]),
                    AgentState(
                        definition["id"],
                        str(definition.get("systemPresence", "")),
                        parse_ms(presence.get("modifiedDate")),
                        "read",
                    ),
                )
