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
from emulator.config import (
    DEFAULT_ORG,
    EmulatorConfig,
    Limits,
    OrgSpec,
    WorldShape,
    org_client_id,
    org_client_secret,
)
from emulator.errors import ApiError, missing_permission, too_many_requests
from emulator.faults import Faults
from emulator.http import respond
from emulator.notifications import ORGANIZATION_ID, NotificationHub
from emulator.ratelimit import RollingWindowLimiter
from emulator.wfm_sink import WfmSink
from emulator.world import World

log = logging.getLogger(__name__)

API_PREFIX = "/api/v2/"
ADMIN_PREFIX = "/__emulator/"
_ORG_NAMESPACE = uuid.UUID("0b7d3c52-8e1f-4a69-9d24-6f3e5a1c7b80")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(slots=True)
class RequestStats:
    by_route: Counter[tuple[str, int]] = field(default_factory=Counter)

    def json(self) -> dict[str, Any]:
        out: dict[str, dict[str, int]] = {}
        for (route, status), count in sorted(self.by_route.items()):
            out.setdefault(route, {})[str(status)] = count
        return out


class Org:
    """One Genesys org: its world, OAuth clients and tokens, rate-limit windows, faults,
    notification channels, settings and request counters. Touched only from the event loop."""

    def __init__(
        self,
        name: str,
        shape: WorldShape,
        limits: Limits,
        client_id: str,
        client_secret: str,
        wfm: WfmSink,
        *,
        clock: Callable[[], float] = time.time,
        user_ids: Callable[[], list[str]] | None = None,
    ) -> None:
        """``user_ids`` (called at every reset) gives the ids the first users carry."""
        self.name = name
        self.shape = shape
        self.limits = limits
        self._initial_limits = dataclasses.replace(limits)
        self.client_id = client_id
        self.client_secret = client_secret
        self.wfm = wfm
        self.clock = clock
        self._user_ids = user_ids
        self.organization_id = (
            ORGANIZATION_ID if name == DEFAULT_ORG else str(uuid.uuid5(_ORG_NAMESPACE, name))
        )
        self.reset()

    def reset(self) -> None:
        """Back to the seeded start: world, tokens, channels, faults, counters and settings."""
        for name in self.limits.__slots__:
            setattr(self.limits, name, getattr(self._initial_limits, name))
        old_hub = getattr(self, "hub", None)
        if old_hub is not None:
            old_hub.close_all()
        self.rng = random.Random(self.shape.seed)
        self.world = World(
            self.shape,
            clock=self.clock,
            org=None if self.name == DEFAULT_ORG else self.name,
            user_ids=self._user_ids() if self._user_ids is not None else None,
        )
        self.auth = AuthRegistry(clock=self.clock)
        self.auth.add_client(self.client_id, self.client_secret)
        self.limiter = RollingWindowLimiter(self.limits.rate_limit_per_minute)
        self.faults = Faults(rng=self.rng)
        self.hub = NotificationHub(
            self.limits, self.faults, clock=self.clock, organization_id=self.organization_id
        )
        self.world.event_sinks.append(self.hub.publish)
        self.world.topic_wanted = self.hub.by_topic.__contains__
        self.stats = RequestStats()

    def json(self) -> dict[str, Any]:
        """The org as ``GET /__emulator/orgs`` lists it (no secret)."""
        return {
            "name": self.name,
            "organizationId": self.organization_id,
            "clientIds": sorted(self.auth.clients),
            "users": self.shape.users,
            "queues": self.shape.queues,
            "seed": self.shape.seed,
            "rateLimitPerMinute": self.limits.rate_limit_per_minute,
        }


class Emulator:
    """Every org the process serves (``default`` first) and the one WFM sink they share."""

    def __init__(self, config: EmulatorConfig, *, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self._initial_limits = dataclasses.replace(config.limits)
        self.clock = clock
        self.wfm = WfmSink(config.wfm_secret)
        self.orgs: dict[str, Org] = {}
        self.reset()

    @property
    def default(self) -> Org:
        return self.orgs[DEFAULT_ORG]

    def reset(self) -> None:
        """Every org back to its seeded start (orgs added at run time are dropped), a new sink."""
        for org in self.orgs.values():
            org.hub.close_all()
        self.orgs = {}
        self.wfm = WfmSink(self.config.wfm_secret)
        config = self.config
        self.orgs[DEFAULT_ORG] = Org(
            DEFAULT_ORG,
            config.world,
            dataclasses.replace(self._initial_limits),
            config.client_id,
            config.client_secret,
            self.wfm,
            clock=self.clock,
        )
        for spec in config.orgs:
            self.add_org(spec, shared_user_ids=config.shared_user_ids)

    def add_org(self, spec: OrgSpec, *, shared_user_ids: bool) -> Org:
        """Serve one more org; raises ValueError when its name or client id is taken."""
        client_id = org_client_id(spec.name)
        if spec.name in self.orgs:
            raise ValueError(f"org {spec.name!r} already exists")
        if self.org_of_client(client_id) is not None:
            raise ValueError(f"client id {client_id!r} already belongs to another org")
        limits = dataclasses.replace(self._initial_limits)
        if spec.rate_limit_per_minute is not None:
            limits.rate_limit_per_minute = spec.rate_limit_per_minute
        default = self.default
        org = Org(
            spec.name,
            spec.shape(self.config.world),
            limits,
            client_id,
            org_client_secret(spec.name),
            self.wfm,
            clock=self.clock,
            user_ids=(lambda: list(default.world.users)) if shared_user_ids else None,
        )
        self.orgs[spec.name] = org
        return org

    def org_of_client(self, client_id: str) -> Org | None:
        return next((o for o in self.orgs.values() if client_id in o.auth.clients), None)

    def org_of_token(self, value: str) -> tuple[Org, Token] | None:
        """The org whose live token ``value`` is, with the token."""
        for org in self.orgs.values():
            token = org.auth.authenticate(value)
            if token is not None:
                return org, token
        return None

    def org_of_channel(self, channel_id: str) -> Org | None:
        return next((o for o in self.orgs.values() if channel_id in o.hub.channels), None)


EMULATOR = web.AppKey("emulator", Emulator)


ORG_KEY = "org"


def process_of(request: web.Request) -> Emulator:
    """Every org of the process (the admin API's org routes, OAuth, sockets)."""
    return request.app[EMULATOR]


def emulator_of(request: web.Request) -> Org:
    """The org a request acts on: its token's for ``/api/v2``, ``?org=`` (else ``default``)
    for the admin API, the one a handler chose (OAuth, sockets), else ``default``."""
    org: Org = request.get(ORG_KEY) or request.app[EMULATOR].default
    return org


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
    """Correlation id, org, auth, injected faults, the rate limit and ErrorBody for every
    error."""
    process = process_of(request)
    cid = str(uuid.uuid4())
    request["correlation_id"] = cid
    route = _route_name(request)
    headers: dict[str, str] = {"inin-correlation-id": cid}
    try:
        if request.path.startswith(API_PREFIX):
            await _admit(request, process, route, headers)
        elif request.path.startswith(ADMIN_PREFIX):
            _select_org(request, process)
        response = await handler(request)
    except ApiError as exc:
        headers.update(exc.headers)
        if exc.status == 429:
            _rate_limit_headers(
                emulator_of(request), request, headers, exc.headers.get("Retry-After", "1")
            )
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
    emulator_of(request).stats.by_route[(route, response.status)] += 1
    return response


def _select_org(request: web.Request, process: Emulator) -> None:
    """``?org=NAME`` on an admin call selects that org; an unknown name is a 404."""
    name = request.query.get("org")
    if name is None:
        return
    org = process.orgs.get(name)
    if org is None:
        known = ", ".join(process.orgs)
        raise ApiError(404, f"Org {name!r} does not exist (known: {known}).", code="not.found")
    request[ORG_KEY] = org


async def _admit(
    request: web.Request, process: Emulator, route: str, headers: dict[str, str]
) -> None:
    auth = request.headers.get("Authorization", "")
    scheme, _, value = auth.partition(" ")
    found = process.org_of_token(value.strip()) if scheme.lower() == "bearer" else None
    if found is None:
        raise ApiError(401, "Invalid login credentials.", code="bad.credentials")
    emu, token = found
    request[ORG_KEY] = emu
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
    emu: Org, request: web.Request, headers: dict[str, str], retry_after: str
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
