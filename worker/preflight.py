"""Pre-flight checks: what ``presence doctor`` prints and what a worker verifies before consuming.

:func:`run_checks` returns one :class:`Finding` per check, in order: settings, files, Redis,
database (reachable, migrated to head), Genesys (reachable, credentials), the OAuth client's
permissions for what the worker does, the API budget and the WFM endpoint. A check that depends
on a failed one is skipped. Nothing is changed anywhere: the edit permission is probed with an
empty bulk update (refused as empty when allowed), the notification check reuses one channel of
its own (its id kept in Redis) and subscribes it to one agent. Genesys cost: one token request
and at most nine API requests. Findings never contain a secret.
"""

from __future__ import annotations

import contextlib
import enum
import ipaddress
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import redis
from pydantic import ValidationError

from worker.problems import (
    database_problem,
    first_line,
    mask_url,
    redis_problem,
    settings_problem,
)
from worker.settings import Settings

log = logging.getLogger("presence.preflight")
CHANNEL_KEY = "presence:doctor:channel:{{{client_id}}}"
PLATFORM_CHANNELS = 20  # per OAuth client; the platform evicts the oldest beyond that
CHANNEL_KEEP_S = 20 * 3600  # under the platform's 24 h channel lifetime
NOTIFY_FIX = "let the client's role create notification channels and subscribe to agents' presence"


class Verdict(enum.StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"
    SKIP = "skip"


@dataclass(frozen=True, slots=True)
class Finding:
    """One check's result: what was seen and, unless ok, what to do about it. ``fatal``: a
    worker must not start with this failure."""

    check: str
    verdict: Verdict
    detail: str
    fix: str = ""
    fatal: bool = True

    @property
    def failed(self) -> bool:
        return self.verdict is Verdict.FAIL

    @property
    def line(self) -> str:
        """The finding as one log line."""
        text = f"{self.check}: {self.detail}"
        return f"{text}; {self.fix}" if self.fix else text


def ok(check: str, detail: str) -> Finding:
    return Finding(check, Verdict.OK, detail)


def skip(check: str, detail: str) -> Finding:
    return Finding(check, Verdict.SKIP, detail)


def load_settings() -> tuple[Settings | None, Finding]:
    """The settings from the environment, and the finding about them."""
    try:
        settings = Settings()
    except ValidationError as exc:
        return None, Finding("settings", Verdict.FAIL, settings_problem(exc), "fix the variable")
    return settings, check_settings(settings)


def check_settings(settings: Settings) -> Finding:
    """Valid settings that name a Genesys org and an OAuth client."""
    try:
        base = settings.api_base
    except ValueError as exc:
        return Finding("settings", Verdict.FAIL, str(exc), "set one of them")
    empty = [
        name
        for name, value in (
            ("GENESYS_CLIENT_ID", settings.genesys_client_id),
            ("GENESYS_CLIENT_SECRET", settings.genesys_client_secret.get_secret_value()),
        )
        if not value
    ]
    if empty:
        return Finding(
            "settings",
            Verdict.FAIL,
            f"{' and '.join(empty)} empty",
            "set the OAuth client-credentials client of the org",
        )
    return ok("settings", f"valid; Genesys at {mask_url(base)}")


def check_files(settings: Settings) -> Finding | None:
    """The transition matrix and capacity override files load (None: neither is set)."""
    from worker.rules.capacity import load_overrides
    from worker.rules.transitions import TransitionMatrix

    if settings.transition_matrix_file is None and settings.capacity_overrides_file is None:
        return None
    try:
        TransitionMatrix.load(settings.transition_matrix_file)
        load_overrides(settings.capacity_overrides_file)
    except ValueError as exc:
        return Finding("files", Verdict.FAIL, str(exc), "fix or unset the file")
    named = [
        str(p) for p in (settings.transition_matrix_file, settings.capacity_overrides_file) if p
    ]
    return ok("files", f"{', '.join(named)} loaded")


def check_redis(settings: Settings, timeout_s: float) -> tuple[redis.Redis | None, Finding]:
    client = redis.Redis.from_url(
        settings.redis_url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s
    )
    try:
        client.ping()
    except redis.RedisError as exc:
        client.close()
        seen, fix = redis_problem(settings.redis_url, exc)
        return None, Finding("Redis", Verdict.FAIL, seen, fix)
    return client, ok("Redis", f"{mask_url(settings.redis_url)} answers")


def check_database(settings: Settings, timeout_s: float) -> Finding:
    """Reachable and at the migrations' head revision; an absent SQLite file is not created."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory
    from sqlalchemy import create_engine, pool
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

    import migrations

    url = settings.database_url
    shown = mask_url(url)
    migrate = "run `presence migrate`"
    try:
        parsed = make_url(url)
        backend = parsed.get_backend_name()
        connect_args: dict[str, Any] = {}
        if backend == "sqlite":
            path = parsed.database or ""
            local = bool(path) and path != ":memory:" and not path.startswith("file:")
            if local and not Path(path).exists():
                where = Path(path).resolve().parent
                fix = migrate if where.is_dir() else f"create {where} or fix DATABASE_URL"
                return Finding(
                    "database", Verdict.FAIL, f"DATABASE_URL ({shown}): no such file", fix
                )
        elif backend.startswith("postgres"):
            connect_args["connect_timeout"] = max(1, int(timeout_s))
        engine = create_engine(url, poolclass=pool.NullPool, connect_args=connect_args)
    except (ArgumentError, NoSuchModuleError, ValueError):
        return Finding(
            "database", Verdict.FAIL, "DATABASE_URL is not a usable SQLAlchemy URL", "fix it"
        )
    head = ScriptDirectory.from_config(migrations.alembic_config(url)).get_current_head()
    quiet = logging.getLogger("alembic")
    level = quiet.level
    quiet.setLevel(logging.WARNING)  # not its INFO lines about plugins and DDL
    try:
        with engine.connect() as connection:
            current = MigrationContext.configure(connection).get_current_revision()
    except SQLAlchemyError as exc:
        seen = database_problem(url, exc)
        return Finding("database", Verdict.FAIL, seen, "fix DATABASE_URL or start the database")
    finally:
        quiet.setLevel(level)
        engine.dispose()
    if current == head:
        return ok("database", f"{shown} is at the latest revision ({head})")
    if current is None:
        return Finding("database", Verdict.FAIL, f"{shown} has no audit tables", migrate)
    return Finding(
        "database", Verdict.FAIL, f"{shown} is at revision {current}, not {head}", migrate
    )


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


def _transport(exc: httpx.HTTPError) -> str:
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
    """The Genesys rows, in order; a transport failure or refusal skips what depends on it."""

    def __init__(self, settings: Settings, http: httpx.Client, client: redis.Redis | None) -> None:
        self.settings = settings
        self.http = http
        self.redis = client
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
                        f"{mask_url(self.settings.api_base)} failed: {_transport(exc)}",
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
                    f"{_transport(exc)}",
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
        response = self._call("GET", "/api/v2/presence/definitions")
        count = len(response.json().get("entities", [])) if response.status_code == 200 else 0
        return _verdict(
            "read presence definitions",
            response,
            "presence:presenceDefinition:view",
            f"{count} definitions",
        )

    def _presence(self) -> Finding:
        check = "read agents and presence"
        users = self._call("GET", "/api/v2/users", params={"pageSize": 1, "state": "active"})
        if users.status_code != 200:
            return _verdict(check, users, "directory:user:view", "")
        entities = users.json().get("entities") or []
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

    def _notifications(self) -> Finding:
        check = "notifications"
        if self.agent is None:
            return skip(check, "no agent to subscribe to")
        if self.redis is None:
            return skip(check, "needs Redis (the check keeps its one channel's id there)")
        key = CHANNEL_KEY.format(client_id=self.settings.genesys_client_id)
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


def _origin(url: str) -> str:
    """Scheme, host, port and path only: a query string may carry a key."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return f"{parts.scheme}://{host}{parts.path}"


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_wfm(settings: Settings, http: httpx.Client) -> list[Finding]:
    """The WFM endpoint answers (a HEAD: nothing is delivered) and the signing secret is set.
    Not fatal for a worker: deliveries wait in the outbox."""
    url = settings.wfm_webhook_url
    if not url:
        return [skip("WFM endpoint", "WFM_WEBHOOK_URL unset: no WFM sync")]
    findings = []
    if not settings.wfm_webhook_secret.get_secret_value():
        findings.append(
            Finding(
                "WFM secret",
                Verdict.FAIL,
                "WFM_WEBHOOK_SECRET empty: events would be signed with an empty key",
                "set it to the key the WFM receiver verifies with",
                fatal=False,
            )
        )
    else:
        findings.append(ok("WFM secret", "set"))
    shown = _origin(url)
    try:
        response = http.head(url)
    except httpx.HTTPError as exc:
        findings.insert(
            0,
            Finding(
                "WFM endpoint",
                Verdict.FAIL,
                f"WFM_WEBHOOK_URL ({shown}) unreachable: {_transport(exc)}",
                "check WFM_WEBHOOK_URL and that the receiver runs",
                fatal=False,
            ),
        )
        return findings
    parts = urlsplit(url)
    if parts.scheme == "http" and not _loopback(parts.hostname or ""):
        endpoint = Finding(
            "WFM endpoint",
            Verdict.WARN,
            f"{shown} answered, over plain http (events readable on the way)",
            "use https",
            fatal=False,
        )
    else:
        endpoint = ok("WFM endpoint", f"{shown} answered HTTP {response.status_code} to HEAD")
    findings.insert(0, endpoint)
    return findings


def run_checks(settings: Settings | None = None, *, timeout_s: float = 5.0) -> list[Finding]:
    """Every check, in order (see the module docstring); ``settings`` None: read them now."""
    if settings is None:
        loaded, first = load_settings()
    else:
        loaded, first = settings, check_settings(settings)
    findings = [first]
    if loaded is None:
        return findings
    files = check_files(loaded)
    if files is not None:
        findings.append(files)
    client, found = check_redis(loaded, timeout_s)
    findings.append(found)
    findings.append(check_database(loaded, timeout_s))
    timeout = min(timeout_s, loaded.http_timeout_s)
    try:
        with httpx.Client(timeout=timeout) as http:
            if first.failed:
                findings.append(skip("Genesys", "skipped: fix the settings first"))
            else:
                findings.extend(GenesysChecks(loaded, http, client).run())
            findings.extend(check_wfm(loaded, http))
    finally:
        if client is not None:
            client.close()
    return findings


def on_worker_setup(**_: Any) -> None:
    """``celeryd_after_setup``: log each problem as one line; exit (status 1) before consuming
    when one is fatal. Off with PREFLIGHT_ON_START=false."""
    from worker.settings import get_settings

    settings = get_settings()
    if not settings.preflight_on_start:
        return
    findings = run_checks(settings)
    fatal = [f for f in findings if f.failed and f.fatal]
    for finding in findings:
        if finding in fatal:
            log.critical("preflight: %s", finding.line)
        elif finding.verdict in (Verdict.FAIL, Verdict.WARN):
            log.warning("preflight: %s", finding.line)
    if fatal:
        log.critical(
            "preflight: not starting, %d check(s) failed (`presence doctor` lists every check)",
            len(fatal),
        )
        raise SystemExit(1)
    log.info("preflight: %d checks passed against %s", len(findings), mask_url(settings.api_base))
