"""The WFM webhook sink: ``POST /__wfm/events`` plus its controls under ``/__emulator/wfm``."""

from __future__ import annotations

import asyncio

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from emulator.http import parse, read_json, respond
from emulator.server import emulator_of
from emulator.wfm_sink import TOLERANCE_S, SinkFailure

SINK_PATH = "/__wfm/events"


class FailBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    status: int = Field(default=503, ge=400, le=599)
    count: int | None = Field(default=None, ge=1)
    delay_s: float = Field(default=0, ge=0)


async def receive(request: web.Request) -> web.Response:
    """Records the delivery; answers 200, the configured failure (possibly late), or 401 when
    the signature is wrong or its timestamp stale."""
    emu = emulator_of(request)
    raw = await request.content.read(emu.limits.max_body_bytes + 1)
    failure = emu.wfm.next_failure()
    status = failure.status if failure is not None else 200
    if failure is not None and failure.delay_s:
        await asyncio.sleep(failure.delay_s)
    delivery = emu.wfm.record(dict(request.headers), raw, status)
    if not delivery.signature_valid and delivery.status < 300:
        delivery.status = 401
        return respond(
            {
                "accepted": False,
                "eventId": delivery.event_id,
                "error": "signature invalid, or its timestamp older than "
                f"{TOLERANCE_S} s (a replay)",
            },
            401,
        )
    return respond({"accepted": delivery.status < 300, "eventId": delivery.event_id}, status)


async def deliveries(request: web.Request) -> web.Response:
    emu = emulator_of(request)
    return respond(
        {"summary": emu.wfm.summary(), "deliveries": [d.json() for d in emu.wfm.deliveries]}
    )


async def fail(request: web.Request) -> web.Response:
    emu = emulator_of(request)
    body = parse(FailBody, await read_json(request, emu.limits.max_body_bytes))
    emu.wfm.failure = SinkFailure(body.status, body.count, body.delay_s)
    return respond({"failing": True})


async def recover(request: web.Request) -> web.Response:
    emulator_of(request).wfm.failure = None
    return respond({"failing": False})


def register(router: web.UrlDispatcher) -> None:
    router.add_post(SINK_PATH, receive, name="wfm.receive")
    router.add_get("/__emulator/wfm/deliveries", deliveries, name="admin.wfm.deliveries")
    router.add_post("/__emulator/wfm/fail", fail, name="admin.wfm.fail")
    router.add_delete("/__emulator/wfm/fail", recover, name="admin.wfm.recover")
