"""``POST /api/v2/analytics/queues/observations/query`` computed from live state (reference §6.1).

Zero-count buckets are omitted; conversation metrics (``oWaiting``, ``oInteracting``,
``oAlerting``) come in a second group per queue with ``mediaType: voice``.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from aiohttp import web

from emulator.definitions import SystemPresence
from emulator.http import parse, read_json, respond
from emulator.schemas import ObservationQuery
from emulator.server import emulator_of, require
from emulator.world import Queue, World


def _queue_ids(query: ObservationQuery) -> list[str]:
    predicates = list(query.filter.predicates)
    for clause in query.filter.clauses:
        predicates.extend(clause.predicates)
    return [
        p.value
        for p in predicates
        if p.dimension == "queueId" and p.operator == "matches" and p.value is not None
    ]


def _stat(metric: str, count: int, qualifier: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"metric": metric, "stats": {"count": count}}
    if qualifier is not None:
        out["qualifier"] = qualifier
    return out


def observe(world: World, queue: Queue, metrics: list[str]) -> list[dict[str, Any]]:
    """The result groups for one queue."""
    joined = [u for uid, j in queue.members.items() if j and (u := world.user(uid)) is not None]
    on_queue = Counter(u.routing_status for u in joined if u.routing_status != "OFF_QUEUE")
    logged_in = [u for u in joined if u.presence.definition.system is not SystemPresence.OFFLINE]
    user_data: list[dict[str, Any]] = []
    conversation_data: list[dict[str, Any]] = []
    for metric in metrics:
        if metric == "oOnQueueUsers":
            user_data += [_stat(metric, n, status) for status, n in sorted(on_queue.items())]
        elif metric == "oOffQueueUsers":
            off = sum(1 for u in logged_in if u.routing_status == "OFF_QUEUE")
            if off:
                user_data.append(_stat(metric, off))
        elif metric == "oActiveUsers" and logged_in:
            user_data.append(_stat(metric, len(logged_in)))
        elif metric == "oMemberUsers" and (members := world.live_members(queue)):
            user_data.append(_stat(metric, len(members)))
        elif metric == "oUserPresences":
            counts = Counter(u.presence.definition.id for u in logged_in)
            user_data += [_stat(metric, n, d) for d, n in sorted(counts.items())]
        elif metric == "oUserRoutingStatuses":
            counts = Counter(u.routing_status for u in logged_in)
            user_data += [_stat(metric, n, s) for s, n in sorted(counts.items())]
        elif metric == "oWaiting" and queue.waiting:
            conversation_data.append(_stat(metric, queue.waiting))
        elif metric == "oInteracting":
            interacting = sum(u.interactions for u in joined if u.routing_status == "INTERACTING")
            if interacting:
                conversation_data.append(_stat(metric, interacting))
    groups = [{"group": {"queueId": queue.id}, "data": user_data}]
    if conversation_data:
        groups.append(
            {"group": {"queueId": queue.id, "mediaType": "voice"}, "data": conversation_data}
        )
    return groups


async def queue_observations(request: web.Request) -> web.Response:
    require(request, "analytics:queueObservation:view")
    emu = emulator_of(request)
    query = parse(ObservationQuery, await read_json(request, emu.limits.max_body_bytes))
    metrics: list[str] = list(dict.fromkeys([*query.metrics, *query.detailMetrics]))
    results: list[dict[str, Any]] = []
    for queue_id in dict.fromkeys(_queue_ids(query)):
        queue = emu.world.queues.get(queue_id)
        if queue is not None:
            results.extend(observe(emu.world, queue, metrics))
    return respond(
        {
            "systemToOrganizationMappings": emu.world.definitions.system_to_organization(),
            "results": results,
        }
    )


def register(router: web.UrlDispatcher) -> None:
    router.add_post(
        "/api/v2/analytics/queues/observations/query",
        queue_observations,
        name="analytics.queue_observations",
    )
