"""Notification channels, their topic subscriptions and the sockets that read them.

Limits follow the platform (reference §4.4): channels per OAuth client (the next one evicts the
oldest, unconnected ones first), topics per channel, one socket per channel (a second one drops
the first), channel expiry extended by re-subscribing, heartbeats on ``channel.metadata``.
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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from emulator.config import Limits
from emulator.faults import Faults
from emulator.world import iso

log = logging.getLogger(__name__)

TOPIC_PATTERN = re.compile(
    r"^v2\.users\.(?P<user>[0-9a-fA-F-]{36})\.(?P<kind>presence|routingStatus)$"
)
HEARTBEAT = json.dumps(
    {"topicName": "channel.metadata", "eventBody": {"message": "WebSocket Heartbeat"}}
)
PONG = json.dumps({"topicName": "channel.metadata", "eventBody": {"message": "pong"}})
OUTBOX_MAX = 10_000
_ALPHABET = string.ascii_lowercase + string.digits


@dataclass(eq=False, slots=True)
class Socket:
    """One open WebSocket on a channel, with the task that writes to it."""

    ws: web.WebSocketResponse
    request: web.Request
    outbox: asyncio.Queue[str] = field(default_factory=lambda: asyncio.Queue(OUTBOX_MAX))
    dropped_events: int = 0

    def offer(self, text: str) -> None:
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

    def json(self) -> dict[str, Any]:
        return {"connectUri": self.connect_uri, "id": self.id, "expires": iso(self.expires_at)}


class NotificationHub:
    """All channels of all clients, and the fan-out of events to their sockets."""

    def __init__(
        self, limits: Limits, faults: Faults, *, clock: Callable[[], float] = time.time
    ) -> None:
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
    def create_channel(self, client_id: str, ws_base: str) -> Channel:
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
        return channel

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

    def system_message(self, channel: Channel, kind: str, message: str) -> None:
        if channel.socket is None:
            return
        body = {
            "channelId": channel.id,
            "systemTopicType": kind,
            "oauthClientId": channel.client_id,
            "reason": message,
            "message": message,
        }
        channel.socket.offer(
            json.dumps({"topicName": f"v2.system.{kind}", "version": "2", "eventBody": body})
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
        if previous is not None:
            previous.offer("")  # one socket per channel: the newer connection wins
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
                await sock.ws.send_str(text)
            except (ConnectionError, RuntimeError):
                return

    async def _heartbeat_loop(self, sock: Socket) -> None:
        while True:
            await asyncio.sleep(self.limits.heartbeat_s)
            if not self.faults.heartbeats_paused:
                sock.offer(HEARTBEAT)

    async def _expiry_watch(self, channel: Channel, sock: Socket) -> None:
        """Close the socket when its channel expires; re-subscribing pushes the moment back."""
        while channel.socket is sock:
            remaining = channel.expires_at - self.clock()
            if remaining <= 0:
                self.remove_channel(channel, reason="Channel expired")
                return
            await asyncio.sleep(min(remaining, 60.0))

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

    def announce_closing(self, channel_id: str | None, grace_s: float) -> int:
        hit = self.targets(channel_id)
        loop = asyncio.get_running_loop()
        for channel in hit:
            self.system_message(channel, "socket_closing", "Socket will close for maintenance")
            sock = channel.socket
            if sock is not None:
                loop.call_later(grace_s, sock.offer, "")
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
