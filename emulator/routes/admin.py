"""``/__emulator``: inject faults, steer agents and queues, inspect what happened, reset.

Not part of the platform: no auth, no rate limit, never counted against a token. Every call acts
on the org ``?org=NAME`` selects (``default`` without it); ``/__emulator/orgs`` lists and adds
orgs, and a reset without ``?org`` resets the whole process.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from emulator.config import ORG_NAME, OrgSpec, org_client_secret
from emulator.errors import ApiError, bad_request, not_found
from emulator.faults import ANY_ROUTE, ErrorFault, EventFault, LatencyFault
from emulator.http import parse, read_json, respond
from emulator.server import ORG_KEY, Org, correlation_of, emulator_of, process_of
from emulator.world import Change, User

PREFIX = "/__emulator"


class _Admin(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SettingsBody(_Admin):
    token_lifetime_s: int | None = Field(default=None, ge=1)
    rate_limit_per_minute: int | None = Field(default=None, ge=0)
    bulk_max: int | None = Field(default=None, ge=1)
    heartbeat_s: float | None = Field(default=None, gt=0)
    channel_ttl_s: float | None = Field(default=None, gt=0)
    max_channels: int | None = Field(default=None, ge=1)
    max_topics: int | None = Field(default=None, ge=1)
    socket_closing_grace_s: float | None = Field(default=None, ge=0)
    token_bound_channels: bool | None = None
    presence_defer_s: float | None = Field(default=None, ge=0)


class LatencyBody(_Admin):
    endpoint: str = ANY_ROUTE
    latency_ms: float = Field(ge=0)
    jitter_ms: float = Field(default=0, ge=0)


class ErrorBodyIn(_Admin):
    endpoint: str = ANY_ROUTE
    status: int = Field(ge=400, le=599)
    rate: float = Field(default=1.0, gt=0, le=1)
    count: int | None = Field(default=None, ge=1)
    retry_after_s: int | None = Field(default=None, ge=0)
    code: str | None = None
    message: str | None = None
    after: int = Field(default=0, ge=0)


class StormBody(_Admin):
    seconds: float = Field(gt=0)
    retry_after_s: int = Field(default=5, ge=1)


class EventsBody(_Admin):
    delay_ms: float = Field(default=0, ge=0)
    jitter_ms: float = Field(default=0, ge=0)
    loss_rate: float = Field(default=0, ge=0, le=1)
    lose_next: int = Field(default=0, ge=0)


class HeartbeatBody(_Admin):
    paused: bool


class ClientBody(_Admin):
    client_id: str
    client_secret: str
    permissions: list[str]
    client_credentials_grant: bool = True


class TokensBody(_Admin):
    client_id: str | None = None


class SocketsBody(_Admin):
    channel_id: str | None = None
    close_after_s: float | None = Field(default=None, ge=0)


class RawFramesBody(_Admin):
    channel_id: str | None = None
    frames_base64: list[str] = Field(min_length=1, max_length=1000)


class SystemMessageBody(_Admin):
    kind: Literal["no_longer_subscribed", "subscription_changed"]
    channel_id: str | None = None
    close: bool = True


class PresenceBody(_Admin):
    presence: str  # definition id, label or system presence name
    message: str | None = None


class WorkBody(_Admin):
    interactions: int | None = Field(default=None, ge=0)
    not_responding: bool | None = None


class WaitingBody(_Admin):
    waiting: int = Field(ge=0)


class OrgBody(_Admin):
    name: str = Field(pattern=ORG_NAME.pattern)
    users: int | None = Field(default=None, ge=1)
    queues: int | None = Field(default=None, ge=0)
    seed: int | None = None
    rate_limit_per_minute: int | None = Field(default=None, ge=0)
    shared_user_ids: bool | None = None


async def _body(request: web.Request, model: type[Any]) -> Any:
    return parse(model, await read_json(request, emulator_of(request).limits.max_body_bytes))


def _user(emu: Org, user_id: str) -> User:
    user = emu.world.user(user_id)
    if user is None:
        raise not_found(f"User {user_id}")
    return user


# -- lifecycle and settings ------------------------------------------------------------------
async def reset(request: web.Request) -> web.Response:
    """``?org=NAME`` resets that org only; without it every org (run-time ones are dropped)."""
    if ORG_KEY in request:
        emulator_of(request).reset()
    else:
        process_of(request).reset()
    return respond({"reset": True})


# -- orgs -----------------------------------------------------------------------------------
async def list_orgs(request: web.Request) -> web.Response:
    return respond([org.json() for org in process_of(request).orgs.values()])


async def add_org(request: web.Request) -> web.Response:
    """Serve one more org from now on (until the next full reset); answers its credentials."""
    process = process_of(request)
    body: OrgBody = await _body(request, OrgBody)
    spec = OrgSpec(body.name, body.users, body.queues, body.seed, body.rate_limit_per_minute)
    shared = (
        process.config.shared_user_ids if body.shared_user_ids is None else body.shared_user_ids
    )
    try:
        org = process.add_org(spec, shared_user_ids=shared)
    except ValueError as exc:
        raise ApiError(409, f"{exc}.") from None
    return respond(org.json() | {"clientSecret": org_client_secret(org.name)})


async def get_settings(request: web.Request) -> web.Response:
    emu = emulator_of(request)
    limits = emu.limits
    return respond(
        {name: getattr(limits, name) for name in limits.__slots__}
        | {
            "users": emu.shape.users,
            "queues": emu.shape.queues,
            "seed": emu.shape.seed,
        }
    )


async def put_settings(request: web.Request) -> web.Response:
    emu = emulator_of(request)
    body: SettingsBody = await _body(request, SettingsBody)
    for name, value in body.model_dump(exclude_none=True).items():
        setattr(emu.limits, name, value)
    return await get_settings(request)


# -- faults ---------------------------------------------------------------------------------
async def add_latency(request: web.Request) -> web.Response:
    emu = emulator_of(request)
    body: LatencyBody = await _body(request, LatencyBody)
    emu.faults.latency.append(LatencyFault(body.endpoint, body.latency_ms, body.jitter_ms))
    return respond(emu.faults.json())


async def add_error(request: web.Request) -> web.Response:
    emu = emulator_of(request)
    body: ErrorBodyIn = await _body(request, ErrorBodyIn)
    emu.faults.errors.append(
        ErrorFault(
            body.endpoint,
            body.status,
            body.rate,
            body.count,
            body.retry_after_s,
            body.code,
            body.message,
            body.after,
        )
    )
    return respond(emu.faults.json())


async def storm(request: web.Request) -> web.Response:
    emu = emulator_of(request)
    body: StormBody = await _body(request, StormBody)
    emu.faults.storm_until = emu.clock() + body.seconds
    emu.faults.storm_retry_after_s = body.retry_after_s
    return respond(emu.faults.json())


async def events(request: web.Request) -> web.Response:
    emu = emulator_of(request)
    body: EventsBody = await _body(request, EventsBody)
    emu.faults.events = EventFault(body.delay_ms, body.jitter_ms, body.loss_rate, body.lose_next)
    return respond(emu.faults.json())


async def heartbeats(request: web.Request) -> web.Response:
    emu = emulator_of(request)
    body: HeartbeatBody = await _body(request, HeartbeatBody)
    emu.faults.heartbeats_paused = body.paused
    return respond(emu.faults.json())


async def get_faults(request: web.Request) -> web.Response:
    return respond(emulator_of(request).faults.json())


async def clear_faults(request: web.Request) -> web.Response:
    emu = emulator_of(request)
    emu.faults.clear()
    return respond(emu.faults.json())


# -- clients, tokens, sockets ---------------------------------------------------------------
async def add_client(request: web.Request) -> web.Response:
    emu = emulator_of(request)
    body: ClientBody = await _body(request, ClientBody)
    owner = process_of(request).org_of_client(body.client_id)
    if owner is not None and owner is not emu:
        raise ApiError(409, f"Client {body.client_id!r} belongs to org {owner.name!r}.")
    emu.auth.add_client(
        body.client_id,
        body.client_secret,
        frozenset(body.permissions),
        client_credentials_grant=body.client_credentials_grant,
    )
    return respond({"client_id": body.client_id, "permissions": sorted(body.permissions)})


async def revoke_tokens(request: web.Request) -> web.Response:
    body: TokensBody = await _body(request, TokensBody)
    emu = emulator_of(request)
    revoked = emu.auth.revoke(body.client_id)
    emu.hub.end_token_channels()
    return respond({"revoked": revoked})


async def expire_tokens(request: web.Request) -> web.Response:
    body: TokensBody = await _body(request, TokensBody)
    emu = emulator_of(request)
    expired = emu.auth.expire(body.client_id)
    emu.hub.end_token_channels()
    return respond({"expired": expired})


async def drop_sockets(request: web.Request) -> web.Response:
    body: SocketsBody = await _body(request, SocketsBody)
    return respond({"dropped": emulator_of(request).hub.drop_sockets(body.channel_id)})


async def socket_closing(request: web.Request) -> web.Response:
    emu = emulator_of(request)
    body: SocketsBody = await _body(request, SocketsBody)
    grace = (
        body.close_after_s if body.close_after_s is not None else emu.limits.socket_closing_grace_s
    )
    return respond({"notified": emu.hub.announce_closing(body.channel_id, grace)})


async def system_message(request: web.Request) -> web.Response:
    """``no_longer_subscribed`` / ``subscription_changed`` on one or every connected channel."""
    emu = emulator_of(request)
    body: SystemMessageBody = await _body(request, SystemMessageBody)
    return respond({"notified": emu.hub.announce(body.channel_id, body.kind, body.close)})


async def raw_frames(request: web.Request) -> web.Response:
    """Text frames of arbitrary bytes (base64 in the body: not JSON, not UTF-8, anything) on one
    or every connected channel, in order, between the events."""
    emu = emulator_of(request)
    body: RawFramesBody = await _body(request, RawFramesBody)
    try:
        frames = [base64.b64decode(frame, validate=True) for frame in body.frames_base64]
    except binascii.Error:
        raise bad_request("frames_base64: every frame must be base64.") from None
    return respond({"sent": emu.hub.send_raw(body.channel_id, frames)})


# -- agents and queues ----------------------------------------------------------------------
async def set_presence(request: web.Request) -> web.Response:
    """A change made outside the API (an agent in the UI, a supervisor): events as usual."""
    emu = emulator_of(request)
    body: PresenceBody = await _body(request, PresenceBody)
    user = _user(emu, request.match_info["user_id"])
    definition = emu.world.definitions.find(body.presence)
    if definition is None:
        raise bad_request(f"Unknown presence {body.presence!r}.")
    change = Change("admin", correlation_of(request), None, f"PUT {request.path}")
    emu.world.set_presence(user, definition, change, message=body.message)
    return respond(emu.world.presence_json(user))


async def set_work(request: web.Request) -> web.Response:
    emu = emulator_of(request)
    body: WorkBody = await _body(request, WorkBody)
    user = _user(emu, request.match_info["user_id"])
    change = Change("admin", correlation_of(request), None, f"PUT {request.path}")
    emu.world.set_work(
        user, change, interactions=body.interactions, not_responding=body.not_responding
    )
    return respond(emu.world.routing_json(user))


async def set_waiting(request: web.Request) -> web.Response:
    emu = emulator_of(request)
    body: WaitingBody = await _body(request, WaitingBody)
    queue = emu.world.queues.get(request.match_info["queue_id"])
    if queue is None:
        raise not_found(f"Queue {request.match_info['queue_id']}")
    queue.waiting = body.waiting
    return respond({"queueId": queue.id, "waiting": queue.waiting})


# -- inspection -----------------------------------------------------------------------------
async def history(request: web.Request) -> web.Response:
    """Presence history per agent; ``?user_id=`` (repeatable) narrows it."""
    emu = emulator_of(request)
    wanted = request.query.getall("user_id", [])
    out = {
        user_id: [entry.json() for entry in entries]
        for user_id, entries in emu.world.history.items()
        if not wanted or user_id in wanted
    }
    return respond(out)


async def stats(request: web.Request) -> web.Response:
    emu = emulator_of(request)
    tokens = {t.value: t for t in emu.auth.tokens.values()}
    per_token = []
    for value, window in emu.limiter.keys.items():
        token = tokens.get(value)
        per_token.append(
            {
                "token": token.fingerprint if token else "unknown",
                "clientId": token.client.client_id if token else None,
                "peakPerMinute": window.peak,
                "currentPerMinute": len(window.admitted),
                "rejected": window.rejected,
            }
        )
    requests = emu.stats.json()
    return respond(
        {
            "org": emu.name,
            "requests": requests,
            "tooManyRequests": sum(c.get("429", 0) for c in requests.values()),
            "tokens": per_token,
            "peakPerMinute": max((w.peak for w in emu.limiter.keys.values()), default=0),
            "events": {
                "published": emu.hub.events_published,
                "delivered": emu.hub.events_delivered,
                "lost": emu.hub.events_lost,
            },
        }
    )


async def channels(request: web.Request) -> web.Response:
    return respond(emulator_of(request).hub.json())


async def users(request: web.Request) -> web.Response:
    """Every user with state, presence and queues: a fixture source for tests and demos."""
    emu = emulator_of(request)
    world = emu.world
    return respond(
        [
            {
                "id": u.id,
                "name": u.name,
                "state": u.state,
                "presence": u.presence.definition.label,
                "systemPresence": u.presence.definition.system.rest,
                "routingStatus": u.routing_status,
                "queues": world.memberships[u.id],
            }
            for u in world.users.values()
        ]
    )


def register(router: web.UrlDispatcher) -> None:
    add = router.add_route
    add("POST", f"{PREFIX}/reset", reset, name="admin.reset")
    add("GET", f"{PREFIX}/orgs", list_orgs, name="admin.orgs.list")
    add("POST", f"{PREFIX}/orgs", add_org, name="admin.orgs.add")
    add("GET", f"{PREFIX}/settings", get_settings, name="admin.settings.get")
    add("PUT", f"{PREFIX}/settings", put_settings, name="admin.settings.put")
    add("GET", f"{PREFIX}/faults", get_faults, name="admin.faults.get")
    add("DELETE", f"{PREFIX}/faults", clear_faults, name="admin.faults.clear")
    add("POST", f"{PREFIX}/faults/latency", add_latency, name="admin.faults.latency")
    add("POST", f"{PREFIX}/faults/errors", add_error, name="admin.faults.errors")
    add("POST", f"{PREFIX}/faults/rate-limit-storm", storm, name="admin.faults.storm")
    add("POST", f"{PREFIX}/faults/events", events, name="admin.faults.events")
    add("POST", f"{PREFIX}/faults/heartbeats", heartbeats, name="admin.faults.heartbeats")
    add("POST", f"{PREFIX}/clients", add_client, name="admin.clients.add")
    add("POST", f"{PREFIX}/tokens/revoke", revoke_tokens, name="admin.tokens.revoke")
    add("POST", f"{PREFIX}/tokens/expire", expire_tokens, name="admin.tokens.expire")
    add("POST", f"{PREFIX}/sockets/drop", drop_sockets, name="admin.sockets.drop")
    add("POST", f"{PREFIX}/sockets/closing", socket_closing, name="admin.sockets.closing")
    add("POST", f"{PREFIX}/sockets/system", system_message, name="admin.sockets.system")
    add("POST", f"{PREFIX}/sockets/raw", raw_frames, name="admin.sockets.raw")
    add("PUT", f"{PREFIX}/users/{{user_id}}/presence", set_presence, name="admin.users.presence")
    add("PUT", f"{PREFIX}/users/{{user_id}}/work", set_work, name="admin.users.work")
    add("PUT", f"{PREFIX}/queues/{{queue_id}}/waiting", set_waiting, name="admin.queues.waiting")
    add("GET", f"{PREFIX}/history", history, name="admin.history")
    add("GET", f"{PREFIX}/stats", stats, name="admin.stats")
    add("GET", f"{PREFIX}/channels", channels, name="admin.channels")
    add("GET", f"{PREFIX}/users", users, name="admin.users")
