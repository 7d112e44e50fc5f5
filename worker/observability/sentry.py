"""Sentry error reporting for the workers, with every secret scrubbed before an event leaves.

``init_sentry`` runs in the worker's main process from Celery's ``celeryd_init`` signal (never in
``worker_process_init``); prefork children inherit the client and the SDK restarts its sending
thread after the fork. Nothing happens when ``SENTRY_DSN`` is unset. Events carry ``release``
(``presence-worker@<version>``), ``environment`` (``SENTRY_ENVIRONMENT``) and, inside a task,
the ``celery_task_name`` tag.

The scrubber (``before_send`` and ``before_breadcrumb``) walks the whole event — messages,
exception values, frame variables, request data, extra, contexts, breadcrumbs — and removes:

* the value of every ``SecretStr`` setting (the Genesys client secret, the WFM webhook secret once
  configured, …) and the password of every URL setting (``REDIS_URL``, ``DATABASE_URL``), raw
  and percent-decoded, wherever they appear;
* the access token this process currently holds;
* ``Bearer …`` / ``Basic …`` credentials, ``access_token=…``-style pairs and URL passwords in any
  string;
* the values of keys that name credentials (``Authorization``, ``token``, ``secret``,
  ``password``, ``cookie``, ``api_key``, ``dsn`` …).

Sentry's own key-based ``EventScrubber`` stays on underneath. No trace headers are sent to the
Genesys API (``trace_propagation_targets=[]``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import sentry_sdk
from pydantic import SecretStr
from sentry_sdk.integrations.celery import CeleryIntegration
from sentry_sdk.integrations.redis import RedisIntegration
from sentry_sdk.integrations.sqlalchemy import SqlalchemyIntegration

from worker.settings import Settings
from worker.version import PACKAGE, package_version

if TYPE_CHECKING:
    from sentry_sdk.transport import Transport
    from sentry_sdk.types import Breadcrumb, BreadcrumbHint, Event, Hint

log = logging.getLogger(__name__)

FILTERED = "[Filtered]"
MIN_SECRET_LENGTH = 4  # shorter configured values are not scanned for (they would shred text)

# Keys whose values are credentials, wherever they sit in the event (frame variables, headers,
# request data, extra, breadcrumb data). Matched on the whole key, case-insensitively.
_SENSITIVE_KEY = re.compile(
    r"(?i).*(authorization|password|passwd|secret|token|cookie|api[-_]?key|credential"
    r"|private[-_]?key|dsn).*|auth"
)
# ``Bearer <token>`` anywhere (case-insensitive); ``Basic <base64>`` (case-sensitive, so that the
# English word "basic" survives).
_BEARER = re.compile(r"(?i)\b(bearer)(\s+)[A-Za-z0-9._~+/=-]+")
_BASIC = re.compile(r"\b(Basic)(\s+)[A-Za-z0-9+/=]{8,}")
# ``access_token=…``, ``"client_secret": "…"``, ``password: …`` inside strings.
_PAIR = re.compile(
    r"(?i)\b((?:access|refresh|id)_token|client_secret|secret|password|passwd|token)"
    r"""(["']?\s*[:=]\s*["']?)([^\s"'&,;}\]]+)"""
)
# ``scheme://user:password@host`` → ``scheme://user:[Filtered]@host``.
_URL_PASSWORD = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^\s:/@]*:)([^\s@/]+)@")


def release() -> str:
    """``presence-worker@<installed version>`` (``@unknown`` when the package is not installed)."""
    return f"{PACKAGE}@{package_version()}"


def configured_secrets(settings: Settings) -> set[str]:
    """Every secret value in the settings: each ``SecretStr`` and each URL's password."""
    found: set[str] = set()
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if isinstance(value, SecretStr):
            found.add(value.get_secret_value())
        elif isinstance(value, str) and "://" in value:
            try:
                password = urlsplit(value).password
            except ValueError:
                password = None
            if password:
                found |= {password, unquote(password)}
    return {s for s in found if len(s) >= MIN_SECRET_LENGTH}


def current_access_tokens() -> list[str]:
    """The bearer tokens this process holds in memory, one per org whose runtime fetched one."""
    from worker.runtime import Runtime  # late: the runtime imports most of the worker

    tokens = []
    for runtime in Runtime.built():
        local = getattr(runtime.tokens, "_local", None)
        if isinstance(local, tuple) and isinstance(local[0], str):
            tokens.append(local[0])
    return tokens


class Scrubber:
    """Removes secrets from Sentry events and breadcrumbs (see the module docstring)."""

    def __init__(
        self,
        secrets: Iterable[str] = (),
        *,
        dynamic: Callable[[], Iterable[str]] | None = None,
    ) -> None:
        self.secrets = sorted({s for s in secrets if len(s) >= MIN_SECRET_LENGTH}, key=len)[::-1]
        self.dynamic = dynamic

    @classmethod
    def from_settings(cls, settings: Settings) -> Scrubber:
        from worker.orgs import OrgsError, load_orgs  # late: the orgs import the settings

        secrets = configured_secrets(settings)
        try:
            for org in load_orgs(settings).values():
                secrets |= configured_secrets(org.settings)  # each org's client and WFM secret
        except OrgsError:
            pass  # the worker refuses to start with it; nothing of it is in memory
        return cls(secrets, dynamic=current_access_tokens)

    # -- Sentry hooks -------------------------------------------------------------------------
    def before_send(self, event: Event, hint: Hint) -> Event | None:
        scrubbed: Event = self.scrub(event, self._secrets_now())
        job = (scrubbed.get("extra") or {}).get("celery-job")
        if isinstance(job, dict) and isinstance(job.get("task_name"), str):
            tags = scrubbed.get("tags")
            if isinstance(tags, dict):
                tags.setdefault("celery_task_name", job["task_name"])
            elif tags is None:
                scrubbed["tags"] = {"celery_task_name": job["task_name"]}
        return scrubbed

    def before_breadcrumb(self, crumb: Breadcrumb, hint: BreadcrumbHint) -> Breadcrumb | None:
        scrubbed: Breadcrumb = self.scrub(crumb, self._secrets_now())
        return scrubbed

    # -- the walk -------------------------------------------------------------------------------
    def _secrets_now(self) -> list[str]:
        if self.dynamic is None:
            return self.secrets
        try:
            extra = [s for s in self.dynamic() if len(s) >= MIN_SECRET_LENGTH]
        except Exception:  # a scrubber must never fail an event
            extra = []
        return sorted({*self.secrets, *extra}, key=len)[::-1]

    def scrub(self, value: Any, secrets: list[str] | None = None) -> Any:
        """A scrubbed copy of ``value`` (dicts, lists, tuples and strings, recursively).

        Other objects are left as they are: an event is serialized to plain data before
        ``before_send``, so whatever a breadcrumb's objects turn into is scrubbed there.
        """
        found = self.secrets if secrets is None else secrets
        if isinstance(value, str):
            return self.scrub_text(value, found)
        if isinstance(value, bytes | bytearray):  # raw breadcrumb data; events are text by now
            return self.scrub_text(value.decode("utf-8", "replace"), found)
        if isinstance(value, dict):
            out: dict[Any, Any] = {}
            for key, item in value.items():
                sensitive = isinstance(key, str) and _SENSITIVE_KEY.fullmatch(key) is not None
                if sensitive and item is not None and not isinstance(item, bool | int | float):
                    out[key] = FILTERED
                else:
                    out[key] = self.scrub(item, found)
            return out
        if isinstance(value, list | tuple):
            return [self.scrub(item, found) for item in value]
        return value

    def scrub_text(self, text: str, secrets: list[str] | None = None) -> str:
        for secret in self.secrets if secrets is None else secrets:
            if secret in text:
                text = text.replace(secret, FILTERED)
        text = _BEARER.sub(rf"\1\2{FILTERED}", text)
        text = _BASIC.sub(rf"\1\2{FILTERED}", text)
        text = _PAIR.sub(rf"\1\2{FILTERED}", text)
        return _URL_PASSWORD.sub(rf"\1{FILTERED}@", text)


def init_sentry(settings: Settings, *, transport: Transport | None = None) -> bool:
    """Start the Sentry SDK when ``SENTRY_DSN`` is set; True when it was started.

    ``transport`` replaces the HTTP transport (tests capture envelopes in memory).
    """
    if settings.sentry_dsn is None or not settings.sentry_dsn.get_secret_value():
        return False
    scrubber = Scrubber.from_settings(settings)
    try:
        sentry_sdk.init(
            dsn=settings.sentry_dsn.get_secret_value(),
            release=release(),
            environment=settings.sentry_environment,
            integrations=[CeleryIntegration(), SqlalchemyIntegration(), RedisIntegration()],
            before_send=scrubber.before_send,
            before_breadcrumb=scrubber.before_breadcrumb,
            trace_propagation_targets=[],
            transport=transport,
        )
    except Exception as exc:  # a bad DSN must not keep the worker from working
        log.warning("Sentry is not started: %s", type(exc).__name__)
        return False
    return True


def on_celeryd_init(**_: Any) -> None:
    """``celeryd_init`` receiver: the worker's main process, before the pool starts."""
    from worker.settings import get_settings

    init_sentry(get_settings())
