"""Assembles the emulator: shared state, the request pipeline and every route."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from emulator.auth import AuthRegistry, Token
from emulator.config import EmulatorConfig
from emulator.errors import ApiError, missing_permission, too_many_requests
from emulator.faults import Faults
from emulator.http import respond
from emulator.notifications import NotificationHub
from emulator.ratelimit import RollingWindowLimiter
from emulator.wfm_sink import WfmSink
from emulator.world import World

log = logging.getLogger(__name__)

API_PREFIX = "/api/v2/"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(slots=True)
class RequestStats:
    by_route: Counter[tuple[str, int]] = field(default_factory=Counter)

    def json(self) -> dict[str, Any]:
        out: dict[str, dict[str, int]] = {}
        for (route, status), count in sorted(self.by_route.items()):
            out.setdefault(route, {})[str(status)] = count
        return out


class Emulator:
    """Everything the routes share. Touched only from the event loop thread."""

    def __init__(self, config: EmulatorConfig, *, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.limits = config.limits
        self._initial_limits = dataclasses.replace(config.limits)
        self.clock = clock
        self.reset()

    def reset(self) -> None:
        """Back to the seeded start: world, tokens, channels, faults, counters and settings."""
        for name in self.limits.__slots__:
            setattr(self.limits, name, getattr(self._initial_limits, name))
        old_hub = getattr(self, "hub", None)
        if old_hub is not None:
            old_hub.close_all()
        self.rng = random.Random(self.config.world.seed)
        self.world = World(self.config.world, clock=self.clock)
        self.auth = AuthRegistry(clock=self.clock)
        self.auth.add_client(self.config.client_id, self.config.client_secret)
        self.limiter = RollingWindowLimiter(self.limits.rate_limit_per_minute)
        self.faults = Faults(rng=self.rng)
        self.hub = NotificationHub(self.limits, self.faults, clock=self.clock)
        self.world.event_sinks.append(self.hub.publish)
        self.world.topic_wanted = self.hub.by_topic.__contains__
        self.stats = RequestStats()
        self.wfm = WfmSink(self.config.wfm_secret)


EMULATOR = web.AppKey("emulator", Emulator)


def emulator_of(request: web.Request) -> Emulator:
    return request.app[EMULATOR]


def token_of(request: web.Request) -> Token:
    token: Token = request["token"]
    return token


def correlation_of(request: web.Request) -> str:
    cid: str = request["correlation_id"]
    return cid


def require(request: web.Request, permission: str) -> None:
    """Raises ApiError 403 unless the caller's OAuth client holds ``permission``."""
    if not token_of(request).client.allows(permission):
        raise missing_permission(permission)


@web.middleware
async def pipeline(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Correlation id, auth, injected faults, the rate limit and ErrorBody for every error."""
    emu = emulator_of(request)
    cid = str(uuid.uuid4())
    request["correlation_id"] = cid
    route = _route_name(request)
    headers: dict[str, str] = {"inin-correlation-id": cid}
    try:
        if request.path.startswith(API_PREFIX):
            await _admit(request, emu, route, headers)
        response = await handler(request)
    except ApiError as exc:
        headers.update(exc.headers)
        if exc.status == 429:
            _rate_limit_headers(emu, request, headers, exc.headers.get("Retry-After", "1"))
        response = respond(exc.body(cid), exc.status)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        # Unknown paths and methods get the platform's ErrorBody, not aiohttp's text page.
        if exc.status in (404, 405):
            message = f"No resource answers {request.method} {request.path} ({exc.reason})."
        else:
            message = f"{exc.reason}: {exc.text or exc.reason}"
        response = respond(ApiError(exc.status, message).body(cid), exc.status)
        if "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
    except ConnectionResetError:
        # The client left mid-request (e.g. a truncated body): not a server error.
        log.debug("client disconnected during %s %s", request.method, request.path)
        message = "The connection closed before the request body was complete."
        response = respond(ApiError(400, message).body(cid), 400)
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        response = respond(
            ApiError(500, "The server encountered an internal error.").body(cid), 500
        )
    if not response.prepared:
        response.headers.update(headers)
    emu.stats.by_route[(route, response.status)] += 1
    return response


async def _admit(request: web.Request, emu: Emulator, route: str, headers: dict[str, str]) -> None:
    auth = request.headers.get("Authorization", "")
    scheme, _, value = auth.partition(" ")
    token = emu.auth.authenticate(value.strip()) if scheme.lower() == "bearer" else None
    if token is None:
        raise ApiError(401, "Invalid login credentials.", code="bad.credentials")
    request["token"] = token
    now = emu.clock()
    if emu.faults.storm_until > now:
        raise too_many_requests(emu.faults.storm_retry_after_s)
    emu.limiter.limit = emu.limits.rate_limit_per_minute
    decision = emu.limiter.hit(token.value, time.monotonic())
    headers["inin-ratelimit-allowed"] = str(emu.limits.rate_limit_per_minute)
    headers["inin-ratelimit-count"] = str(decision.count)
    headers["inin-ratelimit-reset"] = str(decision.reset_s)
    if not decision.allowed:
        raise too_many_requests(decision.retry_after_s)
    delay = emu.faults.delay_for(route)
    if delay:
        await asyncio.sleep(delay)
    fault = emu.faults.error_for(route)
    if fault is not None:
        error = (
            too_many_requests(fault.retry_after_s or 1)
            if fault.status == 429
            else ApiError(
                fault.status,
                fault.message or f"Injected fault: HTTP {fault.status}.",
                code=fault.code,
            )
        )
        if fault.retry_after_s is not None:
            error.headers["Retry-After"] = str(fault.retry_after_s)
        raise error


def _rate_limit_headers(
    emu: Emulator, request: web.Request, headers: dict[str, str], retry_after: str
) -> None:
    """Every 429 carries ``inin-ratelimit-*``, its reset at ``Retry-After``: a storm or an
    injected 429 reports the window as it stands."""
    headers["inin-ratelimit-reset"] = retry_after
    if "inin-ratelimit-allowed" in headers:
        return
    token = request.get("token")
    window = emu.limiter.keys.get(token.value) if isinstance(token, Token) else None
    headers["inin-ratelimit-allowed"] = str(emu.limits.rate_limit_per_minute)
    headers["inin-ratelimit-count"] = str(len(window.admitted) if window else 0)


def _route_name(request: web.Request) -> str:
    return request.match_info.route.name or "unmatched"


def build_app(config: EmulatorConfig, *, clock: Callable[[], float] = time.time) -> web.Application:
    """The aiohttp application serving REST, WebSocket, admin and WFM sink on one port."""
    from emulator.routes import (
        admin,
        analytics,
        notifications,
        oauth,
        presence,
        routing,
        sources,
        users,
        wfm,
    )

    app = web.Application(middlewares=[pipeline], client_max_size=config.limits.max_body_bytes + 1)
    app[EMULATOR] = Emulator(config, clock=clock)
    modules = (oauth, users, presence, sources, routing, analytics, notifications, admin, wfm)
    for module in modules:
        module.register(app.router)
    return app
