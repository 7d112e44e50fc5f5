"""A fleet start spends the Genesys checks once: a starting worker whose fleet-mate passed
every check with the same settings within PREFLIGHT_REUSE_S skips the Genesys rows (no API
request); other settings, a failed run or ``presence doctor`` (no reuse) check in full."""

from __future__ import annotations

import threading

import redis

from tests.worker.preflight.helpers import NEEDED, SECRET, add_client, api_requests
from worker.preflight import Verdict, fleet, run_checks
from worker.settings import Settings


def by_check(findings):
    return {f.check: f for f in findings}


def test_a_second_worker_with_the_same_settings_skips_the_genesys_checks(api, setup):
    settings = setup()
    first = by_check(run_checks(settings, timeout_s=3, reuse_s=600))
    spent = api_requests(api)

    second = by_check(run_checks(settings, timeout_s=3, reuse_s=600))

    assert first["credentials"].verdict is Verdict.OK
    assert spent >= 8
    assert api_requests(api) == spent, "the second start made no Genesys request"
    assert second["Genesys"].verdict is Verdict.SKIP
    assert "PREFLIGHT_REUSE_S" in second["Genesys"].detail
    assert "credentials" not in second
    assert second["Redis"].verdict is Verdict.OK
    assert second["database"].verdict is Verdict.OK


def test_another_secret_or_url_never_reuses_a_pass(api, setup):
    run_checks(setup(), timeout_s=3, reuse_s=600)
    spent = api_requests(api)

    wrong = by_check(run_checks(setup(genesys_client_secret="not-it"), timeout_s=3, reuse_s=600))

    assert wrong["credentials"].verdict is Verdict.FAIL
    assert api_requests(api) == spent  # a refused token costs no API request
    other = setup(rate_limit_per_minute=200)
    assert not fleet.passed_recently(redis.Redis.from_url(other.redis_url), other)


def test_a_run_with_a_failure_is_not_marked_passed(api, setup, redis_url):
    add_client(api, "narrow", SECRET, [p for p in NEEDED if "edit" not in p])
    settings = setup(genesys_client_id="narrow")

    found = by_check(run_checks(settings, timeout_s=3, reuse_s=600))
    again = by_check(run_checks(settings, timeout_s=3, reuse_s=600))

    assert found["edit presence"].verdict is Verdict.FAIL
    assert again["edit presence"].verdict is Verdict.FAIL, "checked again, not reused"


def test_doctor_and_reuse_off_always_check_in_full(api, setup):
    settings = setup()
    run_checks(settings, timeout_s=3, reuse_s=600)
    spent = api_requests(api)

    run_checks(settings, timeout_s=3)  # presence doctor
    doctor = api_requests(api)
    run_checks(settings, timeout_s=3, reuse_s=0)

    assert doctor > spent
    assert api_requests(api) > doctor


def test_the_mark_holds_no_part_of_the_secret(api, setup, redis_url):
    settings = setup()
    run_checks(settings, timeout_s=3, reuse_s=600)

    client = redis.Redis.from_url(redis_url)
    stored = [(key, client.get(key)) for key in client.scan_iter("presence:preflight:*")]

    assert stored, "the pass was recorded"
    for key, value in stored:
        assert SECRET[-8:].encode() not in key
        assert SECRET[-8:].encode() not in (value or b"")
    assert 0 < client.pttl(stored[0][0]) <= 600_000


def test_workers_starting_together_check_once(api, setup):
    settings = setup()
    results: list[dict] = []

    def start() -> None:
        results.append(by_check(run_checks(settings, timeout_s=3, reuse_s=600)))

    workers = [threading.Thread(target=start) for _ in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)

    assert len(results) == 3
    assert sum("credentials" in found for found in results) == 1, "one worker checked"
    assert sum(found.get("Genesys") is not None for found in results) == 2


def test_a_worker_waiting_for_a_failing_check_checks_itself(api, setup, redis_url):
    add_client(api, "narrow", SECRET, [p for p in NEEDED if "edit" not in p])
    settings = setup(genesys_client_id="narrow")
    client = redis.Redis.from_url(redis_url)
    clock = {"now": 0.0}

    def sleep(seconds: float) -> None:
        clock["now"] += seconds
        fleet.release(client, settings)  # the other worker's checks failed

    assert not fleet.await_pass(client, settings)  # this one claims
    assert not fleet.await_pass(client, settings, sleep=sleep, clock=lambda: clock["now"])


def test_another_orgs_pass_is_not_reused(api, setup, redis_url):
    settings, acme = setup(), "presence:org:acme"
    first = by_check(run_checks(settings, timeout_s=3, reuse_s=600, prefix=acme))
    spent = api_requests(api)

    default = by_check(run_checks(settings, timeout_s=3, reuse_s=600))

    assert first["credentials"].verdict is Verdict.OK
    assert default["credentials"].verdict is Verdict.OK, "checked in full"
    assert api_requests(api) > spent
    again = by_check(run_checks(settings, timeout_s=3, reuse_s=600, prefix=acme))
    assert again["Genesys"].verdict is Verdict.SKIP, "the org's own pass is reused"
    client = redis.Redis.from_url(redis_url)
    assert client.exists("presence:preflight:passed:{doctor}")
    assert client.exists(f"{acme}:preflight:passed:{{doctor}}")


def test_each_org_claims_its_own_check(redis_url):
    settings = Settings(
        _env_file=None,
        genesys_api_url="http://127.0.0.1:9",
        genesys_client_id="c",
        genesys_client_secret="s",
        redis_url=redis_url,
    )
    client, acme = redis.Redis.from_url(redis_url), "presence:org:acme"

    assert not fleet.await_pass(client, settings, prefix=acme)  # acme's worker checks
    assert not fleet.await_pass(client, settings, wait_s=0.5)  # so does the default org's
    assert client.exists("presence:preflight:checking:{c}", f"{acme}:preflight:checking:{{c}}") == 2
    fleet.release(client, settings, prefix=acme)
    assert client.exists("presence:preflight:checking:{c}")
    fleet.record_passed(client, settings, 60, prefix=acme)
    assert fleet.passed_recently(client, settings, prefix=acme)
    assert not fleet.passed_recently(client, settings)
