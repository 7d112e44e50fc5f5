"""Notification channels, their topic subscriptions and the sockets that read them.

Limits follow the platform (reference §4.4): channels per OAuth client (the next one evicts the
oldest, unconnected ones first), topics per channel, one socket per channel (a second one drops
the first with ``no_longer_subscribed``), channel expiry extended by re-subscribing, heartbeats on
``channel.metadata``. A channel is bound to the token that created it (``token_bound_channels``):
when that token expires or is revoked the socket gets ``token_revoked`` and the channel closes.
System messages carry the SDK's ``SystemMessageSystemMessage`` body (see :func:`system_body`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import secrets
import string
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from emulator.auth import Token
from emulator.config import Limits
from emulator.faults import Faults
from emulator.world import iso

log = logging.getLogger(__name__)

TOPIC_PATTERN = re.compile(
    r"^v2\.users\.(?P<user>[0-9a-fA-F-]{36})\.(?P<kind>presence|routingStatus|activity)$"
)


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """A served user topic: who may read it (any one permission) and what it carries."""

    permissions: tuple[str, ...]
    description: str
    api_path: str


TOPICS = {
    "presence": TopicSpec(
        ("presence:userPresence:view", "presence:userPresence:edit"),
        "A user's presence changed.",
        "/presences",
    ),
    "routingStatus": TopicSpec(
        ("routing:agent:view", "routing:routingStatus:view"),
        "A user's routing status changed.",
        "/routingstatus",
    ),
    "activity": TopicSpec(
        ("presence:userPresence:view", "routing:agent:view"),
        "A user's presence, routing status or queue activity changed.",
        "",
    ),
}
HEARTBEAT = json.dumps(
    {"topicName": "channel.metadata", "eventBody": {"message": "WebSocket Heartbeat"}}
)
PONG = json.dumps({"topicName": "channel.metadata", "eventBody": {"message": "pong"}})
OUTBOX_MAX = 10_000
# The default org's id (``organizationId`` in system messages); another org's is derived from
# its name.
ORGANIZATION_ID = "4c5a1b3e-9f0d-4e8a-b2c7-0e6f1d2a3b4c"
# ``SystemMessageSystemMessage`` enums in the official SDK models.
SYSTEM_TOPIC_TYPES = ("no_longer_subscribed", "subscription_changed", "token_revoked")
SYSTEM_REASONS = ("another_channel_subscribed", "user_tokens_revoked")
_ALPHABET = string.ascii_lowercase + string.digits


@dataclass(eq=False, slots=True)
class Socket:
    """One open WebSocket on a channel, with the task that writes to it."""

    ws: web.WebSocketResponse
    request: web.Request
    # A str is sent as a text frame; bytes (the admin's raw frames) as a text frame of exactly
    # those bytes, valid UTF-8 or not.
    outbox: asyncio.Queue[str | bytes] = field(default_factory=lambda: asyncio.Queue(OUTBOX_MAX))
    dropped_events: int = 0

    def offer(self, text: str | bytes) -> None:
        try:
            self.outbox.put_nowait(text)
        except asyncio.QueueFull:
            self.dropped_events += 1

    def abort(self) -> None:
        """Cut the connection without a close frame, as a network failure would."""
        transport = self.request.transport
        if transport is not None:
            transport.abort()


@dataclass(eq=False, slots=True)
class Channel:
    id: str
    client_id: str
    connect_uri: str
    expires_at: float
    last_used: float
    topics: dict[str, None] = field(default_factory=dict)  # ordered set
    socket: Socket | None = None
    closing: bool = False
    token: Token | None = None  # the token that created it; binds the channel when enabled

    def json(self) -> dict[str, Any]:
        return {"connectUri": self.connect_uri, "id": self.id, "expires": iso(self.expires_at)}


class NotificationHub:
    """All channels of one org's clients, and the fan-out of events to their sockets."""

    def __init__(
        self,
        limits: Limits,
        faults: Faults,
        *,
        clock: Callable[[], float] = time.time,
        organization_id: str = ORGANIZATION_ID,
    ) -> None:
        self.organization_id = organization_id
        self.limits = limits
        self.faults = faults
        self.clock = clock
        self.channels: dict[str, Channel] = {}
        self.by_topic: dict[str, set[Channel]] = {}
        self.events_published = 0
        self.events_delivered = 0
        self.events_lost = 0
        self._counter = 0

    # -- channels -----------------------------------------------------------------------
    def create_channel(self, client_id: str, ws_base: str, token: Token | None = None) -> Channel:
        """A new channel; evicts the client's oldest channel (unconnected first) at the cap."""
        self.expire_channels()
        owned = [c for c in self.channels.values() if c.client_id == client_id]
        if len(owned) >= self.limits.max_channels:
            owned.sort(key=lambda c: (c.socket is not None, c.last_used))
            self.remove_channel(owned[0], reason="Channel replaced by a newer channel")
        self._counter += 1
        suffix = "".join(secrets.choice(_ALPHABET) for _ in range(26))
        channel_id = f"streaming-{self._counter % 10}-{suffix}"
        now = self.clock()
        channel = Channel(
            id=channel_id,
            client_id=client_id,
            connect_uri=f"{ws_base}/channels/{channel_id}",
            expires_at=now + self.limits.channel_ttl_s,
            last_used=now,
            token=token,
        )
        self.channels[channel_id] = channel
        return channel

    def get(self, channel_id: str, client_id: str | None = None) -> Channel | None:
        channel = self.channels.get(channel_id)
        if channel is None or (client_id is not None and channel.client_id != client_id):
            return None
        if channel.expires_at <= self.clock():
            self.remove_channel(channel, reason="Channel expired")
            return None
        if self.token_ended(channel):
            self.end_for_token(channel)
            return None
        return channel

    def token_ended(self, channel: Channel) -> bool:
        """Whether the channel's token has expired or been revoked (and binding is on)."""
        token = channel.token
        if token is None or not self.limits.token_bound_channels:
            return False
        return token.revoked or token.expires_at <= self.clock()

    def end_for_token(self, channel: Channel) -> None:
        """``token_revoked`` on the socket, then the channel closes (its 404 message last)."""
        token = channel.token
        revoked = token is not None and token.revoked
        self.system_message(
            channel,
            "token_revoked",
            "The token this channel was created with was revoked."
            if revoked
            else "The token this channel was created with expired.",
            reason="user_tokens_revoked" if revoked else None,
        )
        self.remove_channel(channel, reason="Channel closed: its token is no longer valid")

    def end_token_channels(self) -> int:
        """Close every channel whose token has ended; returns how many (admin token calls)."""
        hit = [c for c in self.channels.values() if self.token_ended(c)]
        for channel in hit:
            self.end_for_token(channel)
        return len(hit)

    def remove_channel(self, channel: Channel, *, reason: str) -> None:
        self.channels.pop(channel.id, None)
        for topic in channel.topics:
            subscribers = self.by_topic.get(topic)
            if subscribers is not None:
                subscribers.discard(channel)
                if not subscribers:
                    del self.by_topic[topic]
        channel.topics.clear()
        if channel.socket is not None:
            sock, channel.socket = channel.socket, None
            sock.offer(json.dumps({"result": "404", "message": reason}))
            sock.offer("")  # sentinel: the writer closes after the message above

    def expire_channels(self) -> None:
        now = self.clock()
        for channel in [c for c in self.channels.values() if c.expires_at <= now]:
            self.remove_channel(channel, reason="Channel expired")
        self.end_token_channels()

    def subscribe(self, channel: Channel, topics: list[str], *, replace: bool) -> None:
        """Add (or replace with) ``topics``; extends the channel's life. Caller validated them."""
        if replace:
            for topic in list(channel.topics):
                self._unindex(channel, topic)
            channel.topics.clear()
        for topic in topics:
            if topic not in channel.topics:
                channel.topics[topic] = None
                self.by_topic.setdefault(topic, set()).add(channel)
        now = self.clock()
        channel.last_used = now
        channel.expires_at = now + self.limits.channel_ttl_s

    def _unindex(self, channel: Channel, topic: str) -> None:
        subscribers = self.by_topic.get(topic)
        if subscribers is not None:
            subscribers.discard(channel)
            if not subscribers:
                del self.by_topic[topic]

    # -- events -------------------------------------------------------------------------
    def publish(self, topic: str, body: dict[str, Any], correlation_id: str) -> None:
        """Fan an event out to every connected socket subscribed to ``topic``."""
        self.events_published += 1
        subscribers = self.by_topic.get(topic)
        if not subscribers:
            return
        text = json.dumps(
            {
                "topicName": topic,
                "version": "2",
                "eventBody": body,
                "metadata": {"CorrelationId": correlation_id},
            }
        )
        for channel in subscribers:
            sock = channel.socket
            if sock is None:
                continue  # no durability: events without a socket are gone
            fate = self.faults.event_fate()
            if fate is None:
                self.events_lost += 1
            elif fate == 0.0:
                self.events_delivered += 1
                sock.offer(text)
            else:
                self.events_delivered += 1
                asyncio.get_running_loop().call_later(fate, sock.offer, text)

    def system_message(
        self,
        channel: Channel,
        kind: str | None,
        message: str,
        *,
        reason: str | None = None,
        sock: Socket | None = None,
    ) -> None:
        """Queue a ``v2.system.*`` message on the channel's socket (or ``sock``)."""
        target = sock or channel.socket
        if target is None:
            return
        correlation_id = str(uuid.uuid4())
        topic = "v2.system.socket_closing" if kind is None else f"v2.system.{kind}.{channel.id}"
        target.offer(
            json.dumps(
                {
                    "topicName": topic,
                    "version": "2",
                    "eventBody": system_body(
                        channel, kind, message, reason, correlation_id, self.organization_id
                    ),
                    "metadata": {"CorrelationId": correlation_id},
                }
            )
        )

    # -- sockets ------------------------------------------------------------------------
    async def serve_socket(self, request: web.Request) -> web.StreamResponse:
        """The WebSocket at ``connectUri``: writes events and heartbeats, answers pings."""
        ws = web.WebSocketResponse(autoping=True, max_msg_size=64 * 1024)
        await ws.prepare(request)
        channel = self.get(request.match_info["channel_id"])
        if channel is None:
            await ws.send_str(json.dumps({"result": "404", "message": "Channel not found"}))
            await ws.close()
            return ws
        previous = channel.socket
        sock = Socket(ws=ws, request=request)
        channel.socket = sock
        channel.last_used = self.clock()
        if previous is not None:  # one socket per channel: the newer connection wins
            self.system_message(
                channel,
                "no_longer_subscribed",
                "Another WebSocket connected to this channel.",
                reason="another_channel_subscribed",
                sock=previous,
            )
            previous.offer("")
        writer = asyncio.create_task(self._write_loop(sock))
        heartbeat = asyncio.create_task(self._heartbeat_loop(sock))
        expiry = asyncio.create_task(self._expiry_watch(channel, sock))
        try:
            async for msg in ws:
                if msg.type.name != "TEXT":
                    continue
                self._on_client_text(channel, sock, msg.data)
        finally:
            heartbeat.cancel()
            expiry.cancel()
            if channel.socket is sock:
                channel.socket = None
            sock.offer("")
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(writer, timeout=1.0)
        return ws

    def _on_client_text(self, channel: Channel, sock: Socket, data: str) -> None:
        try:
            message = json.loads(data)
        except ValueError:
            return  # the platform tolerates arbitrary client text
        if isinstance(message, dict) and message.get("message") == "ping":
            channel.last_used = self.clock()
            sock.offer(PONG)

    async def _write_loop(self, sock: Socket) -> None:
        while True:
            text = await sock.outbox.get()
            if text == "" or sock.ws.closed:
                await sock.ws.close()
                return
            try:
                if isinstance(text, bytes):
                    await sock.ws.send_frame(text, web.WSMsgType.TEXT)
                else:
                    await sock.ws.send_str(text)
            except (ConnectionError, RuntimeError):
                return

    async def _heartbeat_loop(self, sock: Socket) -> None:
        while True:
            await asyncio.sleep(self.limits.heartbeat_s)
            if not self.faults.heartbeats_paused:
                sock.offer(HEARTBEAT)

    async def _expiry_watch(self, channel: Channel, sock: Socket) -> None:
        """Close the socket when its channel expires (re-subscribing pushes the moment back) or
        when the token it is bound to expires."""
        while channel.socket is sock:
            now = self.clock()
            remaining = channel.expires_at - now
            if remaining <= 0:
                self.remove_channel(channel, reason="Channel expired")
                return
            if self.token_ended(channel):
                self.end_for_token(channel)
                return
            if channel.token is not None and self.limits.token_bound_channels:
                remaining = min(remaining, max(0.01, channel.token.expires_at - now))
            await asyncio.sleep(min(remaining, 1.0))

    # -- faults -------------------------------------------------------------------------
    def targets(self, channel_id: str | None) -> list[Channel]:
        return [
            c for c in self.channels.values() if c.socket is not None and channel_id in (None, c.id)
        ]

    def drop_sockets(self, channel_id: str | None = None) -> int:
        hit = self.targets(channel_id)
        for channel in hit:
            if channel.socket is not None:
                channel.socket.abort()
        return len(hit)

    def send_raw(self, channel_id: str | None, frames: list[bytes]) -> int:
        """Send each of ``frames`` as a text frame of exactly those bytes (hostile input)."""
        hit = self.targets(channel_id)
        for channel in hit:
            if channel.socket is not None:
                for frame in frames:
                    channel.socket.offer(frame)
        return len(hit)

    def announce_closing(self, channel_id: str | None, grace_s: float) -> int:
        hit = self.targets(channel_id)
        loop = asyncio.get_running_loop()
        for channel in hit:
            self.system_message(channel, None, "The socket will close for maintenance.")
            sock = channel.socket
            if sock is not None:
                loop.call_later(grace_s, sock.offer, "")
        return len(hit)

    def announce(self, channel_id: str | None, kind: str, close: bool) -> int:
        """Send ``no_longer_subscribed`` or ``subscription_changed`` (admin); with ``close``
        the channel closes right after, as the platform does when it drops a subscription."""
        hit = self.targets(channel_id)
        for channel in hit:
            self.system_message(channel, kind, _ANNOUNCEMENTS[kind])
            if close:
                self.remove_channel(channel, reason="Channel closed")
        return len(hit)

    def close_all(self) -> None:
        for channel in list(self.channels.values()):
            self.remove_channel(channel, reason="Emulator reset")
        self.by_topic.clear()
        self.events_published = self.events_delivered = self.events_lost = 0

    def json(self) -> list[dict[str, Any]]:
        return [
            {
                "id": c.id,
                "clientId": c.client_id,
                "connected": c.socket is not None,
                "topics": len(c.topics),
                "expires": iso(c.expires_at),
                "lastUsed": iso(c.last_used),
            }
            for c in self.channels.values()
        ]


_ANNOUNCEMENTS = {
    "no_longer_subscribed": "This channel is no longer subscribed.",
    "subscription_changed": "This channel's subscriptions changed.",
}


def system_body(
    channel: Channel,
    kind: str | None,
    message: str,
    reason: str | None,
    correlation_id: str,
    organization_id: str = ORGANIZATION_ID,
) -> dict[str, Any]:
    """``SystemMessageSystemMessage``: ``systemTopicType`` and ``reason`` only take values of
    the SDK's enums (none fits a maintenance close, so ``socket_closing`` carries neither)."""
    body: dict[str, Any] = {
        "channelId": channel.id,
        "correlationId": correlation_id,
        "organizationId": organization_id,
        "userId": None,  # client-credentials channels belong to no user
        "oauthClientId": channel.client_id,
        "oauthClientOrgId": organization_id,
        "message": message,
        "data": {},
    }
    if kind is not None:
        assert kind in SYSTEM_TOPIC_TYPES, kind
        body["systemTopicType"] = kind
    if reason is not None:
        assert reason in SYSTEM_REASONS, reason
        body["reason"] = reason
    return {k: v for k, v in body.items() if v is not None}
