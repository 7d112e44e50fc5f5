"""Presence definitions and user presence reads and writes (reference §2)."""

from __future__ import annotations

import asyncio

from aiohttp import web

from emulator.definitions import PresenceDefinition
from emulator.errors import bad_request, detail, not_found
from emulator.http import bool_query, list_query, page, parse, parse_list, read_json, respond
from emulator.routes.users import lookup_user
from emulator.schemas import BulkPresence, PresencePatch
from emulator.server import Org, correlation_of, emulator_of, require, token_of
from emulator.sources import PURECLOUD
from emulator.world import Change

EDIT = "presence:userPresence:edit"
BULK_READ_MAX = 50


def _source(emu: Org, raw: str, field: str = "sourceId") -> str:
    """``PURECLOUD`` or a registered source id; raises ApiError 400 for anything else."""
    source = emu.world.sources.resolve(raw)
    if source is None:
        raise bad_request(
            f"Presence source {raw} is not registered; use PURECLOUD or the id of a source "
            "listed by /api/v2/presence/sources.",
            [detail(field, "bad.request", raw)],
        )
    return source


def _definition(emu: Org, definition_id: str, field: str) -> PresenceDefinition:
    """An active definition; raises ApiError 400 for an unknown or deactivated id."""
    definition = emu.world.definitions.by_id.get(definition_id)
    if definition is None:
        raise bad_request(
            f"Presence definition {definition_id} does not exist.",
            [detail(field, "bad.request", definition_id)],
        )
    if definition.deactivated:
        raise bad_request(
            f"Presence definition {definition_id} ({definition.label}) is deactivated.",
            [detail(field, "bad.request", definition_id)],
        )
    return definition


# -- definitions ----------------------------------------------------------------------------
async def legacy_definitions(request: web.Request) -> web.Response:
    deleted = request.query.get("deleted", "false").lower()
    if deleted not in ("true", "false", "all"):
        raise bad_request(
            "Query parameter 'deleted' must be true, false or all.", [detail("deleted")]
        )
    items = [
        d.legacy_json()
        for d in emulator_of(request).world.definitions.ordered
        if deleted == "all" or d.deactivated == (deleted == "true")
    ]
    return respond(page(request, items, max_size=100))


async def legacy_definition(request: web.Request) -> web.Response:
    definition = emulator_of(request).world.definitions.by_id.get(
        request.match_info["definition_id"]
    )
    if definition is None:
        raise not_found(f"Presence definition {request.match_info['definition_id']}")
    return respond(definition.legacy_json())


async def definitions(request: web.Request) -> web.Response:
    require(request, "presence:presenceDefinition:view")
    deactivated = bool_query(request, "deactivated", False)
    items = [
        d.new_json()
        for d in emulator_of(request).world.definitions.ordered
        if deactivated or not d.deactivated
    ]
    return respond({"total": len(items), "entities": items, "selfUri": request.path})


async def definition(request: web.Request) -> web.Response:
    require(request, "presence:presenceDefinition:view")
    found = emulator_of(request).world.definitions.by_id.get(request.match_info["definition_id"])
    if found is None:
        raise not_found(f"Presence definition {request.match_info['definition_id']}")
    return respond(found.new_json())


# -- one user -------------------------------------------------------------------------------
async def get_presence(request: web.Request) -> web.Response:
    user = lookup_user(request)
    source = _source(emulator_of(request), request.match_info["source_id"])
    if source not in user.presences:
        raise not_found(f"Presence source {source} for user {user.id}")
    return respond(emulator_of(request).world.presence_json(user, source))


async def patch_presence(request: web.Request) -> web.Response:
    """Set a user's presence for a source; each of definition, message and primary optional."""
    require(request, EDIT)
    emu = emulator_of(request)
    body = parse(PresencePatch, await read_json(request, emu.limits.max_body_bytes))
    if body.presenceDefinition is None and body.message is None and body.primary is None:
        raise bad_request(
            "The body must set presenceDefinition, message or primary.",
            [detail("presenceDefinition")],
        )
    user = lookup_user(request)
    if user.state != "active":
        raise bad_request(
            f"User {user.id} is {user.state}; presence can only be set for active users."
        )
    definition = (
        _definition(emu, body.presenceDefinition.id, "presenceDefinition.id")
        if body.presenceDefinition is not None
        else None
    )
    source = _source(emu, request.match_info["source_id"])
    change = Change(
        "patch",
        correlation_of(request),
        token_of(request).client.client_id,
        f"PATCH {request.path}",
    )
    if definition is not None and emu.limits.presence_defer_s > 0 and not body.primary:
        emu.world.defer_presence(
            user,
            definition,
            change,
            source=source,
            message=body.message,
            delay_s=emu.limits.presence_defer_s,
            schedule=asyncio.get_running_loop().call_later,
        )
        return respond(emu.world.presence_json(user, source))
    emu.world.set_presence(
        user,
        definition,
        change,
        source=source,
        message=body.message,
        make_primary=bool(body.primary),
    )
    return respond(emu.world.presence_json(user, source))


# -- bulk -----------------------------------------------------------------------------------
async def bulk_get(request: web.Request) -> web.Response:
    emu = emulator_of(request)
    ids = list_query(request, "id")
    if not ids:
        raise bad_request("Query parameter 'id' is required.", [detail("id")])
    if len(ids) > BULK_READ_MAX:
        raise bad_request(
            f"At most {BULK_READ_MAX} user ids may be requested at once.", [detail("id")]
        )
    source = _source(emu, request.match_info.get("source_id", "purecloud"))
    out = []
    for user_id in ids:
        user = emu.world.user(user_id)
        if user is None or source not in user.presences:
            continue
        # ``UcUserPresence``: the ``UserPresence`` fields plus ``userId``, minus ``primary`` (§2.4).
        presence = emu.world.presence_json(user, source)
        del presence["primary"]
        presence["userId"] = user.id
        out.append(presence)
    return respond(out)


async def bulk_put(request: web.Request) -> web.Response:
    """All-or-nothing: every element is validated before any is applied."""
    emu = emulator_of(request)
    require(request, EDIT)
    items = parse_list(BulkPresence, await read_json(request, emu.limits.max_body_bytes))
    if not items:
        raise bad_request("The body must list at least one user presence.", [detail("body")])
    if len(items) > emu.limits.bulk_max:
        raise bad_request(
            f"At most {emu.limits.bulk_max} user presences may be updated per request; got {len(items)}.",
            [detail("body")],
        )
    problems: list[dict[str, str]] = []
    messages: list[str] = []
    seen: set[str] = set()
    resolved = []
    for index, item in enumerate(items):
        user = emu.world.user(item.id)
        definition = emu.world.definitions.by_id.get(item.presenceDefinition.id)
        # ``sourceId`` names a registered source; ``source`` is its deprecated alias.
        raw_source = item.sourceId or item.source or PURECLOUD
        source = emu.world.sources.resolve(raw_source)
        if source is None:
            field = "sourceId" if item.sourceId else "source"
            problems.append(detail(f"[{index}].{field}", "bad.request", raw_source))
            messages.append(f"[{index}] presence source {raw_source} is not registered")
        elif item.id in seen:
            problems.append(detail(f"[{index}].id", "bad.request", item.id))
            messages.append(f"[{index}] user {item.id} appears more than once")
        elif user is None:
            problems.append(detail(f"[{index}].id", "not.found", item.id))
            messages.append(f"[{index}] user {item.id} does not exist")
        elif user.state != "active":
            problems.append(detail(f"[{index}].id", "bad.request", item.id))
            messages.append(f"[{index}] user {item.id} is {user.state}")
        elif definition is None or definition.deactivated:
            problems.append(
                detail(
                    f"[{index}].presenceDefinition.id", "bad.request", item.presenceDefinition.id
                )
            )
            state = "does not exist" if definition is None else "is deactivated"
            messages.append(f"[{index}] presence definition {item.presenceDefinition.id} {state}")
        else:
            resolved.append((item, user, definition, source))
        seen.add(item.id)
    if problems:
        raise bad_request("Bulk presence update rejected: " + "; ".join(messages) + ".", problems)
    cid = correlation_of(request)
    client_id = token_of(request).client.client_id
    out = []
    for item, user, definition, source in resolved:
        change = Change("bulk", cid, client_id, f"PUT {request.path}")
        emu.world.set_presence(
            user,
            definition,
            change,
            source=source,
            message=item.message,
            make_primary=bool(item.primary),
        )
        out.append(emu.world.presence_json(user, source))
    return respond(out)


def register(router: web.UrlDispatcher) -> None:
    router.add_get(
        "/api/v2/presencedefinitions", legacy_definitions, name="presencedefinitions.list"
    )
    router.add_get(
        "/api/v2/presencedefinitions/{definition_id}",
        legacy_definition,
        name="presencedefinitions.get",
    )
    router.add_get("/api/v2/presence/definitions", definitions, name="presence.definitions.list")
    router.add_get(
        "/api/v2/presence/definitions/{definition_id}", definition, name="presence.definitions.get"
    )
    router.add_get("/api/v2/users/presences/purecloud/bulk", bulk_get, name="presence.bulk_get")
    router.add_get(
        "/api/v2/users/presences/{source_id}/bulk", bulk_get, name="presence.bulk_get_source"
    )
    router.add_put("/api/v2/users/presences/bulk", bulk_put, name="presence.bulk_put")
    router.add_get(
        "/api/v2/users/{user_id}/presences/{source_id}", get_presence, name="presence.get"
    )
    router.add_patch(
        "/api/v2/users/{user_id}/presences/{source_id}", patch_presence, name="presence.patch"
    )
