"""The Genesys Cloud REST client used by the worker.

Every call: takes a slot from the shared limiter, carries a timeout, is never retried behind the
caller's back (the one exception: a 401 renews the token and repeats the call once), and turns
any non-2xx answer into a typed :class:`GenesysError` with status, ErrorBody code and message
and ``inin-correlation-id``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from worker.genesys.errors import (
    GenesysError,
    RateLimited,
    TransportError,
    Unauthorized,
    error_for_status,
)
from worker.genesys.http import PlatformHttp, Reply, TransportFailure, TransportTimeout
from worker.genesys.models import Channel, PresenceDefinition, UserPresence
from worker.genesys.token import TokenProvider
from worker.limiter import SharedRateLimiter
from worker.names import DEFAULT_ORG
from worker.observability import metrics

log = logging.getLogger(__name__)
PURECLOUD = "PURECLOUD"
USERS_PAGE_SIZE = 500
"""Users per page of a listing (``GET /api/v2/users``): the platform's largest page."""


@dataclass(slots=True)
class CallLog:
    """What one unit of work (an update) spent: calls, limiter wait and API time."""

    calls: int = 0
    limiter_wait_s: float = 0.0
    api_s: float = 0.0
    statuses: list[int] = field(default_factory=list)


_current_log: ContextVar[CallLog | None] = ContextVar("genesys_call_log", default=None)


@contextmanager
def recording() -> Iterator[CallLog]:
    """Attribute every Genesys call made inside the block (this thread/context) to one log."""
    log = CallLog()
    token = _current_log.set(log)
    try:
        yield log
    finally:
        _current_log.reset(token)


@dataclass(frozen=True, slots=True)
class Answer:
    data: Any
    correlation_id: str | None
    status: int


class GenesysClient:
    """Thread-safe: share one per process (one keep-alive connection pool)."""

    def __init__(
        self,
        http: PlatformHttp,
        tokens: TokenProvider,
        limiter: SharedRateLimiter,
        *,
        api_base: str,
        timeout_s: float,
        max_inline_wait_s: float,
        presence_source: str = PURECLOUD,
        org: str = DEFAULT_ORG,
    ) -> None:
        self.org = org  # the org whose calls these are (metrics labels)
        self.http = http
        self.tokens = tokens
        self.limiter = limiter
        self.api_base = api_base
        self.timeout_s = timeout_s
        self.max_inline_wait_s = max_inline_wait_s
        registered = presence_source.upper() != PURECLOUD
        # PURECLOUD, or the id of a registered source (``sourceId``; ``source`` is deprecated).
        self.source_id: str | None = presence_source if registered else None
        self._source_path = presence_source if registered else "purecloud"
        self._warned_not_primary = False

    def await_budget(self) -> None:
        """Wait in line for a budget slot before the work that leads to a call, when the budget
        was exhausted lately (raises BudgetExhausted beyond the inline wait); see
        :meth:`SharedRateLimiter.wait_in_line`."""
        self.limiter.wait_in_line(self.max_inline_wait_s)

    # -- the one way to call ------------------------------------------------------------------
    def call(
        self, method: str, path: str, *, json: Any = None, params: dict[str, Any] | None = None
    ) -> Answer:
        # A list value in ``params`` goes as a repeated parameter (``id=a&id=b``).
        """One platform call (two when a 401 forces a token renewal).

        Raises BudgetExhausted when no limiter slot is near, or a GenesysError subclass.
        """
        try:
            return self._call_once(method, path, json, params)
        except Unauthorized:
            return self._call_once(method, path, json, params)

    def _call_once(
        self, method: str, path: str, json: Any, params: dict[str, Any] | None
    ) -> Answer:
        token = self.tokens.get()
        reservation = self.limiter.acquire(self.max_inline_wait_s)
        log = _current_log.get()
        started = time.perf_counter()
        status: int | None = None
        try:
            response = self.http.request(
                method,
                f"{self.api_base}{path}",
                json=json,
                params=params,
                headers={"Authorization": f"Bearer {token}"},
                timeout_s=self.timeout_s,
            )
            status = response.status_code
        except TransportTimeout:
            raise TransportError(f"{method} {path} timed out after {self.timeout_s:g} s") from None
        except TransportFailure as exc:
            raise TransportError(f"{method} {path} failed: {exc}") from None
        finally:
            metrics.observe_genesys_call(
                method, status, time.perf_counter() - started, org=self.org
            )
            self.limiter.release(reservation)
            if log is not None:
                log.calls += 1
                log.limiter_wait_s += reservation.waited_s
                log.api_s += time.perf_counter() - started
        if log is not None:
            log.statuses.append(response.status_code)
        correlation_id = response.headers.get("inin-correlation-id")
        if response.status_code < 300:
            data = response.json() if response.content else None
            return Answer(data, correlation_id, response.status_code)
        error = self._error(method, path, response, correlation_id)
        if isinstance(error, RateLimited):
            metrics.observe_rate_limited(org=self.org)
        if isinstance(error, RateLimited) and error.retry_after_s:
            self.limiter.cool_down(error.retry_after_s)
        if isinstance(error, Unauthorized):
            self.tokens.invalidate(token)
        raise error

    @staticmethod
    def _error(method: str, path: str, response: Reply, correlation_id: str | None) -> GenesysError:
        code = None
        message = response.reason_phrase
        try:
            body = response.json()
            if isinstance(body, dict):
                code = body.get("code")
                message = body.get("message") or message
        except ValueError:
            pass
        retry_after = response.headers.get("Retry-After")
        try:
            retry_after_s = float(retry_after) if retry_after is not None else None
        except ValueError:
            retry_after_s = None
        cls = error_for_status(response.status_code)
        return cls(
            f"{method} {path} → HTTP {response.status_code} {code or ''}: {message}".replace(
                "  ", " "
            ),
            status=response.status_code,
            code=code,
            correlation_id=correlation_id,
            retry_after_s=retry_after_s,
        )

    # -- typed endpoints ------------------------------------------------------------------------
    def presence_definitions(self) -> list[PresenceDefinition]:
        answer = self.call("GET", "/api/v2/presence/definitions", params={"deactivated": "true"})
        return [PresenceDefinition.model_validate(e) for e in answer.data["entities"]]

    def get_presence(self, user_id: str) -> tuple[UserPresence, Answer]:
        """The agent's presence for the source this worker writes."""
        answer = self.call("GET", f"/api/v2/users/{user_id}/presences/{self._source_path}")
        return UserPresence.model_validate(answer.data), answer

    def patch_presence(
        self, user_id: str, definition_id: str, message: str | None = None
    ) -> tuple[UserPresence, Answer]:
        body: dict[str, Any] = {"presenceDefinition": {"id": definition_id}}
        if message is not None:
            body["message"] = message
        answer = self.call(
            "PATCH", f"/api/v2/users/{user_id}/presences/{self._source_path}", json=body
        )
        presence = UserPresence.model_validate(answer.data)
        self._check_primary([presence])
        return presence, answer

    def _check_primary(self, presences: list[UserPresence]) -> None:
        """Warn (once per process) when a write landed on a source that is not primary."""
        if self._warned_not_primary or all(p.primary is not False for p in presences):
            return
        self._warned_not_primary = True
        log.warning(
            "presence written through source %s is not the agent's primary source: the "
            "agent's effective presence did not change (no event will confirm it); set "
            "PRESENCE_SOURCE to the org's primary source (see `presence doctor`)",
            self.source_id or PURECLOUD,
        )

    def put_presences_bulk(
        self, changes: list[tuple[str, str, str | None]]
    ) -> tuple[list[UserPresence], Answer]:
        """One bulk PUT of ``(user_id, definition_id, message)`` items (at most 50 on the
        platform). All-or-nothing: a 400 means no agent changed. The answer lists the agents'
        new presences in request order.
        """
        body: list[dict[str, Any]] = []
        for user_id, definition_id, message in changes:
            item: dict[str, Any] = {"id": user_id, "presenceDefinition": {"id": definition_id}}
            if self.source_id is not None:
                item["sourceId"] = self.source_id
            else:
                item["source"] = PURECLOUD
            if message is not None:
                item["message"] = message
            body.append(item)
        answer = self.call("PUT", "/api/v2/users/presences/bulk", json=body)
        presences = [UserPresence.model_validate(p) for p in answer.data or []]
        self._check_primary(presences)
        return presences, answer

    def get_presences_bulk(self, user_ids: list[str]) -> dict[str, UserPresence]:
        """Presences (of the written source) of up to 50 agents in one call, by user id (unknown
        ids absent). The ids go as a repeated ``id`` parameter, as the official SDKs send them."""
        answer = self.call(
            "GET", f"/api/v2/users/presences/{self._source_path}/bulk", params={"id": user_ids}
        )
        return {
            str(p["userId"]): UserPresence.model_validate(p)
            for p in answer.data or []
            if "userId" in p
        }

    def list_active_users(
        self, limit: int, *, expand_presence: bool = False, from_page: int = 1
    ) -> list[dict[str, Any]]:
        """Up to ``limit`` active users, :data:`USERS_PAGE_SIZE` per call, pages ``from_page``
        on."""
        users: list[dict[str, Any]] = []
        page = from_page
        while len(users) < limit:
            params: dict[str, Any] = {
                "pageSize": USERS_PAGE_SIZE,
                "pageNumber": page,
                "state": "active",
            }
            if expand_presence:
                params["expand"] = "presence"
            answer = self.call("GET", "/api/v2/users", params=params)
            entities = answer.data.get("entities") or []
            users.extend(entities)
            if not answer.data.get("nextUri") or not entities:
                break
            page += 1
        return users[:limit]

    def create_channel(self) -> Channel:
        return Channel.model_validate(self.call("POST", "/api/v2/notifications/channels").data)

    def replace_subscriptions(self, channel_id: str, topics: list[str]) -> None:
        self.call(
            "PUT",
            f"/api/v2/notifications/channels/{channel_id}/subscriptions",
            json=[{"id": t} for t in topics],
        )

    def add_subscriptions(self, channel_id: str, topics: list[str]) -> None:
        self.call(
            "POST",
            f"/api/v2/notifications/channels/{channel_id}/subscriptions",
            json=[{"id": t} for t in topics],
        )
