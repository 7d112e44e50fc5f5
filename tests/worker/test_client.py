"""GenesysClient: every call spends a limiter slot, carries a timeout, is never retried behind
the caller's back (except one token renewal on 401) and fails with a typed, secret-free error.

The client is the one ``Runtime.build`` wires up, talking to the emulator over HTTP.
"""

from __future__ import annotations

import threading
import uuid

import pytest
import redis
from pydantic import SecretStr

from tests.worker.conftest import SYSTEM_IDS, eventually, route_count
from worker.genesys.client import GenesysClient, recording
from worker.genesys.errors import (
    BadRequest,
    Forbidden,
    GenesysError,
    NotFound,
    RateLimited,
    ServerError,
    TransportError,
    Unauthorized,
)
from worker.limiter import BudgetExhausted, SharedRateLimiter
from worker.runtime import Runtime

AVAILABLE = SYSTEM_IDS["Available"]


@pytest.fixture
def user_id(api) -> str:
    return str(api.active_users()[0]["id"])


def assert_secret_free(exc: GenesysError, rt: Runtime) -> None:
    """Neither the client secret nor any token the process holds appears in the error."""
    text = f"{exc} {exc.args!r} {exc.message}"
    assert rt.settings.genesys_client_secret.get_secret_value() not in text
    assert rt.tokens.get() not in text


def is_correlation_id(value: str | None) -> bool:
    return bool(value) and len(value) >= 16


def test_a_bad_definition_id_is_a_bad_request_with_code_message_and_correlation_id(
    runtime, user_id, monkeypatch
):
    answered: list[tuple[str, dict]] = []  # what came over the wire
    send = runtime.client.http.request

    def observe(*args, **kwargs):
        reply = send(*args, **kwargs)
        answered.append((reply.headers["inin-correlation-id"], reply.json()))
        return reply

    monkeypatch.setattr(runtime.client.http, "request", observe)

    with pytest.raises(BadRequest) as caught:
        runtime.client.patch_presence(user_id, str(uuid.uuid4()))

    exc = caught.value
    assert exc.status == 400
    assert exc.code == "bad.request"
    assert exc.retryable is False
    correlation_id, body = answered[-1]
    assert exc.correlation_id == correlation_id == body["contextId"]
    assert exc.message.endswith(f": {body['message']}")
    assert f"PATCH /api/v2/users/{user_id}/presences/purecloud" in str(exc)
    assert "HTTP 400 bad.request: " in str(exc)
    assert "\n" not in str(exc)
    assert_secret_free(exc, runtime)


def test_an_unknown_user_is_not_found(runtime):
    with pytest.raises(NotFound) as caught:
        runtime.client.patch_presence(str(uuid.uuid4()), AVAILABLE)

    assert caught.value.status == 404
    assert caught.value.code == "not.found"
    assert caught.value.retryable is False
    assert is_correlation_id(caught.value.correlation_id)
    assert_secret_free(caught.value, runtime)


def test_a_missing_permission_is_forbidden(api, settings, user_id):
    api.admin(
        "POST",
        "/clients",
        {"client_id": "read-only", "client_secret": "read-only-secret", "permissions": []},
    )
    narrow = settings.model_copy(
        update={
            "genesys_client_id": "read-only",
            "genesys_client_secret": SecretStr("read-only-secret"),
        }
    )
    rt = Runtime.build(narrow)
    try:
        with pytest.raises(Forbidden) as caught:
            rt.client.patch_presence(user_id, AVAILABLE)
        assert caught.value.status == 403
        assert caught.value.code == "missing.any.permissions"
        assert "presence:userPresence:edit" in str(caught.value)
        assert_secret_free(caught.value, rt)
    finally:
        rt.http.close()


def test_the_error_body_code_and_message_and_correlation_ids_are_carried(api, runtime, user_id):
    api.admin(
        "POST",
        "/faults/errors",
        {
            "endpoint": "presence.get",
            "status": 400,
            "count": 2,
            "code": "custom.rule",
            "message": "The custom rule refused this",
        },
    )
    errors = []
    for _ in range(2):
        with pytest.raises(BadRequest) as caught:
            runtime.client.get_presence(user_id)
        errors.append(caught.value)

    assert errors[0].code == "custom.rule"
    assert errors[0].message.endswith("The custom rule refused this")
    assert is_correlation_id(errors[0].correlation_id)
    assert errors[0].correlation_id != errors[1].correlation_id, "one id per request"


def test_429_raises_rate_limited_and_pauses_every_process(api, runtime, redis_url, user_id):
    api.admin(
        "POST",
        "/faults/errors",
        {"endpoint": "presence.get", "status": 429, "count": 1, "retry_after_s": 3},
    )

    with pytest.raises(RateLimited) as caught:
        runtime.client.get_presence(user_id)

    assert caught.value.status == 429
    assert caught.value.retryable is True
    assert caught.value.retry_after_s == 3.0
    assert_secret_free(caught.value, runtime)
    # Another process sharing the budget (same client key, own connection) must wait too.
    connection = redis.Redis.from_url(redis_url)
    try:
        elsewhere = SharedRateLimiter(
            connection, key=runtime.settings.genesys_client_id, limit_per_minute=6000,
            provisional_s=5,
        )  # fmt: skip
        member, wait_s = elsewhere.try_acquire()
        assert member is None
        assert 2.0 < wait_s <= 3.0
    finally:
        connection.close()


def test_5xx_raises_a_retryable_server_error_without_a_hidden_retry(api, runtime, user_id):
    api.admin("POST", "/faults/errors", {"endpoint": "presence.get", "status": 503, "count": 1})

    with pytest.raises(ServerError) as caught:
        runtime.client.get_presence(user_id)

    assert caught.value.status == 503
    assert caught.value.retryable is True
    assert route_count(api, "presence.get") == 1, "the client never retries on its own"
    presence, _ = runtime.client.get_presence(user_id)  # the fault is spent: works again
    assert presence.presence_definition.id


def test_a_call_slower_than_the_timeout_is_a_retryable_transport_error(api, runtime, user_id):
    runtime.tokens.get()
    api.admin("POST", "/faults/latency", {"endpoint": "presence.get", "latency_ms": 800})
    impatient = GenesysClient(
        runtime.client.http, runtime.tokens, runtime.limiter, api_base=runtime.settings.api_base,
        timeout_s=0.3, max_inline_wait_s=1,
    )  # fmt: skip

    with pytest.raises(TransportError) as caught:
        impatient.get_presence(user_id)

    assert caught.value.retryable is True
    assert "timed out after 0.3 s" in str(caught.value)
    assert_secret_free(caught.value, runtime)
    assert runtime.limiter.in_window() == 1, "the timed-out call spent its slot"
    # Let the emulator finish the abandoned request, so it is not counted in the next test.
    eventually(lambda: route_count(api, "presence.get") == 1, what="the abandoned request")


def test_a_revoked_token_is_renewed_once_and_the_call_succeeds(api, runtime, user_id):
    before = route_count(api, "oauth.token")
    runtime.client.get_presence(user_id)
    api.admin("POST", "/tokens/revoke", {})

    with recording() as calls:
        presence, answer = runtime.client.get_presence(user_id)

    assert answer.status == 200
    assert presence.presence_definition.id
    assert calls.calls == 2
    assert calls.statuses == [401, 200]
    assert route_count(api, "oauth.token") - before == 2, "first token, then one renewal"
    assert runtime.limiter.in_window() == 3, "the refused call spent a slot too"


def test_a_persistent_401_is_raised_after_one_renewal(api, runtime, user_id):
    api.admin("POST", "/faults/errors", {"endpoint": "presence.get", "status": 401})

    with recording() as calls, pytest.raises(Unauthorized) as caught:
        runtime.client.get_presence(user_id)

    assert calls.statuses == [401, 401]
    assert caught.value.retryable is False
    assert_secret_free(caught.value, runtime)


def test_every_call_takes_a_limiter_slot(runtime, user_id):
    runtime.client.presence_definitions()
    runtime.client.get_presence(user_id)
    runtime.client.patch_presence(user_id, AVAILABLE)

    assert runtime.limiter.in_window() == 3  # the token request is not an API call


def test_no_slot_no_call(api, runtime, r, user_id):
    runtime.tokens.get()
    full = SharedRateLimiter(r, key="tiny-budget", limit_per_minute=1, provisional_s=5)
    full.acquire(max_wait_s=0)
    starved = GenesysClient(
        runtime.client.http, runtime.tokens, full, api_base=runtime.settings.api_base, timeout_s=2,
        max_inline_wait_s=0.5,
    )  # fmt: skip

    with pytest.raises(BudgetExhausted):
        starved.get_presence(user_id)

    assert route_count(api, "presence.get") == 0


def test_recording_attributes_only_this_contexts_calls(runtime, user_id):
    runtime.client.get_presence(user_id)  # outside: not attributed
    in_other_thread = threading.Thread(target=runtime.client.get_presence, args=(user_id,))

    with recording() as calls:
        runtime.client.get_presence(user_id)
        runtime.client.patch_presence(user_id, AVAILABLE)
        in_other_thread.start()
        in_other_thread.join(5)

    assert calls.calls == 2
    assert calls.statuses == [200, 200]
    assert calls.api_s > 0
    assert calls.limiter_wait_s >= 0
    assert runtime.limiter.in_window() == 4
