"""Presence sources, the org's presence settings, users' primary sources, system presences."""

from __future__ import annotations

from aiohttp import web
from pydantic import StrictStr

from emulator.definitions import SystemPresence
from emulator.errors import bad_request, detail, not_found
from emulator.http import parse, read_json, respond
from emulator.routes.users import lookup_user
from emulator.schemas import _Body
from emulator.server import emulator_of, require
from emulator.sources import PURECLOUD
from emulator.world import User


class SourceIn(_Body):
    name: StrictStr
    description: StrictStr = ""


class SettingsIn(_Body):
    defaultPrimaryPresenceRegisteredSourceId: StrictStr | None = None


class PrimarySourceIn(_Body):
    sourceId: StrictStr


async def list_sources(request: web.Request) -> web.Response:
    require(request, "presence:source:view")
    entities = [s.json() for s in emulator_of(request).world.sources.registered.values()]
    return respond({"total": len(entities), "entities": entities, "selfUri": request.path})


async def get_source(request: web.Request) -> web.Response:
    require(request, "presence:source:view")
    source = emulator_of(request).world.sources.registered.get(request.match_info["source_id"])
    if source is None:
        raise not_found(f"Presence source {request.match_info['source_id']}")
    return respond(source.json())


async def add_source(request: web.Request) -> web.Response:
    require(request, "presence:source:add")
    emu = emulator_of(request)
    body = parse(SourceIn, await read_json(request, emu.limits.max_body_bytes))
    return respond(emu.world.sources.add(body.name, body.description).json())


async def get_settings(request: web.Request) -> web.Response:
    return respond(emulator_of(request).world.sources.settings_json())


async def put_settings(request: web.Request) -> web.Response:
    """Set (or clear, with null) the org's default primary registered source."""
    require(request, "presence:settings:edit")
    emu = emulator_of(request)
    body = parse(SettingsIn, await read_json(request, emu.limits.max_body_bytes))
    wanted = body.defaultPrimaryPresenceRegisteredSourceId
    if wanted is not None and wanted not in emu.world.sources.registered:
        raise bad_request(
            f"Presence source {wanted} is not registered.",
            [detail("defaultPrimaryPresenceRegisteredSourceId", "bad.request", wanted)],
        )
    emu.world.set_default_primary_source(wanted)
    return respond(emu.world.sources.settings_json())


def _primary_json(request: web.Request, user: User) -> dict[str, object]:
    sources = emulator_of(request).world.sources
    source = user.primary_source
    return {
        "id": user.id,
        "name": sources.name_of(source),
        "sourceId": source,
        "registered": source != PURECLOUD,
        "selfUri": request.path,
    }


async def get_primary_source(request: web.Request) -> web.Response:
    require(request, "presence:userPrimarySource:view")
    return respond(_primary_json(request, lookup_user(request)))


async def put_primary_source(request: web.Request) -> web.Response:
    require(request, "presence:userPrimarySource:edit")
    emu = emulator_of(request)
    body = parse(PrimarySourceIn, await read_json(request, emu.limits.max_body_bytes))
    source = emu.world.sources.resolve(body.sourceId)
    if source is None:
        raise bad_request(
            f"Presence source {body.sourceId} is not registered.",
            [detail("sourceId", "bad.request", body.sourceId)],
        )
    user = lookup_user(request)
    emu.world.set_primary_source(user, source)
    return respond(_primary_json(request, user))


async def system_presences(request: web.Request) -> web.Response:
    """``list[SystemPresence]``."""
    return respond(
        [
            {"id": s.enum_name.upper(), "name": s.rest, "selfUri": f"{request.path}/{s.name}"}
            for s in SystemPresence
        ]
    )


def register(router: web.UrlDispatcher) -> None:
    router.add_get("/api/v2/presence/sources", list_sources, name="presence.sources.list")
    router.add_post("/api/v2/presence/sources", add_source, name="presence.sources.add")
    router.add_get("/api/v2/presence/sources/{source_id}", get_source, name="presence.sources.get")
    router.add_get("/api/v2/presence/settings", get_settings, name="presence.settings.get")
    router.add_put("/api/v2/presence/settings", put_settings, name="presence.settings.put")
    primary = "/api/v2/presence/users/{user_id}/primarysource"
    router.add_get(primary, get_primary_source, name="presence.primarysource.get")
    router.add_put(primary, put_primary_source, name="presence.primarysource.put")
    router.add_get("/api/v2/systempresences", system_presences, name="systempresences.list")
