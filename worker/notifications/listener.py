"""One notification channel and socket per worker process.

A daemon thread owns the socket: it connects (claiming a channel slot first), watches
heartbeats (ping when quiet, reconnect when silent), reconnects with backoff and jitter,
follows ``v2.system.socket_closing`` to the same URI, replaces a channel the platform dropped
(re-subscribing every topic in one call) and extends the channel before its 24 h expiry.

A channel lives no longer than the token that created it. When the token renews, the listener
moves to a new channel before the old token ends (make before break: new channel, new socket,
every topic in one PUT, then the old socket is drained and closed), so no event is missed. Any
other system message (``token_revoked``, ``no_longer_subscribed``, ``subscription_changed``)
or a ``{"result": "404"}`` close means the channel is gone: a new one is made within a second,
re-subscribed in one call, and cached states that may have missed events are dropped.

Task threads call :meth:`ensure_subscribed` before writing and :meth:`expect` to wait for the
confirming event. Every presence event also updates the shared state cache, unless this process
already stored that very state.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import websocket

from worker.genesys.client import GenesysClient
from worker.genesys.errors import GenesysError
from worker.limiter import BudgetExhausted
from worker.notifications.slots import ChannelSlots
from worker.observability import metrics
from worker.state_cache import AgentState, StateCache

log = logging.getLogger(__name__)

PRESENCE_TOPIC = "v2.users.{}.presence"
SOCKET_CLOSING = "v2.system.socket_closing"
# The slot lease is renewed when this fraction of it has passed, not on every socket message.
LEASE_RENEW_FRACTION = 0.25
# The socket thread looks after the channel (token, lease, extension) at least this often.
MAINTAIN_EVERY_S = 1.0


def parse_ms(value: object) -> int:
    """ISO-8601 (``…Z``) to epoch milliseconds; 0 when absent or malformed."""
    if not isinstance(value, str) or not value:
        return 0
    try:
        return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() * 1000)
    except ValueError:
        return 0


@dataclass(slots=True)
class PresenceEvent:
    user_id: str
    definition_id: str
    system_presence: str
    modified_ms: int
    correlation_id: str | None


@dataclass(eq=False, slots=True)
class Waiter:
    """Collects one agent's presence events from registration on."""

    user_id: str
    events: list[PresenceEvent] = field(default_factory=list)
    arrived: threading.Condition = field(default_factory=threading.Condition)

    def push(self, event: PresenceEvent) -> None:
        with self.arrived:
            self.events.append(event)
            self.arrived.notify_all()

    def wait_for(
        self, definition_id: str, correlation_id: str | None, modified_ms: int, timeout_s: float
    ) -> PresenceEvent | None:
        """The event confirming our write, or None after ``timeout_s``.

        Matches on the correlation id when the platform echoes it, else on agent + definition id
        + a ``modifiedDate`` no older than our write's.
        """
        deadline = time.monotonic() + timeout_s
        with self.arrived:
            while True:
                for event in self.events:
                    if event.definition_id != definition_id:
                        continue
                    if correlation_id and event.correlation_id == correlation_id:
                        return event
                    if modified_ms and event.modified_ms >= modified_ms:
                        return event
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.arrived.wait(left)


class WaiterRegistry:
    """The waiters of a process, by agent; shared by every channel the process holds."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_user: dict[str, set[Waiter]] = {}

    def add(self, user_id: str) -> Waiter:
        waiter = Waiter(user_id)
        with self._lock:
            self._by_user.setdefault(user_id, set()).add(waiter)
        return waiter

    def remove(self, waiter: Waiter) -> None:
        with self._lock:
            waiters = self._by_user.get(waiter.user_id)
            if waiters is not None:
                waiters.discard(waiter)
                if not waiters:
                    del self._by_user[waiter.user_id]

    def of(self, user_id: str) -> list[Waiter]:
        with self._lock:
            return list(self._by_user.get(user_id, ()))


class NotificationListener:
    def __init__(
        self,
        client: GenesysClient,
        cache: StateCache,
        slots: ChannelSlots,
        *,
        heartbeat_s: float = 30.0,
        max_topics: int = 1000,
        extend_after_s: float = 20 * 3600.0,
        connect_timeout_s: float = 10.0,
        prime_agents: int = 0,
        prime_wait_s: float = 30.0,
        waiters: WaiterRegistry | None = None,
    ) -> None:
        self.client = client
        self.cache = cache
        self.slots = slots
        self.heartbeat_s = heartbeat_s
        self.max_topics = max_topics
        self.extend_after_s = extend_after_s
        self.connect_timeout_s = connect_timeout_s
        self.prime_agents = min(prime_agents, max_topics)
        self.prime_wait_s = prime_wait_s
        self.subscribed = threading.Event()
        self.primed = threading.Event()
        self._started_at: float | None = None
        self._priming = threading.Event()
        self.topics: OrderedDict[str, None] = OrderedDict()  # user ids, least recently used first
        self.channel_id: str | None = None
        self.connect_uri: str | None = None
        self.channel_since = 0.0
        self.channel_token: str | None = None  # the token the channel was created with
        self.channel_switches = 0
        self.system_messages: dict[str, int] = {}
        self._claimed_at = 0.0
        self.connected = threading.Event()
        self.ever_connected = False
        self.stopping = threading.Event()
        self.reconnects = 0
        self.has_slot = False
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._pending: set[str] = set()
        self._failed: set[str] = set()
        self._inflight: set[str] = set()  # being subscribed right now
        self._flushing = False
        self.subscription_calls = 0
        self.waiters = waiters or WaiterRegistry()
        self._ws: websocket.WebSocket | None = None
        self._thread: threading.Thread | None = None

    # -- task-side API --------------------------------------------------------------------------
    def start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._started_at = time.monotonic()
                self._thread = threading.Thread(
                    target=self._run, name="genesys-notifications", daemon=True
                )
                self._thread.start()

    def wait_subscribed(self) -> bool:
        """Wait (bounded by ``prime_wait_s`` from the listener's start, once per process) for
        priming's subscriptions, so writes arriving at a cold start spend no subscription call on
        agents priming is about to cover. True when subscribed or when there is nothing to wait
        for."""
        return self._wait(self.subscribed)

    def wait_primed(self) -> bool:
        """Wait (the same bound) for priming to finish, the state cache's fill included, so
        tasks arriving at a cold start spend no reads on agents priming is about to cover. True
        when primed or when there is nothing to wait for."""
        return self._wait(self.primed)

    def _wait(self, stage: threading.Event) -> bool:
        if self.prime_agents <= 0 or stage.is_set():
            return True
        self.start()
        assert self._started_at is not None
        left = self._started_at + self.prime_wait_s - time.monotonic()
        return stage.wait(left) if left > 0 else False

    def ensure_subscribed(self, user_id: str, *, wait_s: float = 2.0) -> bool:
        """Subscribe to the agent's presence before a write; True when the agent's events will
        reach this process, False when the caller must confirm by read-back.

        Concurrent callers are grouped: while one subscription call is in flight, newcomers
        queue up and the next call subscribes all of them at once (one Genesys request).
        """
        self.start()
        # The first connection of a fresh process is worth waiting for (channel, socket, ping);
        # later, a socket that is down is not: confirm by read-back instead.
        first = not self.ever_connected
        if not self.connected.wait(max(wait_s, self.connect_timeout_s) if first else wait_s):
            return False
        with self._changed:
            if user_id in self.topics:
                self.topics.move_to_end(user_id)
                return self.connected.is_set()
            self._pending.add(user_id)
            while self._flushing:
                self._changed.wait(wait_s)
                if user_id in self.topics:
                    return self.connected.is_set()
                if user_id in self._failed:
                    self._failed.discard(user_id)
                    return False
            if user_id not in self._pending:  # subscribed by a flush that just ended
                return user_id in self.topics and self.connected.is_set()
            batch, self._pending = self._pending, set()
            self._flushing = True
        ok = self._subscribe(batch)
        with self._changed:
            if not ok:
                self._failed |= batch - {user_id}
            self._flushing = False
            self._changed.notify_all()
            return ok and user_id in self.topics and self.connected.is_set()

    def subscribe_many(self, user_ids: list[str], *, wait_s: float = 2.0) -> set[str]:
        """Subscribe to up to ``max_topics`` agents with at most one Genesys call (a wave);
        returns those whose events will reach this process (empty when the socket is down).

        Agents already subscribed cost nothing; the least recently used others make room.
        """
        self.start()
        first = not self.ever_connected
        if not self.connected.wait(max(wait_s, self.connect_timeout_s) if first else wait_s):
            return set()
        wanted = list(dict.fromkeys(user_ids))[: self.max_topics]
        with self._changed:
            while self._flushing:
                self._changed.wait(wait_s)
            for user_id in wanted:
                if user_id in self.topics:
                    self.topics.move_to_end(user_id)  # never evicted to make room for the rest
            missing = {u for u in wanted if u not in self.topics}
            if not missing:
                return set(wanted) if self.connected.is_set() else set()
            self._flushing = True
        try:
            self._subscribe(missing)
        finally:
            with self._changed:
                self._flushing = False
                self._changed.notify_all()
        with self._lock:
            covered = {u for u in wanted if u in self.topics}
        return covered if self.connected.is_set() else set()

    def holds(self, user_id: str) -> bool:
        """Whether this channel carries (or is subscribing) the agent's events."""
        with self._lock:
            return user_id in self.topics or user_id in self._inflight or user_id in self._pending

    def room(self) -> int:
        """Topics this channel can still take without evicting anyone."""
        with self._lock:
            return self.max_topics - len(self.topics) - len(self._inflight) - len(self._pending)

    def _subscribe(self, user_ids: set[str]) -> bool:
        """One Genesys call adding ``user_ids`` (a full replace when the LRU must evict).

        Agents count as subscribed only once the platform has answered: a task must never write
        before its agent's subscription is in place, or the confirming event would be lost.
        """
        with self._lock:
            # Read under the lock: a channel switch snapshots topics and in-flight ones under
            # it too, so every subscription lands on the channel that will carry it.
            channel_id = self.channel_id
            if channel_id is None:
                return False
            overflow = len(self.topics) + len(self._inflight) + len(user_ids) - self.max_topics
            evicted = list(self.topics)[: max(0, overflow)]
            self._inflight |= user_ids
            if evicted:
                kept = [u for u in self.topics if u not in set(evicted)]
                topics = [PRESENCE_TOPIC.format(u) for u in [*kept, *self._inflight]]
            else:
                topics = [PRESENCE_TOPIC.format(u) for u in user_ids]
        try:
            if evicted:
                self.client.replace_subscriptions(channel_id, topics)
            else:
                self.client.add_subscriptions(channel_id, topics)
            self.subscription_calls += 1
            ok = True
        except (GenesysError, BudgetExhausted) as exc:
            log.warning("subscribing %d agent(s) failed: %s", len(user_ids), exc)
            ok = False
        with self._lock:
            self._inflight -= user_ids
            if ok:
                for user_id in evicted:
                    self.topics.pop(user_id, None)
                for user_id in user_ids:
                    self.topics[user_id] = None
        return ok

    def expect(self, user_id: str) -> Waiter:
        """Start collecting the agent's events; pair with :meth:`done`."""
        return self.waiters.add(user_id)

    def done(self, waiter: Waiter) -> None:
        self.waiters.remove(waiter)

    def stop(self) -> None:
        self.stopping.set()
        ws = self._ws
        if ws is not None:
            ws.abort()  # type: ignore[no-untyped-call]
        self.slots.release()

    # -- socket thread --------------------------------------------------------------------------
    def _topic_list(self) -> list[str]:
        """Every agent this channel should carry, including subscriptions in flight."""
        return [PRESENCE_TOPIC.format(u) for u in [*self.topics, *self._inflight]]

    def _run(self) -> None:
        backoff = 0.2
        while not self.stopping.is_set():
            try:
                self.has_slot = self.slots.claim()
                self._claimed_at = time.monotonic()
                if not self.has_slot:
                    self.stopping.wait(30.0)
                    continue
                self._connect()
                backoff = 0.2
                self._read_until_closed()
            except Exception as exc:
                log.warning("notification socket problem: %s", type(exc).__name__)
            finally:
                self._disconnect()
            if self.stopping.is_set():
                return
            self.reconnects += 1
            metrics.socket_reconnecting(org=self.client.org)
            self.stopping.wait(backoff + random.uniform(0, backoff))
            backoff = min(backoff * 2, 30.0)

    def _connect(self) -> None:
        if self.channel_id is None or self.connect_uri is None:
            self._new_channel()
        assert self.connect_uri is not None
        self._ws = self._open(self.connect_uri)
        # Events may have been missed while no socket was open: those cache entries are suspect.
        self.cache.forget(list(self.topics))
        self.connected.set()
        self.ever_connected = True
        metrics.socket_connected(org=self.client.org)
        if self.prime_agents and not self._priming.is_set():
            self._priming.set()  # once per process, off the reading thread
            threading.Thread(target=self._prime, name="genesys-prime", daemon=True).start()

    def _open(self, connect_uri: str) -> websocket.WebSocket:
        """A socket on ``connect_uri`` that is proven to carry events (an answered ping)."""
        # UTF-8 is left to json.loads (C): websocket-client's own check is pure Python (about
        # 3 % of a busy worker's CPU in a profile) and ends the socket on a frame that is not
        # UTF-8, where json.loads makes it one more unreadable message (see _receive).
        ws = websocket.create_connection(
            connect_uri, timeout=self.connect_timeout_s, skip_utf8_validation=True
        )
        try:
            self._sync(ws)
        except BaseException:
            ws.abort()  # type: ignore[no-untyped-call]
            raise
        return ws

    def _sync(self, ws: websocket.WebSocket, *, current: bool = True) -> None:
        """Ping and handle every message up to the pong. The handshake can finish before the
        platform attaches the socket to the channel; the pong proves events flow (and that
        everything queued before it has been read). On a socket being retired
        (``current=False``) a system message or close just ends the reading."""
        ws.send(json.dumps({"message": "ping"}))
        while True:
            data = _receive(ws)
            if not current and (not data or b'"v2.system.' in data or b'"404"' in data):
                return
            if not self._handle(data):
                raise ConnectionError("channel closed while connecting")
            if b'"channel.metadata"' in data:
                return

    def _new_channel(self) -> None:
        token = self.client.tokens.get()
        channel = self.client.create_channel()
        with self._lock:
            self.channel_id, self.connect_uri = channel.id, channel.connect_uri
            self.channel_since = time.monotonic()
            self.channel_token = token
            if self.topics or self._inflight:
                self.client.replace_subscriptions(channel.id, self._topic_list())

    def _switch_channel(self, token: str) -> None:
        """Move to a new channel (created with ``token``) without missing an event.

        New channel and socket first; then, under the lock, every topic (in flight included) in
        one PUT and the switch, so later subscriptions go to the new channel; last, the old
        socket is read up to a pong (events published before the PUT arrive there) and closed.
        Events in between arrive twice; waiters and the cache take duplicates in their stride.
        """
        old = self._ws
        try:
            channel = self.client.create_channel()
            ws = self._open(channel.connect_uri)
        except (GenesysError, BudgetExhausted, OSError, websocket.WebSocketException) as exc:
            log.warning("moving to a new notification channel failed (will retry): %s", exc)
            return
        try:
            with self._lock:
                if self.topics or self._inflight:
                    self.client.replace_subscriptions(channel.id, self._topic_list())
                self.channel_id, self.connect_uri = channel.id, channel.connect_uri
                self.channel_since = time.monotonic()
                self.channel_token = token
                self._ws = ws
        except (GenesysError, BudgetExhausted) as exc:
            log.warning("subscribing the new notification channel failed (will retry): %s", exc)
            ws.abort()  # type: ignore[no-untyped-call]
            return
        self.channel_switches += 1
        if old is not None:
            with contextlib.suppress(Exception):
                old.settimeout(self.connect_timeout_s)
                self._sync(old, current=False)
            with contextlib.suppress(Exception):
                old.close(timeout=0.5)

    def _prime(self) -> None:
        """Subscribe to the first ``prime_agents`` active agents in one call, then fill the state
        cache from a listing taken *after* subscribing, so no change falls between the two.

        Costs 2 * ceil(n / 500) + 1 Genesys calls once per process; afterwards an update to any primed
        agent needs no subscription call and no read of its current state.
        """
        if self.prime_agents <= 0 or self.channel_id is None:
            return
        try:
            ids = [u["id"] for u in self.client.list_active_users(self.prime_agents)]
            with self._lock:
                topics = self._topic_list()
                room = max(0, self.max_topics - len(topics))  # agents in use keep their place
                ids = [u for u in ids if u not in self.topics and u not in self._inflight][:room]
                if ids:
                    topics += [PRESENCE_TOPIC.format(u) for u in ids]
                    self.client.replace_subscriptions(self.channel_id, topics)
                # Subscribed only once the platform has answered (see _subscribe).
                for user_id in ids:
                    self.topics[user_id] = None
            self.subscribed.set()
            for user in self.client.list_active_users(self.prime_agents, expand_presence=True):
                presence = user.get("presence") or {}
                definition = presence.get("presenceDefinition") or {}
                if user["id"] in self.topics and "id" in definition:
                    self.cache.put(
                        user["id"],
                        AgentState(
                            definition["id"],
                            str(definition.get("systemPresence", "")),
                            parse_ms(presence.get("modifiedDate")),
                            "read",
                        ),
                    )
            self.primed.set()
        except (GenesysError, BudgetExhausted) as exc:
            log.warning("priming the notification channel failed (again at reconnect): %s", exc)
            self._priming.clear()

    def _disconnect(self) -> None:
        if self.connected.is_set():  # only this thread sets and clears it
            metrics.socket_disconnected(org=self.client.org)
        self.connected.clear()
        ws, self._ws = self._ws, None
        if ws is not None:
            try:
                ws.close(timeout=0.5)
            except Exception:
                ws.abort()  # type: ignore[no-untyped-call]

    def _read_until_closed(self) -> None:
        last_heard = time.monotonic()
        pinged = False
        while not self.stopping.is_set():
            ws = self._ws  # a channel switch replaces it
            assert ws is not None
            ws.settimeout(min(self.heartbeat_s / 2, MAINTAIN_EVERY_S))
            try:
                data = _receive(ws)
            except websocket.WebSocketTimeoutException:
                quiet = time.monotonic() - last_heard
                if quiet > self.heartbeat_s * 3:
                    log.info("notification socket silent for %.0f s; reconnecting", quiet)
                    return
                if quiet > self.heartbeat_s * 1.5 and not pinged:
                    ws.send(json.dumps({"message": "ping"}))
                    pinged = True
                self._maintain()
                continue
            if not data:
                return  # closed by the server
            last_heard, pinged = time.monotonic(), False
            if not self._handle(data):
                return
            self._maintain()

    def _maintain(self) -> None:
        """Keep the slot lease, the channel's token and the channel's life."""
        now = time.monotonic()
        if now - self._claimed_at > self.slots.lease_ms / 1000 * LEASE_RENEW_FRACTION:
            self.slots.claim()
            self._claimed_at = now
        token: str | None
        try:
            token = self.client.tokens.get()  # renews it when due
        except GenesysError as exc:
            log.warning("token check failed: %s", exc)
            token = self.channel_token
        if token is not None and self.channel_token is not None and token != self.channel_token:
            self._switch_channel(token)
        elif now - self.channel_since > self.extend_after_s and self.channel_id:
            with self._lock:
                try:
                    self.client.replace_subscriptions(self.channel_id, self._topic_list())
                    self.channel_since = time.monotonic()
                except (GenesysError, BudgetExhausted) as exc:
                    log.warning("channel extension failed: %s", exc)

    def _handle(self, data: bytes) -> bool:
        """Process one message (anything not a JSON object is ignored); False when the socket
        must be re-established."""
        try:
            message: object = json.loads(data)
        except ValueError:  # not JSON, or not UTF-8 (UnicodeDecodeError)
            return True
        if not isinstance(message, dict):
            return True
        if message.get("result") == "404":
            self.channel_id = self.connect_uri = None  # the channel is gone: make a new one
            return False
        topic = str(message.get("topicName", ""))
        if topic.startswith("v2.system."):
            return self._on_system(topic, message)
        if topic.endswith(".presence") and topic.startswith("v2.users."):
            self._on_presence(topic[len("v2.users.") : -len(".presence")], message)
        return True

    def _on_system(self, topic: str, message: dict[str, Any]) -> bool:
        """``socket_closing``: reconnect to the same URI. Anything else (``token_revoked``,
        ``no_longer_subscribed``, ``subscription_changed``, kinds not known yet): the channel
        can no longer be trusted to carry our topics, so make a new one."""
        body = message.get("eventBody") or {}
        kind = (
            "socket_closing"
            if topic == SOCKET_CLOSING
            else str(body.get("systemTopicType") or topic.removeprefix("v2.system.").split(".")[0])
        )
        self.system_messages[kind] = self.system_messages.get(kind, 0) + 1
        log.info("notification channel system message %s (%s)", kind, body.get("reason", ""))
        if topic != SOCKET_CLOSING:
            self.channel_id = self.connect_uri = None
        return False

    def _on_presence(self, user_id: str, message: dict[str, Any]) -> None:
        """A presence event; one whose shape is not the platform's is ignored."""
        body = message.get("eventBody")
        if not isinstance(body, dict):
            return
        definition = body.get("presenceDefinition")
        if not isinstance(definition, dict) or not isinstance(definition.get("id"), str):
            return
        metadata = message.get("metadata")
        correlation_id = metadata.get("CorrelationId") if isinstance(metadata, dict) else None
        event = PresenceEvent(
            user_id=user_id,
            definition_id=definition["id"],
            system_presence=str(definition.get("systemPresence", "")),
            modified_ms=parse_ms(body.get("modifiedDate")),
            correlation_id=correlation_id if isinstance(correlation_id, str) else None,
        )
        waiters = self.waiters.of(user_id)
        # The write this event confirms was stored by this process already and its waiter is
        # here to take the event: another copy in the shared cache would be a wasted write.
        if not (
            waiters and self.cache.stored_here(user_id, event.definition_id, event.modified_ms)
        ):
            self.cache.put(
                user_id,
                AgentState(event.definition_id, event.system_presence, event.modified_ms, "event"),
            )
        for waiter in waiters:
            waiter.push(event)


def _receive(ws: websocket.WebSocket) -> bytes:
    """The next text or binary message's bytes, as sent; ``b""`` when the socket closed (a close
    frame, or an empty message, which the platform never sends)."""
    with ws.readlock:
        opcode, data = ws.recv_data()
    if opcode in (websocket.ABNF.OPCODE_TEXT, websocket.ABNF.OPCODE_BINARY):
        return bytes(data)
    return b""
