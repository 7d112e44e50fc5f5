"""Routing queues and their members (reference §6.2)."""

from __future__ import annotations

from aiohttp import web

from emulator.errors import not_found
from emulator.http import bool_query, list_query, page, respond
from emulator.server import emulator_of, require
from emulator.world import Queue

VIEW = "routing:queue:view"


def _queue(request: web.Request) -> Queue:
    queue_id = request.match_info["queue_id"]
    queue = emulator_of(request).world.queues.get(queue_id)
    if queue is None:
        raise not_found(f"Queue {queue_id}")
    return queue


async def list_queues(request: web.Request) -> web.Response:
    require(request, VIEW)
    world = emulator_of(request).world
    name = request.query.get("name", "").lower().strip("*")
    items = [world.queue_json(q) for q in world.queues.values() if name in q.name.lower()]
    return respond(page(request, items, max_size=500))


async def get_queue(request: web.Request) -> web.Response:
    require(request, VIEW)
    return respond(emulator_of(request).world.queue_json(_queue(request)))


async def members(request: web.Request) -> web.Response:
    """``QueueMemberEntityListing``: no ``total``; expanded presence sits on ``user``."""
    require(request, VIEW)
    world = emulator_of(request).world
    queue = _queue(request)
    joined_filter = bool_query(request, "joined", True) if "joined" in request.query else None
    expand = {e.lower() for e in list_query(request, "expand")}
    items = []
    for user_id, joined in queue.members.items():
        user = world.user(user_id)
        if user is None or (joined_filter is not None and joined != joined_filter):
            continue
        user_json = world.user_json(user, expand & {"presence"})
        item = {
            "id": user.id,
            "name": user.name,
            "user": user_json,
            "ringNumber": 1,
            "joined": joined,
            "memberBy": "user",
            "selfUri": f"/api/v2/routing/queues/{queue.id}/members/{user.id}",
        }
        if "routingstatus" in expand:
            item["routingStatus"] = world.routing_json(user)
        items.append(item)
    return respond(page(request, items, max_size=100, with_total=False))


def register(router: web.UrlDispatcher) -> None:
    router.add_get("/api/v2/routing/queues", list_queues, name="queues.list")
    router.add_get("/api/v2/routing/queues/{queue_id}", get_queue, name="queues.get")
    router.add_get("/api/v2/routing/queues/{queue_id}/members", members, name="queues.members")
