"""Users, their queues and their routing status (reference §2.7, §3.1, §3.2)."""

from __future__ import annotations

from aiohttp import web

from emulator.definitions import SystemPresence
from emulator.errors import bad_request, detail, not_found
from emulator.http import bool_query, list_query, page, parse, read_json, respond
from emulator.schemas import RoutingStatusPut
from emulator.server import correlation_of, emulator_of, require, token_of
from emulator.world import Change, User

USER_STATES = ("active", "inactive", "deleted", "any")


def _expand(request: web.Request) -> set[str]:
    return {e.lower() for e in list_query(request, "expand")}


def lookup_user(request: web.Request, *, include_deleted: bool = False) -> User:
    """The user named in the path; raises ApiError 404 when unknown (or deleted)."""
    user_id = request.match_info["user_id"]
    user = emulator_of(request).world.user(user_id, include_deleted=include_deleted)
    if user is None:
        raise not_found(f"User {user_id}")
    return user


async def list_users(request: web.Request) -> web.Response:
    world = emulator_of(request).world
    state = request.query.get("state", "active")
    if state not in USER_STATES:
        raise bad_request(
            f"Query parameter 'state' must be one of {', '.join(USER_STATES)}.", [detail("state")]
        )
    ids = list_query(request, "id")
    if len(ids) > 100:
        raise bad_request("At most 100 ids may be requested at once.", [detail("id")])
    candidates = [world.users[i] for i in ids if i in world.users] if ids else world.users.values()
    expand = _expand(request)
    users = [world.user_json(u, expand) for u in candidates if state == "any" or u.state == state]
    return respond(page(request, users, max_size=500))


async def get_user(request: web.Request) -> web.Response:
    include_deleted = request.query.get("state") == "deleted"
    user = lookup_user(request, include_deleted=include_deleted)
    return respond(emulator_of(request).world.user_json(user, _expand(request)))


async def user_queues(request: web.Request) -> web.Response:
    require(request, "routing:queue:view")
    world = emulator_of(request).world
    user = lookup_user(request)
    joined_only = bool_query(request, "joined", True)
    items = []
    for queue_id in world.memberships[user.id]:
        queue = world.queues[queue_id]
        joined = queue.members[user.id]
        if joined or not joined_only:
            items.append({**world.queue_json(queue), "joined": joined})
    return respond(page(request, items, max_size=100))


async def get_routing_status(request: web.Request) -> web.Response:
    world = emulator_of(request).world
    user_id = request.match_info["user_id"]
    user = world.user(user_id)
    if user is None:
        # The platform answers OFF_QUEUE for an unknown user rather than 404 (reference §2.7).
        return respond({"userId": user_id, "status": "OFF_QUEUE"})
    return respond(world.routing_json(user))


async def put_routing_status(request: web.Request) -> web.Response:
    """IDLE clears NOT_RESPONDING while On Queue; OFF_QUEUE takes the agent off queue.

    Going on queue is done by presence, not here (reference §2.7): IDLE while not On Queue is
    refused with 400.
    """
    require(request, "routing:agentState:edit")
    emu = emulator_of(request)
    body = parse(RoutingStatusPut, await read_json(request, emu.limits.max_body_bytes))
    user = lookup_user(request)
    world = emu.world
    on_queue = user.routing_status != "OFF_QUEUE"
    change = Change(
        "routing_status",
        correlation_of(request),
        token_of(request).client.client_id,
        f"PUT {request.path}",
    )
    if body.status == "OFF_QUEUE":
        if on_queue:
            available = world.definitions.system(SystemPresence.AVAILABLE)
            world.set_presence(user, available, change, source=user.primary_source)
    elif body.status == "IDLE" and on_queue:
        world.set_work(user, change, interactions=None, not_responding=False)
    else:
        raise bad_request(
            f"Routing status cannot be set to {body.status} while the user is "
            f"{user.routing_status}; set the On Queue presence to go on queue.",
            [detail("status")],
        )
    return respond(world.routing_json(user))


def register(router: web.UrlDispatcher) -> None:
    router.add_get("/api/v2/users", list_users, name="users.list")
    router.add_get("/api/v2/users/{user_id}", get_user, name="users.get")
    router.add_get("/api/v2/users/{user_id}/queues", user_queues, name="users.queues")
    router.add_get(
        "/api/v2/users/{user_id}/routingstatus", get_routing_status, name="routing_status.get"
    )
    router.add_put(
        "/api/v2/users/{user_id}/routingstatus", put_routing_status, name="routing_status.put"
    )
