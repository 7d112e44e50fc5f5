"""Helpers shared by the notification and fault suites: channels over REST, sockets over WS.

Sockets use ``websocket-client`` exactly as a worker would: dial ``connectUri`` with no auth,
read text frames, write ``{"message":"ping"}``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import websocket
from websocket import ABNF

from tests.conftest import Api

METADATA_TOPIC = "channel.metadata"
HEARTBEAT = {"topicName": METADATA_TOPIC, "eventBody": {"message": "WebSocket Heartbeat"}}
PONG = {"topicName": METADATA_TOPIC, "eventBody": {"message": "pong"}}
Predicate = Callable[[dict[str, Any]], bool]
CLOSED = "close frame"
DROPPED = "dropped without a close frame"


def presence_topic(user_id: str) -> str:
    return f"v2.users.{user_id}.presence"


def routing_topic(user_id: str) -> str:
    return f"v2.users.{user_id}.routingStatus"


def create_channel(http: httpx.Client) -> dict[str, Any]:
    response = http.post("/api/v2/notifications/channels")
    assert response.status_code == 200, response.text
    channel: dict[str, Any] = response.json()
    return channel


def subscribe(
    http: httpx.Client, channel_id: str, topics: list[str], *, method: str = "PUT"
) -> httpx.Response:
    return http.request(
        method,
        f"/api/v2/notifications/channels/{channel_id}/subscriptions",
        json=[{"id": topic} for topic in topics],
    )


def definition_ids(http: httpx.Client) -> dict[str, str]:
    """Presence definition name (``On Queue``, ``Coffee``, …) → id."""
    response = http.get("/api/v2/presence/definitions")
    assert response.status_code == 200, response.text
    return {d["name"]: d["id"] for d in response.json()["entities"]}


def set_presence(http: httpx.Client, user_id: str, definition_id: str) -> httpx.Response:
    response = http.patch(
        f"/api/v2/users/{user_id}/presences/purecloud",
        json={"presenceDefinition": {"id": definition_id}},
    )
    assert response.status_code == 200, response.text
    return response


def offline_users(api: Api, count: int) -> list[str]:
    """Active agents seeded Offline (so OFF_QUEUE, with no interactions)."""
    ids = [str(u["id"]) for u in api.active_users() if u["systemPresence"] == "Offline"]
    assert len(ids) >= count
    return ids[:count]


def listen(
    http: httpx.Client, streams: list[Stream], topics: list[str]
) -> tuple[dict[str, Any], Stream]:
    """A new channel subscribed to ``topics``, with a connected socket appended to ``streams``."""
    channel = create_channel(http)
    response = subscribe(http, channel["id"], topics)
    assert response.status_code == 200, response.text
    stream = Stream.open(channel["connectUri"])
    streams.append(stream)
    return channel, stream


def is_metadata(message: dict[str, Any]) -> bool:
    return message.get("topicName") == METADATA_TOPIC


@dataclass
class Stream:
    """One client socket on a channel, read with deadlines instead of blocking forever."""

    ws: websocket.WebSocket
    received: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def open(cls, connect_uri: str, *, sync: bool = True) -> Stream:
        """Dial ``connect_uri``; with ``sync`` wait for a pong so the server has registered it."""
        stream = cls(websocket.create_connection(connect_uri, timeout=3))
        if sync:
            stream.sync()
        return stream

    def close(self) -> None:
        self.ws.close(timeout=0.5)

    def send(self, message: object) -> None:
        self.ws.send(json.dumps(message))

    def sync(self, timeout: float = 3.0) -> None:
        """Ping and wait for the pong: everything the server queued before it has arrived."""
        self.send({"message": "ping"})
        self.wait_for(lambda m: m == PONG, timeout)

    def next_message(self, timeout: float) -> dict[str, Any] | None:
        """The next text message, or None if none arrives within ``timeout`` seconds.

        Raises :class:`SocketClosedError` on a close frame, and websocket-client's
        ``WebSocketConnectionClosedException`` (or an ``OSError``) when the connection drops.
        """
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self.ws.settimeout(remaining)
            try:
                opcode, frame = self.ws.recv_data_frame(control_frame=True)
            except websocket.WebSocketTimeoutException:
                return None
            if opcode == ABNF.OPCODE_CLOSE:
                raise SocketClosedError
            if opcode == ABNF.OPCODE_TEXT:
                message: dict[str, Any] = json.loads(frame.data)
                self.received.append(message)
                return message

    def wait_for(self, predicate: Predicate, timeout: float = 3.0) -> dict[str, Any]:
        """The first message matching ``predicate``; fails the test after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            message = self.next_message(max(0.0, deadline - time.monotonic()))
            if message is None:
                raise AssertionError(f"no matching message within {timeout}s; got {self.received}")
            if predicate(message):
                return message

    def next_event(self, timeout: float = 3.0) -> dict[str, Any]:
        """The next message that is not ``channel.metadata`` (heartbeat, pong)."""
        return self.wait_for(lambda m: not is_metadata(m), timeout)

    def messages_within(self, seconds: float) -> list[dict[str, Any]]:
        """Every message, heartbeats included, arriving in the next ``seconds``."""
        deadline = time.monotonic() + seconds
        out = []
        while (remaining := deadline - time.monotonic()) > 0:
            message = self.next_message(remaining)
            if message is not None:
                out.append(message)
        return out

    def wait_end(self, timeout: float = 3.0) -> tuple[str, list[dict[str, Any]]]:
        """How the socket ended (``CLOSED`` or ``DROPPED``) and what arrived before.

        Heartbeats and pongs are left out of the returned messages.
        """
        deadline = time.monotonic() + timeout
        messages: list[dict[str, Any]] = []
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"socket still open after {timeout}s; got {messages}")
            try:
                message = self.next_message(remaining)
            except SocketClosedError:
                return CLOSED, messages
            except (websocket.WebSocketConnectionClosedException, ConnectionError, OSError):
                return DROPPED, messages
            if message is not None and not is_metadata(message):
                messages.append(message)


class SocketClosedError(Exception):
    """The server sent a close frame."""
