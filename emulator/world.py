"""The seeded organisation: users, queues, memberships, live presence and routing state.

Every presence or routing-status change goes through :meth:`World.set_presence` or
:meth:`World.set_work`, which record history and publish the matching notification events.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from emulator.config import WorldShape
from emulator.definitions import (
    HOME_DIVISION_ID,
    DefinitionCatalog,
    PresenceDefinition,
    SystemPresence,
)
from emulator.sources import PURECLOUD, PresenceSources

ROUTING_STATUSES = ("OFF_QUEUE", "IDLE", "INTERACTING", "NOT_RESPONDING", "COMMUNICATING")

FIRST_NAMES = (
    "Ada", "Ben", "Chloe", "Dev", "Elena", "Farid", "Grace", "Hugo", "Iris", "Jonas", "Kira",
    "Liam", "Maya", "Noah", "Olga", "Priya", "Quinn", "Rosa", "Sam", "Tara", "Umar", "Vera",
    "Wes", "Xena", "Yusuf", "Zoe",
)  # fmt: skip
LAST_NAMES = (
    "Abbott", "Bauer", "Castro", "Diaz", "Evans", "Fischer", "Garcia", "Haddad", "Ivanova",
    "Jensen", "Kowalski", "Lopez", "Moreau", "Nakamura", "Okafor", "Petrov", "Quist", "Rossi",
    "Silva", "Tanaka", "Ueda", "Varga", "Weber", "Xu", "Young", "Zimmer",
)  # fmt: skip
QUEUE_TOPICS = (
    "Billing", "Support", "Sales", "Retention", "Claims", "Onboarding", "Fraud", "Shipping",
    "Returns", "VIP", "Tech L1", "Tech L2", "Collections", "Renewals", "Partners", "Outbound",
)  # fmt: skip


def iso(ts: float) -> str:
    """ISO-8601 UTC with milliseconds and ``Z``, as the platform writes dates."""
    return (
        datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.")
        + f"{int(ts * 1000) % 1000:03d}Z"
    )


@dataclass(slots=True)
class SourcePresence:
    """A user's presence for one source (``PURECLOUD`` or a custom source id)."""

    definition: PresenceDefinition
    message: str = ""
    modified: float = 0.0
    future: PresenceDefinition | None = None  # a deferred change, applied later


@dataclass(slots=True)
class User:
    id: str
    name: str
    email: str
    state: str  # active | inactive | deleted
    presences: dict[str, SourcePresence]
    primary_source: str = PURECLOUD
    routing_status: str = "OFF_QUEUE"
    routing_start: float = 0.0
    interactions: int = 0
    not_responding: bool = False
    version: int = 1

    @property
    def presence(self) -> SourcePresence:
        return self.presences[self.primary_source]


@dataclass(slots=True)
class Queue:
    id: str
    name: str
    members: dict[str, bool] = field(default_factory=dict)  # user id → joined
    waiting: int = 0


@dataclass(frozen=True, slots=True)
class Change:
    """Who asked for a change and how; stored in the history with each change."""

    path: str  # patch | bulk | routing_status | admin
    correlation_id: str
    client_id: str | None = None
    request: str = ""


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    at: float
    definition_id: str
    system_presence: str
    source: str
    routing_status: str
    change: Change

    def json(self) -> dict[str, Any]:
        return {
            "at": iso(self.at),
            "timestamp": self.at,
            "definitionId": self.definition_id,
            "systemPresence": self.system_presence,
            "source": self.source,
            "routingStatus": self.routing_status,
            "path": self.change.path,
            "correlationId": self.change.correlation_id,
            "clientId": self.change.client_id,
            "request": self.change.request,
        }


EventSink = Callable[[str, dict[str, Any], str], None]
"""Receives (topic, eventBody, correlation id) for every change."""


class World:
    """The organisation's state. Single-threaded: only the event loop touches it."""

    def __init__(
        self,
        shape: WorldShape,
        *,
        clock: Callable[[], float] = time.time,
        org: str | None = None,
        user_ids: list[str] | None = None,
    ) -> None:
        """``org`` (None: the default org) names whose secondary definition ids these are;
        ``user_ids`` given, the first users take these ids instead of seeded ones."""
        self.shape = shape
        self.clock = clock
        self.definitions = DefinitionCatalog(org)
        self._user_ids = user_ids or []
        self.users: dict[str, User] = {}
        self.queues: dict[str, Queue] = {}
        self.memberships: dict[str, list[str]] = {}
        self.topic_wanted: Callable[[str], bool] = lambda topic: True
        self.sources = PresenceSources()
        self.history: dict[str, list[HistoryEntry]] = {}
        self.event_sinks: list[EventSink] = []
        self._build()

    # -- construction -------------------------------------------------------------------
    def _build(self) -> None:
        rng = random.Random(self.shape.seed)
        now = self.clock()
        on_queue = self.definitions.system(SystemPresence.ON_QUEUE)
        starting = [
            (self.definitions.system(SystemPresence.OFFLINE), 0.50),
            (self.definitions.system(SystemPresence.AVAILABLE), 0.20),
            (on_queue, 0.25),
            (self.definitions.system(SystemPresence.BREAK), 0.05),
        ]
        for index in range(self.shape.users):
            user_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
            if index < len(self._user_ids):
                user_id = self._user_ids[index]
            first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
            roll = rng.random()
            state = "deleted" if roll < 0.01 else "inactive" if roll < 0.03 else "active"
            if index < 10:
                state = "active"  # a predictable head of the listing for walkthroughs
            definition = rng.choices([d for d, _ in starting], [w for _, w in starting])[0]
            user = User(
                id=user_id,
                name=f"{first} {last}",
                email=f"{first.lower()}.{last.lower()}.{index}@example.com",
                state=state,
                presences={PURECLOUD: SourcePresence(definition=definition, modified=now)},
                routing_start=now,
            )
            if definition is on_queue and rng.random() < 0.3:
                user.interactions = 1
            user.routing_status = self._routing_for(user)
            self.users[user_id] = user
            self.memberships[user_id] = []
        for index in range(self.shape.queues):
            queue_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
            topic = QUEUE_TOPICS[index % len(QUEUE_TOPICS)]
            suffix = f" {index // len(QUEUE_TOPICS) + 1}" if index >= len(QUEUE_TOPICS) else ""
            self.queues[queue_id] = Queue(id=queue_id, name=f"{topic}{suffix}")
        queue_ids = list(self.queues)
        if queue_ids:
            for user_id in self.users:
                for queue_id in rng.sample(queue_ids, k=min(len(queue_ids), rng.randint(1, 3))):
                    self.queues[queue_id].members[user_id] = rng.random() < 0.9
                    self.memberships[user_id].append(queue_id)

    # -- reads --------------------------------------------------------------------------
    def user(self, user_id: str, *, include_deleted: bool = False) -> User | None:
        user = self.users.get(user_id)
        if user is None or (user.state == "deleted" and not include_deleted):
            return None
        return user

    @staticmethod
    def _routing_for(user: User) -> str:
        if user.presence.definition.system is not SystemPresence.ON_QUEUE:
            return "OFF_QUEUE"
        if user.not_responding:
            return "NOT_RESPONDING"
        return "INTERACTING" if user.interactions > 0 else "IDLE"

    # -- writes -------------------------------------------------------------------------
    def set_presence(
        self,
        user: User,
        definition: PresenceDefinition | None,
        change: Change,
        *,
        source: str = PURECLOUD,
        message: str | None = None,
        make_primary: bool = False,
    ) -> SourcePresence:
        """Write one source's presence; publish events when the effective presence moves.

        A write to the primary source (or one that makes its source primary) always produces a
        ``presence`` event, even when the definition is unchanged: ``modifiedDate`` moves.
        """
        now = self.clock()
        current = user.presences.get(source)
        if current is None:
            base = definition or self.definitions.system(SystemPresence.OFFLINE)
            current = user.presences[source] = SourcePresence(definition=base)
        if definition is not None:
            current.definition = definition
            current.future = None
        if message is not None:
            current.message = message
        current.modified = now
        if make_primary:
            self.set_primary_source(user, source)
        user.version += 1
        if source == user.primary_source:
            if definition is not None and definition.system is SystemPresence.ON_QUEUE:
                user.not_responding = False
            self._publish_presence(user, change)
            self._refresh_routing(user, change)
            self._publish_activity(user, change)
            self._record(user, change, now)
        return current

    def defer_presence(
        self,
        user: User,
        definition: PresenceDefinition,
        change: Change,
        *,
        source: str,
        message: str | None,
        delay_s: float,
        schedule: Callable[[float, Callable[[], None]], object],
    ) -> SourcePresence:
        """Accept a change but apply it ``delay_s`` later: meanwhile the source shows it as
        ``futurePresenceDefinition`` (and a presence event announces it); the change itself
        then publishes as usual, unless a later write replaced the deferred one."""
        current = user.presences.get(source)
        if current is None:
            current = user.presences[source] = SourcePresence(
                self.definitions.system(SystemPresence.OFFLINE), modified=self.clock()
            )
        current.future = definition
        if source == user.primary_source:
            self._publish_presence(user, change)

        def apply() -> None:
            if current.future is definition:
                current.future = None
                self.set_presence(user, definition, change, source=source, message=message)

        schedule(delay_s, apply)
        return current

    def set_primary_source(self, user: User, source: str) -> None:
        """Make ``source`` the user's primary one; an integration that never reported for
        this user starts Offline."""
        if source not in user.presences:
            user.presences[source] = SourcePresence(
                self.definitions.system(SystemPresence.OFFLINE), modified=self.clock()
            )
        user.primary_source = source

    def set_default_primary_source(self, source: str | None) -> None:
        """The org's default primary source, applied to every user (None: ``PURECLOUD``)."""
        self.sources.default_primary = source
        for user in self.users.values():
            self.set_primary_source(user, source or PURECLOUD)

    def set_work(
        self, user: User, change: Change, *, interactions: int | None, not_responding: bool | None
    ) -> None:
        """Change what the agent is doing (admin); publishes a routing event if status moves."""
        if interactions is not None:
            user.interactions = max(0, interactions)
        if not_responding is not None:
            user.not_responding = not_responding
        if self._refresh_routing(user, change):
            self._publish_activity(user, change)
            self._record(user, change, self.clock())

    def _refresh_routing(self, user: User, change: Change) -> bool:
        status = self._routing_for(user)
        if status == user.routing_status:
            return False
        user.routing_status = status
        user.routing_start = self.clock()
        body = {
            "id": user.id,
            "routingStatus": {"status": status, "startTime": iso(user.routing_start)},
        }
        self._emit(f"v2.users.{user.id}.routingStatus", body, change.correlation_id)
        return True

    def _publish_presence(self, user: User, change: Change) -> None:
        presence = user.presence
        body = {
            "source": PURECLOUD if user.primary_source == PURECLOUD else user.primary_source,
            "presenceDefinition": presence.definition.event_json(),
            "primary": True,
            "message": presence.message,
            "modifiedDate": iso(presence.modified),
        }
        if presence.future is not None:
            body["futurePresenceDefinition"] = presence.future.event_json()
        self._emit(f"v2.users.{user.id}.presence", body, change.correlation_id)

    def _publish_activity(self, user: User, change: Change) -> None:
        """``v2.users.{id}.activity`` (``AgentActivityChangedTopicAgentActivity``): presence,
        routing status and queues in one event, after either moved (built only when someone
        listens)."""
        topic = f"v2.users.{user.id}.activity"
        if not self.topic_wanted(topic):
            return
        presence = user.presence
        body = {
            "id": user.id,
            "routingStatus": {"status": user.routing_status, "startTime": iso(user.routing_start)},
            "presence": {
                "presenceDefinition": presence.definition.event_json(),
                "presenceMessage": presence.message,
                "modifiedDate": iso(presence.modified),
            },
            "outOfOffice": {"active": False, "modifiedDate": iso(presence.modified)},
            "activeQueueIds": [q for q, joined in self._joined(user) if joined],
            "dateActiveQueuesChanged": iso(user.routing_start),
        }
        self._emit(topic, body, change.correlation_id)

    def _joined(self, user: User) -> list[tuple[str, bool]]:
        return [
            (queue_id, self.queues[queue_id].members.get(user.id, False))
            for queue_id in self.memberships.get(user.id, [])
        ]

    def _record(self, user: User, change: Change, at: float) -> None:
        presence = user.presence
        self.history.setdefault(user.id, []).append(
            HistoryEntry(
                at=at,
                definition_id=presence.definition.id,
                system_presence=presence.definition.system.rest,
                source=user.primary_source,
                routing_status=user.routing_status,
                change=change,
            )
        )

    def _emit(self, topic: str, body: dict[str, Any], correlation_id: str) -> None:
        for sink in self.event_sinks:
            sink(topic, body, correlation_id)

    # -- JSON views ---------------------------------------------------------------------
    def presence_json(self, user: User, source: str = PURECLOUD) -> dict[str, Any]:
        """``UserPresence`` for one of the user's sources."""
        presence = user.presences[source]
        origin = {"source": PURECLOUD} if source == PURECLOUD else {"sourceId": source}
        return {
            "id": user.id,
            "name": presence.definition.label,
            **origin,
            "primary": source == user.primary_source,
            "presenceDefinition": presence.definition.reference_json(),
            "message": presence.message,
            "modifiedDate": iso(presence.modified),
            "selfUri": f"/api/v2/users/{user.id}/presences",
        } | (
            {"futurePresenceDefinition": presence.future.reference_json()}
            if presence.future is not None
            else {}
        )

    def routing_json(self, user: User) -> dict[str, Any]:
        return {
            "userId": user.id,
            "status": user.routing_status,
            "startTime": iso(user.routing_start),
        }

    def user_json(self, user: User, expand: set[str]) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": user.id,
            "name": user.name,
            "division": {
                "id": HOME_DIVISION_ID,
                "name": "Home",
                "selfUri": f"/api/v2/authorization/divisions/{HOME_DIVISION_ID}",
            },
            "chat": {"jabberId": f"{user.id}@emulator.local"},
            "email": user.email,
            "primaryContactInfo": [
                {"address": user.email, "mediaType": "EMAIL", "type": "PRIMARY"}
            ],
            "addresses": [],
            "state": user.state,
            "username": user.email,
            "version": user.version,
            "acdAutoAnswer": False,
            "selfUri": f"/api/v2/users/{user.id}",
        }
        if "presence" in expand:
            out["presence"] = self.presence_json(user, user.primary_source)
        if "routingstatus" in expand:
            out["routingStatus"] = self.routing_json(user)
        return out

    def live_members(self, queue: Queue) -> dict[str, bool]:
        """The queue's members (user id → joined) without deleted users, who belong nowhere."""
        return {uid: j for uid, j in queue.members.items() if self.user(uid) is not None}

    def queue_json(self, queue: Queue) -> dict[str, Any]:
        members = self.live_members(queue)
        joined = sum(1 for j in members.values() if j)
        return {
            "id": queue.id,
            "name": queue.name,
            "division": {
                "id": HOME_DIVISION_ID,
                "name": "Home",
                "selfUri": f"/api/v2/authorization/divisions/{HOME_DIVISION_ID}",
            },
            "memberCount": len(members),
            "userMemberCount": len(members),
            "joinedMemberCount": joined,
            "selfUri": f"/api/v2/routing/queues/{queue.id}",
        }
