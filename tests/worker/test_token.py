"""TokenProvider: one client-credentials token for the whole fleet, kept in Redis.

Against the emulator's real ``/oauth/token``; each provider with its own Redis connection and
HTTP client stands for one worker process.
"""

from __future__ import annotations

import threading

import httpx
import pytest
import redis

from tests.support.clock import ManualClock
from tests.worker.conftest import route_count
from worker.genesys.errors import TokenError
from worker.genesys.token import TokenProvider


@pytest.fixture
def make_provider(emulator, redis_url):
    """Providers that each hold their own Redis connection and HTTP client."""
    opened: list[tuple[redis.Redis, httpx.Client]] = []

    def make(
        *, client_id: str | None = None, client_secret: str | None = None, **kw
    ) -> TokenProvider:
        connection, http = redis.Redis.from_url(redis_url), httpx.Client()
        opened.append((connection, http))
        return TokenProvider(
            connection,
            http,
            login_base=emulator.base_url,
            client_id=client_id or emulator.client_id,
            client_secret=client_secret or emulator.client_secret,
            timeout_s=5.0,
            **kw,
        )

    yield make
    for connection, http in opened:
        connection.close()
        http.close()


def token_works(api, token: str) -> bool:
    response = httpx.get(
        f"{api.emulator.base_url}/api/v2/presence/definitions",
        headers={"Authorization": f"Bearer {token}"},
    )
    return response.status_code == 200


def test_one_token_is_fetched_and_shared_by_every_process_and_thread(api, make_provider):
    before = route_count(api, "oauth.token")
    providers = [make_provider(), make_provider()]
    tokens: list[str] = []
    errors: list[BaseException] = []
    start = threading.Barrier(10)

    def get(provider: TokenProvider) -> None:
        try:
            start.wait()
            tokens.append(provider.get())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=get, args=(providers[i % 2],)) for i in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(15)

    assert not errors
    assert len(tokens) == 10
    assert len(set(tokens)) == 1
    assert route_count(api, "oauth.token") - before == 1
    assert token_works(api, tokens[0])


def test_the_token_is_renewed_shortly_before_it_expires(api, make_provider):
    api.admin("PUT", "/settings", {"token_lifetime_s": 100})
    clock = ManualClock(1_000_000.0)
    provider = make_provider(clock=clock)
    other_process = make_provider(clock=clock)
    first = provider.get()

    clock.now += 89  # 10 % of the lifetime is left: still the same token everywhere
    assert provider.get() == first
    assert other_process.get() == first

    clock.now += 2  # inside the last 10 %: renewed while the old token still works
    assert token_works(api, first)
    renewed = provider.get()
    assert renewed != first
    assert other_process.get() == renewed
    assert provider.renewals == 2, "the first fetch and one renewal"
    assert other_process.renewals == 0, "the other process only read the shared token"
    assert token_works(api, renewed)


def test_invalidate_drops_only_the_token_that_failed(api, make_provider):
    provider = make_provider()
    revoked = provider.get()
    api.admin("POST", "/tokens/revoke", {})
    assert not token_works(api, revoked)

    provider.invalidate(revoked)
    fresh = provider.get()
    assert fresh != revoked
    assert token_works(api, fresh)

    # A late 401 for the old token (another process) must not drop the new, shared one.
    before = route_count(api, "oauth.token")
    make_provider().invalidate(revoked)
    assert make_provider().get() == fresh, "a new process still finds the shared token"
    assert provider.get() == fresh
    assert route_count(api, "oauth.token") == before


def test_refused_credentials_raise_token_error_naming_the_client_but_not_the_secret(
    api, make_provider
):
    secret = "wrong-secret-value-7b1f"
    provider = make_provider(client_secret=secret)

    with pytest.raises(TokenError) as caught:
        provider.get()

    message = str(caught.value)
    assert api.emulator.client_id in message
    assert secret not in message
    assert "GENESYS_CLIENT_ID" in message
    assert caught.value.status == 401
    assert caught.value.retryable is False


def test_an_unknown_client_is_refused_the_same_way(api, make_provider):
    provider = make_provider(client_id="nobody-knows-me", client_secret="s3cr3t-unknown")

    with pytest.raises(TokenError) as caught:
        provider.get()

    assert "nobody-knows-me" in str(caught.value)
    assert "s3cr3t-unknown" not in str(caught.value)


def test_a_token_that_answered_401_is_never_handed_out_again(make_provider, api, redis_url):
    provider = make_provider()
    dead = provider.get()
    stale_copy = redis.Redis.from_url(redis_url).get(provider.key)
    provider.invalidate(dead)
    # A thread that read the token just before the 401 puts the stale copy back.
    redis.Redis.from_url(redis_url).set(provider.key, stale_copy)

    fresh = provider.get()

    assert fresh != dead
    assert token_works(api, fresh)


def test_two_orgs_with_the_same_client_id_keep_separate_tokens(api, make_provider):
    before = route_count(api, "oauth.token")
    default, acme = make_provider(), make_provider(prefix="presence:org:acme")

    mine, theirs = default.get(), acme.get()

    assert mine != theirs
    assert route_count(api, "oauth.token") - before == 2, "each org fetched its own"
    assert default.renewals == acme.renewals == 1
    default.invalidate(mine)
    assert make_provider(prefix="presence:org:acme").get() == theirs, "still cached for acme"
    assert make_provider().get() != mine
