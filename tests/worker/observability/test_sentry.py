"""Sentry: a failing ``presence.update`` reaches Sentry with its tags and without any secret.

The task runs in-process through Celery's ``apply()`` on a runtime wired exactly as in a worker
(real emulator, real Redis, a migrated SQLite audit database). Only its HTTP transport is swapped
for one that fails the way a careless proxy library would: with the request's credentials in the
exception message. The SDK is the real one, initialised by ``init_sentry`` with the worker's
options; the one piece replaced is Sentry's HTTP transport — delivery to a Sentry server is an edge
we cannot run here — by one that keeps the serialized envelopes in memory. Every check reads those
bytes, exactly what would have been sent.

Honesty check: a scope event processor serializes each event *before* any scrubbing (Sentry's own
scrubber and ours both run later), and the tests assert that the secret or token really was there.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from importlib.metadata import version
from typing import Any

import httpx
import pytest
import sentry_sdk
from celery.signals import celeryd_init
from pydantic import SecretStr
from sentry_sdk.envelope import Envelope
from sentry_sdk.serializer import serialize
from sentry_sdk.transport import Transport

import migrations
from worker.genesys.http import PlatformHttp, Reply
from worker.observability import sentry as observed
from worker.runtime import Runtime
from worker.settings import Settings

FAKE_DSN = "https://publickey@sentry.invalid/42"


class CapturingTransport(Transport):
    """Keeps each envelope as the bytes the HTTP transport would have posted."""

    def __init__(self) -> None:
        super().__init__(None)
        self.envelopes: list[bytes] = []

    def capture_envelope(self, envelope: Envelope) -> None:
        self.envelopes.append(envelope.serialize())

    def events(self) -> list[dict[str, Any]]:
        """The error events (envelope items of type ``event``), parsed."""
        found = []
        for raw in self.envelopes:
            for item in Envelope.deserialize(raw).items:
                if item.type == "event" and item.payload.json is not None:
                    found.append(item.payload.json)
        return found


class LeakyTransport(httpx.HTTPTransport):
    """Passes requests through, except ``fail_on`` (method, path suffix): that one raises an
    exception quoting the request's Authorization header, as some proxy or library might."""

    def __init__(self, fail_on: tuple[str, str]) -> None:
        super().__init__()
        self.fail_on = fail_on

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        method, suffix = self.fail_on
        if request.method == method and request.url.path.endswith(suffix):
            raise RuntimeError(
                f"gateway refused {request.method} {request.url.path} "
                f"(Authorization: {request.headers['Authorization']})"
            )
        return super().handle_request(request)


class LeakyPlatformHttp(PlatformHttp):
    """The API calls' transport, failing ``fail_on`` as :class:`LeakyTransport` does."""

    def __init__(self, fail_on: tuple[str, str]) -> None:
        super().__init__()
        self.fail_on = fail_on

    def request(self, method: str, url: str, **kwargs: Any) -> Reply:
        fail_method, suffix = self.fail_on
        if method == fail_method and url.split("?", 1)[0].endswith(suffix):
            path = url.split("/api/", 1)[-1]
            raise RuntimeError(
                f"gateway refused {method} /api/{path} "
                f"(Authorization: {kwargs['headers']['Authorization']})"
            )
        return super().request(method, url, **kwargs)


@pytest.fixture
def sentry_capture() -> Iterator[tuple[CapturingTransport, list[str]]]:
    """A capturing transport for ``init_sentry`` and the pre-scrub serialized events. The test
    runs in an isolation scope of its own, and the SDK (process-global) is switched off after."""
    transport = CapturingTransport()
    unscrubbed: list[str] = []
    with sentry_sdk.isolation_scope():
        yield transport, unscrubbed
    sentry_sdk.get_client().close()
    sentry_sdk.get_global_scope().set_client(None)


def start_sentry(settings: Settings, transport: CapturingTransport, unscrubbed: list[str]) -> None:
    assert observed.init_sentry(settings, transport=transport)

    def keep_unscrubbed(event: Any, hint: Any) -> Any:
        unscrubbed.append(json.dumps(serialize(event)))
        return event

    # Processors of this scope run before any scrubber; the task's scope is forked from it.
    sentry_sdk.get_isolation_scope().add_event_processor(keep_unscrubbed)


@pytest.fixture
def secret_client(api) -> tuple[str, str]:
    """An OAuth client of the emulator with a secret found nowhere else."""
    client_id, secret = f"sentry-{uuid.uuid4().hex[:6]}", f"cs-{uuid.uuid4().hex}"
    api.admin(
        "POST",
        "/clients",
        {"client_id": client_id, "client_secret": secret, "permissions": ["*"]},
    )
    return client_id, secret


@pytest.fixture
def worker_settings(settings: Settings, secret_client, tmp_path) -> Settings:
    database_url = f"sqlite:///{tmp_path / 'audit.sqlite3'}"
    migrations.upgrade(database_url)
    client_id, secret = secret_client
    return settings.model_copy(
        update={
            "genesys_client_id": client_id,
            "genesys_client_secret": SecretStr(secret),
            "database_url": database_url,
            "max_retries": 0,  # the first unexpected failure is dead-lettered: one run, one row
            "ack_timeout_s": 1.0,
            "sentry_dsn": SecretStr(FAKE_DSN),
            "sentry_environment": "staging-test",
        }
    )


def run_failing_task(
    settings: Settings, fail_on: tuple[str, str], user_id: str, monkeypatch
) -> tuple[Runtime, str, str]:
    """Run ``presence.update`` in-process on a runtime whose HTTP transport fails ``fail_on``;
    returns the runtime, the task id and the task's outcome."""
    from tasks.presence import update

    rt = Runtime.build(settings)
    leaky = httpx.Client(transport=LeakyTransport(fail_on), timeout=settings.http_timeout_s)
    rt.http.close()
    rt.http = rt.tokens.http = leaky
    rt.client.http = LeakyPlatformHttp(fail_on)
    monkeypatch.setattr(Runtime, "_current", (os.getpid(), {"default": rt}))
    payload = {
        "user_id": user_id,
        "state": "Available",
        "source": "sentry-test",
        "requested_at": datetime.now(UTC).isoformat(),
    }
    result = update.apply(args=[payload])
    return rt, str(result.id), str(result.get())


@pytest.fixture
def user_id(api) -> str:
    return str(api.active_users()[0]["id"])


def only_event(transport: CapturingTransport) -> tuple[dict[str, Any], str]:
    events = transport.events()
    assert len(events) == 1, [e.get("logentry") or e.get("message") for e in events]
    (raw,) = [r for r in transport.envelopes if b'"type":"event"' in r]
    return events[0], raw.decode()


def assert_tagged(event: dict[str, Any], task_id: str) -> None:
    assert event["release"] == observed.release()
    assert event["release"] == f"presence-worker@{version('presence-worker')}"
    assert event["environment"] == "staging-test"
    assert event["tags"]["celery_task_name"] == "presence.update"
    assert event["tags"]["celery_task_id"] == task_id


def test_a_token_in_a_failing_patch_never_reaches_sentry(
    worker_settings, user_id, sentry_capture, monkeypatch
):
    transport, unscrubbed = sentry_capture
    start_sentry(worker_settings, transport, unscrubbed)

    rt, task_id, outcome = run_failing_task(
        worker_settings, ("PATCH", "/presences/purecloud"), user_id, monkeypatch
    )
    try:
        token = rt.tokens.get()  # the token the failing call carried (cached, not renewed)
    finally:
        rt.listener.stop()
        rt.http.close()

    assert outcome == "dead_letter"
    event, envelope = only_event(transport)
    assert_tagged(event, task_id)
    assert event["exception"]["values"][-1]["type"] == "RuntimeError"
    (before,) = unscrubbed
    assert token in before, "the unscrubbed event carried the token (message and frame vars)"
    assert f"Bearer {token}" in before
    assert token not in envelope
    assert "Bearer [Filtered]" in json.dumps(event["exception"])
    assert worker_settings.genesys_client_secret.get_secret_value() not in envelope


def test_the_client_secret_in_a_failing_token_request_never_reaches_sentry(
    worker_settings, user_id, sentry_capture, monkeypatch
):
    transport, unscrubbed = sentry_capture
    start_sentry(worker_settings, transport, unscrubbed)
    secret = worker_settings.genesys_client_secret.get_secret_value()

    rt, task_id, outcome = run_failing_task(
        worker_settings, ("POST", "/oauth/token"), user_id, monkeypatch
    )
    rt.listener.stop()
    rt.http.close()

    assert outcome == "dead_letter"
    event, envelope = only_event(transport)
    assert_tagged(event, task_id)
    (before,) = unscrubbed
    assert secret in before, "the unscrubbed event carried the secret (httpx frame variables)"
    assert "Basic " in before
    assert secret not in envelope
    assert "Basic [Filtered]" in json.dumps(event["exception"])


def test_breadcrumbs_messages_and_request_data_are_scrubbed_by_the_sdk_hooks(sentry_capture):
    transport, unscrubbed = sentry_capture
    settings = Settings(
        _env_file=None,
        genesys_client_secret="client-secret-value-1",
        redis_url="redis://:redis-pass-2@cache.internal:6379/0",
        database_url="postgresql+psycopg://presence:db-pass-3@db.internal/presence",
        sentry_dsn=FAKE_DSN,
        sentry_environment="staging-test",
    )

    def add_request(event: Any, hint: Any) -> Any:  # as a web integration would
        event["request"] = {
            "headers": {"Authorization": "Bearer tok-in-header"},
            "data": {"grant": "client_credentials", "access_token": "tok-in-body"},
        }
        return event

    sentry_sdk.get_isolation_scope().add_event_processor(add_request)  # runs before the snapshot
    start_sentry(settings, transport, unscrubbed)
    sentry_sdk.add_breadcrumb(
        category="http",
        message="GET /api/v2/users Authorization: Bearer tok-in-breadcrumb",
        data={"url": settings.redis_url},
    )
    sentry_sdk.set_extra("config", f"{settings.database_url} secret=client-secret-value-1")
    sentry_sdk.capture_message("connect failed: bearer tok-in-message")

    event, envelope = only_event(transport)
    (before,) = unscrubbed
    needles = [
        "tok-in-header", "tok-in-body", "tok-in-message", "db-pass-3", "client-secret-value-1",
    ]  # fmt: skip
    for needle in needles:
        assert needle in before, needle
        assert needle not in envelope, needle
    # Breadcrumbs are scrubbed when added (before_breadcrumb), so no snapshot holds them raw.
    for needle in ("tok-in-breadcrumb", "redis-pass-2"):
        assert needle not in envelope, needle
    (crumb,) = [c for c in event["breadcrumbs"]["values"] if c.get("category") == "http"]
    assert crumb["message"] == "GET /api/v2/users Authorization: Bearer [Filtered]"
    assert crumb["data"]["url"] == "redis://:[Filtered]@cache.internal:6379/0"
    assert event["request"]["data"]["grant"] == "client_credentials"
    assert event["environment"] == "staging-test"


def test_every_secret_setting_and_url_password_is_scrubbed_wherever_it_sits():
    class WithWebhook(Settings):
        wfm_webhook_secret: SecretStr | None = None

    settings = WithWebhook(
        _env_file=None,
        genesys_client_secret="client-secret-value-1",
        wfm_webhook_secret="whsec-value-4",
        redis_url="rediss://default:p%40ss-5@cache:6380/0",
    )
    scrubber = observed.Scrubber.from_settings(settings)
    event = {
        "message": "signing with whsec-value-4 failed; basic checks passed",
        "exception": {"values": [{"value": "bad auth for p@ss-5 / client-secret-value-1"}]},
        "frames": [{"vars": {"x": "client-secret-value-1", "auth": ["id", "anything"]}}],
        "request": {"headers": {"Authorization": "Basic aWQ6c2VjcmV0LXZhbHVl"}},
        "breadcrumbs": {
            "values": [{"message": 'body {"access_token": "tok-6", "expires_in": 60}'}]
        },
        "extra": {"token_count": 3, "url": "rediss://default:p%40ss-5@cache:6380/0"},
    }

    text = json.dumps(scrubber.scrub(event))

    for needle in ("whsec-value-4", "p@ss-5", "p%40ss-5", "client-secret-value-1", "tok-6"):
        assert needle not in text, needle
    assert "anything" not in text
    assert "aWQ6c2VjcmV0LXZhbHVl" not in text
    assert "basic checks passed" in text, "ordinary words survive"
    assert '"token_count": 3' in text, "numbers under credential-like keys are not secrets"
    assert "rediss://default:[Filtered]@cache:6380/0" in text


def test_the_worker_starts_sentry_at_celeryd_init(monkeypatch):
    import worker.app  # noqa: F401 - connects the observability signals
    from worker.settings import get_settings

    started: list[Settings] = []
    monkeypatch.setattr(observed, "init_sentry", lambda s, **_: started.append(s) or True)

    celeryd_init.send(sender="test@host", instance=None, conf=None, options={})

    assert started == [get_settings()]


def test_without_a_dsn_sentry_stays_off(monkeypatch):
    monkeypatch.delenv("SENTRY_DSN", raising=False)

    assert observed.init_sentry(Settings(_env_file=None)) is False
    assert not sentry_sdk.get_client().is_active()
