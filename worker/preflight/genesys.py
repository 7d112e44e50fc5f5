"""The Genesys checks: reachable, credentials accepted, the OAuth client's permissions for what
the worker does, the budget the platform announces. Harmless calls only (see the package)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import httpx
import redis

from worker import catalog
from worker.genesys.client import USERS_PAGE_SIZE
from worker.genesys.connect import budget_key
from worker.notifications import roster
from worker.preflight.findings import Finding, Verdict, ok, skip
from worker.problems import first_line, mask_url
from worker.settings import Settings

PLATFORM_CHANNELS = 20  # per OAuth client; the platform evicts the oldest beyond that
CHANNEL_KEEP_S = 20 * 3600  # under the platform's 24 h channel lifetime
NOTIFY_FIX = "let the client's role create notification channels and subscribe to agents' presence"


def channel_key(client_id: str, prefix: str = "presence") -> str:
    """The key keeping the notification check's own channel id, per org and OAuth client."""
    return f"{prefix}:doctor:channel:{{{client_id}}}"


class _Api:
    """Authenticated calls to the org's API; remembers the budget headers last seen."""

    def __init__(self, http: httpx.Client, base: str, token: str) -> None:
        self.http = http
        self.base = base
        self.headers = {"Authorization": f"Bearer {token}"}
        self.budget: tuple[int, int] | None = None  # (allowed per minute, used this minute)

    def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = self.http.request(method, f"{self.base}{path}", headers=self.headers, **kwargs)
        allowed = response.headers.get("inin-ratelimit-allowed")
        used = response.headers.get("inin-ratelimit-count")
        if allowed is not None and used is not None:
            with contextlib.suppress(ValueError):
                self.budget = (int(allowed), int(used))
        return response


def transport_reason(exc: httpx.HTTPError) -> str:
    """The exception's kind and reason (httpx never puts credentials in either)."""
    reason = first_line(str(exc))
    return f"{type(exc).__name__} ({reason})" if reason else type(exc).__name__


def _error_text(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        body = None
    message = body.get("message") if isinstance(body, dict) else None
    return f"HTTP {response.status_code}: {message or response.reason_phrase}"


def _verdict(
    check: str, response: httpx.Response, permission: str, seen: str, *, accept: int = 299
) -> Finding:
    """ok when the answer is 2xx (or up to ``accept``); a 403 names the missing permission
    (``permission`` with a space in it is the whole fix)."""
    if response.status_code == 403:
        fix = permission if " " in permission else f"give its role the {permission} permission"
        return Finding(
            check, Verdict.FAIL, f"the OAuth client may not ({_error_text(response)})", fix
        )
    if response.status_code == 429 or response.status_code >= 500:
        # The budget spent by running workers, or a platform outage: not the setup's fault, so
        # a worker starting now is not stopped by it.
        return Finding(
            check,
            Verdict.FAIL,
            f"could not tell ({_error_text(response)})",
            "run `presence doctor` again in a minute",
            fatal=False,
        )
    if response.status_code <= accept:
        return ok(check, seen)
    return Finding(check, Verdict.FAIL, _error_text(response), "see the platform's message")


class GenesysChecks:
    """The Genesys rows, in order; a transport failure or refusal skips what depends on it.
    What they keep in Redis sits under ``prefix`` (the org's key prefix)."""

    def __init__(
        self,
        settings: Settings,
        http: httpx.Client,
        client: redis.Redis | None,
        *,
        prefix: str = "presence",
    ) -> None:
        self.settings = settings
        self.http = http
        self.redis = client
        self.prefix = prefix
        self.findings: list[Finding] = []
        self.api: _Api | None = None
        self.agent: str | None = None
        self.queue: str | None = None

    @property
    def variable(self) -> str:
        return "GENESYS_API_URL" if self.settings.genesys_api_url else "GENESYS_REGION"

    def run(self) -> list[Finding]:
        if not self._token():
            return self.findings
        steps: list[tuple[str, Callable[[], Finding]]] = [
            ("read presence definitions", self._definitions),
            ("read agents and presence", self._presence),
            ("edit presence", self._edit),
            ("presence source", self._source),
            ("notifications", self._notifications),
            ("read queues and members", self._queues),
            ("queue observations", self._observations),
        ]
        for check, step in steps:
            try:
                self.findings.append(step())
            except httpx.HTTPError as exc:
                self.findings.append(
                    Finding(
                        check,
                        Verdict.FAIL,
                        f"{mask_url(self.settings.api_base)} failed: {transport_reason(exc)}",
                        f"check {self.variable} and the network",
                    )
                )
                break
        self.findings.append(self._budget())
        return self.findings

    def _token(self) -> bool:
        settings = self.settings
        url = f"{settings.login_base}/oauth/token"
        try:
            response = self.http.post(
                url,
                auth=(
                    settings.genesys_client_id,
                    settings.genesys_client_secret.get_secret_value(),
                ),
                data={"grant_type": "client_credentials"},
            )
        except httpx.HTTPError as exc:
            self.findings.append(
                Finding(
                    "Genesys reachable",
                    Verdict.FAIL,
                    f"{self.variable} ({mask_url(settings.login_base)}) unreachable: "
                    f"{transport_reason(exc)}",
                    f"check {self.variable} and the network (proxy, firewall)",
                )
            )
            return False
        self.findings.append(ok("Genesys reachable", f"{mask_url(settings.login_base)} answered"))
        token = None
        if response.status_code == 200:
            try:
                token = response.json().get("access_token")
            except ValueError:
                token = None
        if not token:
            fix = "check GENESYS_CLIENT_ID and GENESYS_CLIENT_SECRET (a client-credentials client)"
            if response.status_code == 404:
                fix = f"{self.variable} does not lead to a Genesys Cloud org"
            self.findings.append(
                Finding(
                    "credentials",
                    Verdict.FAIL,
                    f"client {settings.genesys_client_id!r} refused ({_oauth_error(response)})",
                    fix,
                )
            )
            return False
        self.findings.append(ok("credentials", f"client {settings.genesys_client_id!r} accepted"))
        self.api = _Api(self.http, settings.api_base, token)
        return True

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        assert self.api is not None
        return self.api.call(method, path, **kwargs)

    def _definitions(self) -> Finding:
        # As the worker's catalog reads them, which this answer then spares a call.
        response = self._call("GET", "/api/v2/presence/definitions", params={"deactivated": "true"})
        count = 0
        if response.status_code == 200:
            entities = response.json().get("entities") or []
            count = sum(1 for e in entities if not e.get("deactivated"))
            if self.redis is not None:
                catalog.seed(self.redis, entities, prefix=self.prefix)
        return _verdict(
            "read presence definitions",
            response,
            "presence:presenceDefinition:view",
            f"{count} definitions",
        )

    def _presence(self) -> Finding:
        check = "read agents and presence"
        # Page 1 of the fleet's listing (as the channels' priming reads it), which this answer
        # then spares a call.
        params = {"pageSize": USERS_PAGE_SIZE, "pageNumber": 1, "state": "active"}
        users = self._call("GET", "/api/v2/users", params=params)
        if users.status_code != 200:
            return _verdict(check, users, "directory:user:view", "")
        body = users.json()
        entities = [e for e in body.get("entities") or [] if isinstance(e, dict) and "id" in e]
        if self.redis is not None:
            page = roster.FirstPage([str(e["id"]) for e in entities], bool(body.get("nextUri")))
            roster.seed_first_page(self.redis, budget_key(self.settings), page, prefix=self.prefix)
        if not entities:
            return Finding(check, Verdict.WARN, "the org has no active user", "", fatal=False)
        self.agent = str(entities[0]["id"])
        response = self._call("GET", f"/api/v2/users/{self.agent}/presences/purecloud")
        return _verdict(check, response, "presence:userPresence:view", f"read agent {self.agent}")

    def _edit(self) -> Finding:
        # An empty bulk update can change nothing: allowed, it is refused as empty (400).
        response = self._call("PUT", "/api/v2/users/presences/bulk", json=[])
        return _verdict(
            "edit presence",
            response,
            "presence:userPresence:edit",
            "allowed (probed with an empty bulk update: nothing changed)",
            accept=400,
        )

    def _source(self) -> Finding:
        """Whether PRESENCE_SOURCE is the source the org (and a sample agent) treats as
        primary: a write to any other source changes that source only, not the presence agents
        are routed by, and no event confirms it."""
        check = "presence source"
        wanted = self.settings.presence_source
        wanted = "PURECLOUD" if wanted.upper() == "PURECLOUD" else wanted
        primary: str | None = None
        if self.agent is not None:  # the sample agent's primary source decides when readable
            answer = self._call("GET", f"/api/v2/presence/users/{self.agent}/primarysource")
            if answer.status_code == 200 and answer.json().get("sourceId"):
                primary = str(answer.json()["sourceId"])
        if primary is None:
            settings = self._call("GET", "/api/v2/presence/settings")
            if settings.status_code != 200:
                return Finding(
                    check,
                    Verdict.WARN,
                    f"could not read the org's presence settings ({_error_text(settings)})",
                    "give the client's role presence settings view to check PRESENCE_SOURCE",
                    fatal=False,
                )
            primary = settings.json().get("defaultPrimaryPresenceRegisteredSourceId") or "PURECLOUD"
        if primary.upper() == wanted.upper():
            return ok(check, f"PRESENCE_SOURCE={wanted} is the primary presence source")
        return Finding(
            check,
            Verdict.WARN,
            f"PRESENCE_SOURCE={wanted} but the primary presence source is {primary}: writes "
            "change that source's presence only, not the one agents are routed by, and end "
            "applied_unconfirmed",
            f"set PRESENCE_SOURCE={primary}, or make {wanted} the primary source",
            fatal=False,
        )

    def _notifications(self) -> Finding:
        check = "notifications"
        if self.agent is None:
            return skip(check, "no agent to subscribe to")
        if self.redis is None:
            return skip(check, "needs Redis (the check keeps its one channel's id there)")
        key = channel_key(self.settings.genesys_client_id, self.prefix)
        raw = self.redis.get(key)
        channel = raw.decode() if isinstance(raw, bytes) else None
        if channel is not None:
            alive = self._call("HEAD", f"/api/v2/notifications/channels/{channel}")
            channel = channel if alive.status_code == 200 else None
        if channel is None and self.settings.channel_slots >= PLATFORM_CHANNELS:
            return Finding(
                check,
                Verdict.WARN,
                f"CHANNEL_SLOTS={self.settings.channel_slots} leaves no channel for this check "
                "(one more could evict a worker's)",
                f"set CHANNEL_SLOTS below {PLATFORM_CHANNELS}",
                fatal=False,
            )
        if channel is None:
            created = self._call("POST", "/api/v2/notifications/channels")
            if created.status_code != 200:
                return _verdict(check, created, NOTIFY_FIX, "")
            channel = str(created.json()["id"])
            self.redis.set(key, channel, ex=CHANNEL_KEEP_S)
        topic = f"v2.users.{self.agent}.presence"
        response = self._call(
            "PUT", f"/api/v2/notifications/channels/{channel}/subscriptions", json=[{"id": topic}]
        )
        return _verdict(check, response, NOTIFY_FIX, f"channel {channel} subscribed to one agent")

    def _queues(self) -> Finding:
        response = self._call("GET", "/api/v2/routing/queues", params={"pageSize": 1})
        if response.status_code == 200:
            entities = response.json().get("entities") or []
            self.queue = str(entities[0]["id"]) if entities else None
        return _verdict(
            "read queues and members", response, "routing:queue:view", "queues readable"
        )

    def _observations(self) -> Finding:
        queue = self.queue or "00000000-0000-0000-0000-000000000000"
        query = {
            "filter": {
                "type": "or",
                "predicates": [
                    {
                        "type": "dimension",
                        "dimension": "queueId",
                        "operator": "matches",
                        "value": queue,
                    }
                ],
            },
            "metrics": ["oOnQueueUsers", "oWaiting"],
        }
        response = self._call("POST", "/api/v2/analytics/queues/observations/query", json=query)
        return _verdict(
            "queue observations",
            response,
            "analytics:queueObservation:view",
            "one queue observed (the capacity guard's numbers)",
        )

    def _budget(self) -> Finding:
        check = "API budget"
        budget = self.api.budget if self.api is not None else None
        configured = self.settings.rate_limit_per_minute
        if budget is None:
            return Finding(check, Verdict.WARN, "no inin-ratelimit headers seen", "", fatal=False)
        allowed, used = budget
        if allowed <= 0:
            return ok(check, f"no platform limit announced; RATE_LIMIT_PER_MINUTE={configured}")
        seen = f"{allowed}/min allowed, {max(0, allowed - used)} remaining this minute"
        if configured > allowed:
            return Finding(
                check,
                Verdict.WARN,
                f"{seen}; RATE_LIMIT_PER_MINUTE={configured} is above it",
                f"set RATE_LIMIT_PER_MINUTE={allowed}",
                fatal=False,
            )
        return ok(check, f"{seen}; RATE_LIMIT_PER_MINUTE={configured}")


def _oauth_error(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        body = None
    reason = None
    if isinstance(body, dict):
        reason = body.get("error_description") or body.get("error") or body.get("message")
    return f"HTTP {response.status_code}: {reason or response.reason_phrase}"
