"""Notification channels and subscriptions over REST; the socket at ``connectUri`` (§4)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from emulator.auth import OAuthClient
from emulator.errors import bad_request, detail, missing_permission, not_found
from emulator.http import bool_query, parse_list, read_json, respond
from emulator.notifications import TOPIC_PATTERN, TOPICS, Channel
from emulator.schemas import TopicRef
from emulator.server import ORG_KEY, Org, emulator_of, process_of, token_of


def _channel(request: web.Request) -> Channel:
    emu = emulator_of(request)
    channel = emu.hub.get(request.match_info["channel_id"], token_of(request).client.client_id)
    if channel is None:
        raise not_found(f"Channel {request.match_info['channel_id']}")
    return channel


def _listing(channel: Channel, rejected: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    entities: list[dict[str, Any]] = [
        {
            "id": topic,
            "state": "Permitted",
            "selfUri": f"/api/v2/notifications/availabletopics/{topic}",
        }
        for topic in channel.topics
    ]
    return {"entities": entities + (rejected or [])}


def _ws_base(request: web.Request) -> str:
    return f"{'wss' if request.secure else 'ws'}://{request.host}"


async def create_channel(request: web.Request) -> web.Response:
    emu = emulator_of(request)
    token = token_of(request)
    channel = emu.hub.create_channel(token.client.client_id, _ws_base(request), token)
    return respond(channel.json())


async def list_channels(request: web.Request) -> web.Response:
    emu = emulator_of(request)
    emu.hub.expire_channels()
    client_id = token_of(request).client.client_id
    return respond(
        {"entities": [c.json() for c in emu.hub.channels.values() if c.client_id == client_id]}
    )


async def head_channel(request: web.Request) -> web.Response:
    _channel(request)
    return web.Response(status=200)


async def get_subscriptions(request: web.Request) -> web.Response:
    return respond(_listing(_channel(request)))


def _validate_topics(
    emu: Org, client: OAuthClient, topics: list[str], ignore_errors: bool
) -> tuple[list[str], list[dict[str, Any]]]:
    """Accepted topics and ``Rejected`` entries; without ``ignoreErrors`` a bad topic is a 400
    and a topic the client may not read is a 403 for the whole call."""
    accepted: list[str] = []
    rejected: list[dict[str, Any]] = []
    for index, topic in enumerate(topics):
        match = TOPIC_PATTERN.match(topic)
        reason = None
        if match is None:
            reason = f"Topic {topic} is not a supported topic"
        elif emu.world.user(match["user"]) is None:
            reason = f"Topic {topic} names an unknown user"
        else:
            needed = TOPICS[match["kind"]].permissions
            if not any(client.allows(p) for p in needed):
                if not ignore_errors:
                    raise missing_permission(", ".join(needed))
                reason = f"Topic {topic} requires one of the permissions {', '.join(needed)}"
        if reason is None:
            accepted.append(topic)
        elif ignore_errors:
            rejected.append({"id": topic, "state": "Rejected", "rejectionReason": reason})
        else:
            raise bad_request(f"{reason}.", [detail(f"[{index}].id", "bad.request", topic)])
    return accepted, rejected


async def _subscribe(request: web.Request, *, replace: bool) -> web.Response:
    emu = emulator_of(request)
    channel = _channel(request)
    topics = [
        t.id for t in parse_list(TopicRef, await read_json(request, emu.limits.max_body_bytes))
    ]
    accepted, rejected = _validate_topics(
        emu, token_of(request).client, topics, bool_query(request, "ignoreErrors", False)
    )
    resulting = set(accepted) | (set() if replace else set(channel.topics))
    if len(resulting) > emu.limits.max_topics:
        raise bad_request(
            f"A channel may hold at most {emu.limits.max_topics} topics; this request would "
            f"leave {len(resulting)}.",
            [detail("body")],
        )
    emu.hub.subscribe(channel, accepted, replace=replace)
    return respond(_listing(channel, rejected))


async def add_subscriptions(request: web.Request) -> web.Response:
    return await _subscribe(request, replace=False)


async def replace_subscriptions(request: web.Request) -> web.Response:
    return await _subscribe(request, replace=True)


async def delete_subscriptions(request: web.Request) -> web.Response:
    emu = emulator_of(request)
    channel = _channel(request)
    emu.hub.subscribe(channel, [], replace=True)
    return web.Response(status=200)


async def available_topics(request: web.Request) -> web.Response:
    """``AvailableTopicEntityListing`` of the topics this emulator serves."""
    entities = [
        {
            "id": f"v2.users.{{id}}.{kind}",
            "description": spec.description,
            "requiresPermissions": list(spec.permissions),
            "requiresDivisionPermissions": False,
            "enforced": True,
            "visibility": "Public",
            "transports": ["Websocket", "EventBridge"],
            "publicApiTemplateUriPaths": [f"/api/v2/users/{{id}}{spec.api_path}"],
            "topicParameters": ["id"],
        }
        for kind, spec in TOPICS.items()
    ]
    return respond({"entities": entities})


async def socket(request: web.Request) -> web.StreamResponse:
    """The socket of whichever org owns the channel (an unknown one: ``default``'s 404)."""
    org = process_of(request).org_of_channel(request.match_info["channel_id"])
    if org is not None:
        request[ORG_KEY] = org
    return await emulator_of(request).hub.serve_socket(request)


def register(router: web.UrlDispatcher) -> None:
    base = "/api/v2/notifications/channels"
    router.add_post(base, create_channel, name="notifications.channels.create")
    router.add_get(base, list_channels, name="notifications.channels.list")
    router.add_route(
        "HEAD", base + "/{channel_id}", head_channel, name="notifications.channels.head"
    )
    subs = base + "/{channel_id}/subscriptions"
    router.add_get(subs, get_subscriptions, name="notifications.subscriptions.get")
    router.add_post(subs, add_subscriptions, name="notifications.subscriptions.post")
    router.add_put(subs, replace_subscriptions, name="notifications.subscriptions.put")
    router.add_delete(subs, delete_subscriptions, name="notifications.subscriptions.delete")
    router.add_get("/channels/{channel_id}", socket, name="notifications.socket")
    router.add_get(
        "/api/v2/notifications/availabletopics",
        available_topics,
        name="notifications.availabletopics",
    )
