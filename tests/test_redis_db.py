"""The tests' own database on a shared Redis (tests/support/redis_db.py), on a real private
server standing in for the shared one."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from tests.support.processes import private_redis
from tests.support.redis_db import (
    LEASE_KEY,
    NoFreeDatabase,
    claim_database,
    claim_given_database,
    split_database,
)


@pytest.fixture
def server() -> Iterator[str]:
    with private_redis() as url:
        yield split_database(url)[0]


def db(server: str, number: int) -> redis.Redis:
    return redis.Redis.from_url(f"{server}/{number}")


def test_a_run_claims_an_empty_database_and_never_one_with_data(server):
    db(server, 1).set("someone:else", "keep me")

    claimed = claim_database(server)

    assert claimed.number == 2
    assert claimed.url == f"{server}/2"
    assert db(server, 1).get("someone:else") == b"keep me"
    assert claim_database(server).number == 3, "a second run gets another database"


def test_emptying_keeps_the_lease_and_release_gives_the_database_back(server):
    claimed = claim_database(server)
    db(server, claimed.number).set("presence:queue", "x")

    claimed.empty()

    assert db(server, claimed.number).get("presence:queue") is None
    assert db(server, claimed.number).ttl(LEASE_KEY) > 0
    claimed.release()
    assert db(server, claimed.number).dbsize() == 0
    assert claim_database(server).number == claimed.number


def test_a_crashed_runs_database_is_reused_once_its_lease_expires(server):
    crashed = claim_database(server)
    db(server, crashed.number).set("celery-leftover", "x")
    db(server, crashed.number).delete(LEASE_KEY)  # the lease expired

    again = claim_database(server)

    assert again.number == crashed.number
    assert db(server, again.number).get("celery-leftover") is None


def test_a_database_another_run_took_over_is_not_emptied(server):
    claimed = claim_database(server)
    db(server, claimed.number).set(LEASE_KEY, "another-run")
    db(server, claimed.number).set("their:key", "x")

    with pytest.raises(RuntimeError, match="no longer this test run's database"):
        claimed.empty()
    claimed.release()

    assert db(server, claimed.number).get("their:key") == b"x"


def test_no_free_database_says_how_to_choose_one(server):
    for number in range(16):
        db(server, number).set("data", "x")

    with pytest.raises(NoFreeDatabase, match="set REDIS_URL"):
        claim_database(server)


def test_the_database_redis_url_names_is_claimed_only_when_free(server):
    db(server, 4).set("someone:else", "keep me")

    with pytest.raises(
        NoFreeDatabase, match="database 4, but it holds data that is not the tests'"
    ):
        claim_given_database(server, 4)
    claimed = claim_given_database(server, 5)
    with pytest.raises(NoFreeDatabase, match="database 5, but another test run holds it"):
        claim_given_database(server, 5)

    assert claimed.number == 5
    assert db(server, 4).get("someone:else") == b"keep me"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://127.0.0.1:6393/9", ("redis://127.0.0.1:6393", 9)),
        ("redis://:pw@cache:6379", ("redis://:pw@cache:6379", 0)),
        ("redis://cache:6379/", ("redis://cache:6379", 0)),
    ],
)
def test_split_database(url, expected):
    assert split_database(url) == expected
