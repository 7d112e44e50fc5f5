"""The per-token request limit: N requests per rolling 60 s.

The session emulator runs with the limit off, so this module starts its own with 10/minute.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from emulator.launcher import EmulatorProcess
from tests.emulator._rest import assert_error

LIMIT = 10
PROBE = "/api/v2/users?pageSize=1"


@pytest.fixture(scope="module")
def limited_emulator() -> Iterator[EmulatorProcess]:
    proc = EmulatorProcess(args=["--users", "20", "--queues", "2", "--rate-limit", str(LIMIT)])
    with proc:
        yield proc


class Budget:
    """Talks to the rate-limited emulator: tokens, API calls and the admin API."""

    def __init__(self, emulator: EmulatorProcess) -> None:
        self.base = emulator.base_url
        self.credentials = (emulator.client_id, emulator.client_secret)

    def token_response(self) -> httpx.Response:
        return httpx.post(
            f"{self.base}/oauth/token",
            auth=self.credentials,
            data={"grant_type": "client_credentials"},
        )

    def token(self) -> str:
        response = self.token_response()
        response.raise_for_status()
        value: str = response.json()["access_token"]
        return value

    def call(self, token: str, path: str = PROBE) -> httpx.Response:
        return httpx.get(f"{self.base}{path}", headers={"Authorization": f"Bearer {token}"})

    def spend(self, token: str, count: int) -> list[httpx.Response]:
        return [self.call(token) for _ in range(count)]

    def admin(self, method: str, path: str, json: object = None) -> httpx.Response:
        response = httpx.request(method, f"{self.base}/__emulator{path}", json=json)
        response.raise_for_status()
        return response


@pytest.fixture
def budget(limited_emulator) -> Budget:
    budget = Budget(limited_emulator)
    budget.admin("POST", "/reset")
    return budget


def ratelimit_headers(response: httpx.Response) -> tuple[int, int, int]:
    """(allowed, count, reset) from the ``inin-ratelimit-*`` headers."""
    return (
        int(response.headers["inin-ratelimit-allowed"]),
        int(response.headers["inin-ratelimit-count"]),
        int(response.headers["inin-ratelimit-reset"]),
    )


def test_requests_within_the_limit_pass_and_count_up_in_headers(budget):
    responses = budget.spend(budget.token(), LIMIT)

    assert [r.status_code for r in responses] == [200] * LIMIT
    headers = [ratelimit_headers(r) for r in responses]
    assert [allowed for allowed, _, _ in headers] == [LIMIT] * LIMIT
    assert [count for _, count, _ in headers] == list(range(1, LIMIT + 1))
    assert all(0 < reset <= 60 for _, _, reset in headers)


def test_the_request_over_the_limit_is_429_with_retry_after(budget):
    token = budget.token()
    budget.spend(token, LIMIT)

    response = budget.call(token)

    body = assert_error(response, 429, "too.many.requests.retry.after")
    retry_after = int(response.headers["Retry-After"])
    assert 1 <= retry_after <= 60
    assert body["messageParams"] == {"0": str(retry_after)}
    assert str(retry_after) in body["message"]
    assert ratelimit_headers(response)[:2] == (LIMIT, LIMIT)


def test_rejected_requests_do_not_use_up_more_budget(budget):
    token = budget.token()
    budget.spend(token, LIMIT)

    rejected = budget.spend(token, 3)

    assert [r.status_code for r in rejected] == [429] * 3
    assert {ratelimit_headers(r)[1] for r in rejected} == {LIMIT}


def test_every_endpoint_draws_on_the_same_budget(budget):
    token = budget.token()
    paths = ["/api/v2/presencedefinitions", "/api/v2/routing/queues", "/api/v2/nowhere"]
    spent = [budget.call(token, paths[i % len(paths)]) for i in range(LIMIT)]

    response = budget.call(token, "/api/v2/presence/definitions")

    assert all(r.status_code != 429 for r in spent)
    assert_error(response, 429, "too.many.requests.retry.after")


def test_the_limit_is_per_token(budget):
    first, second = budget.token(), budget.token()
    budget.spend(first, LIMIT)
    assert budget.call(first).status_code == 429

    responses = budget.spend(second, LIMIT)

    assert [r.status_code for r in responses] == [200] * LIMIT
    assert ratelimit_headers(responses[0])[1] == 1
    assert budget.call(second).status_code == 429


def test_an_unknown_token_is_401_not_429(budget):
    token = budget.token()
    budget.spend(token, LIMIT)

    assert_error(budget.call("not-a-token"), 401, "bad.credentials")


def test_the_token_endpoint_is_not_rate_limited(budget):
    token = budget.token()
    budget.spend(token, LIMIT + 1)

    responses = [budget.token_response() for _ in range(LIMIT + 5)]

    assert [r.status_code for r in responses] == [200] * (LIMIT + 5)
    assert all("inin-ratelimit-count" not in r.headers for r in responses)


def test_the_admin_api_is_not_rate_limited(budget):
    responses = [httpx.get(f"{budget.base}/__emulator/settings") for _ in range(LIMIT + 5)]

    assert {r.status_code for r in responses} == {200}


def test_stats_report_the_peak_rate_and_429s_by_route(budget):
    token = budget.token()
    budget.spend(token, LIMIT + 4)

    stats = budget.admin("GET", "/stats").json()

    assert stats["peakPerMinute"] == LIMIT
    assert stats["tooManyRequests"] == 4
    assert stats["requests"]["users.list"] == {"200": LIMIT, "429": 4}
    (entry,) = stats["tokens"]
    assert entry["clientId"] == budget.credentials[0]
    assert entry["peakPerMinute"] == LIMIT
    assert entry["rejected"] == 4
    assert token not in str(stats), "stats must never show a token"


def test_stats_count_each_tokens_peak_separately(budget):
    budget.spend(budget.token(), 3)
    budget.spend(budget.token(), 7)

    stats = budget.admin("GET", "/stats").json()

    assert sorted(t["peakPerMinute"] for t in stats["tokens"]) == [3, 7]
    assert stats["peakPerMinute"] == 7
    assert stats["tooManyRequests"] == 0


def test_the_limit_can_be_changed_at_run_time(budget):
    before = budget.admin("GET", "/settings").json()["rate_limit_per_minute"]
    budget.admin("PUT", "/settings", {"rate_limit_per_minute": 3})
    try:
        token = budget.token()
        statuses = [r.status_code for r in budget.spend(token, 4)]
        allowed = ratelimit_headers(budget.call(token))[0]
    finally:
        budget.admin("PUT", "/settings", {"rate_limit_per_minute": before})

    assert statuses == [200, 200, 200, 429]
    assert allowed == 3


def test_reset_gives_every_token_a_fresh_budget(budget):
    token = budget.token()
    budget.spend(token, LIMIT + 1)

    budget.admin("POST", "/reset")
    fresh = budget.token()

    assert budget.call(fresh).status_code == 200
    assert_error(budget.call(token), 401, "bad.credentials")
