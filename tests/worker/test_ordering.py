"""AgentOrdering: the newest request per agent wins; one change at a time per agent."""

from __future__ import annotations

import threading
import time

import pytest
import redis

from tests.support.redis_db import commands_during
from worker.broker import holders
from worker.ordering import AgentBusy, AgentOrdering

AGENT = "2c9e5d7e-0000-4000-8000-000000000001"
OTHER = "2c9e5d7e-0000-4000-8000-000000000002"


@pytest.fixture
def ordering(r) -> AgentOrdering:
    return AgentOrdering(r, marker_ttl_s=60)


def test_a_lone_request_is_not_superseded(ordering):
    ordering.register(AGENT, 1_000, "req-a")

    assert not ordering.is_superseded(AGENT, 1_000, "req-a")
    assert not ordering.is_superseded(OTHER, 1, "never-registered")


def test_a_newer_request_supersedes_older_ones_whatever_the_arrival_order(ordering):
    ordering.register(AGENT, 2_000, "req-new")
    ordering.register(AGENT, 1_000, "req-old")  # arrives late (a retry, a slow producer)

    assert ordering.is_superseded(AGENT, 1_000, "req-old")
    assert not ordering.is_superseded(AGENT, 2_000, "req-new")
    assert not ordering.is_superseded(OTHER, 1_000, "req-old"), "agents are independent"


def test_equal_timestamps_are_ordered_by_request_id(ordering):
    ordering.register(AGENT, 5_000, "req-b")
    ordering.register(AGENT, 5_000, "req-a")

    assert ordering.is_superseded(AGENT, 5_000, "req-a")
    assert not ordering.is_superseded(AGENT, 5_000, "req-b")


def test_timestamps_compare_numerically_not_as_text(ordering):
    ordering.register(AGENT, 9_999, "req-z")
    ordering.register(AGENT, 10_000, "req-a")

    assert ordering.is_superseded(AGENT, 9_999, "req-z")


def test_the_marker_expires(ordering, r):
    ordering.register(AGENT, 1_000, "req-a")

    assert 0 < r.ttl(f"presence:agent:{AGENT}:newest") <= 60


def test_the_lock_excludes_a_second_holder(ordering):
    with ordering.lock(AGENT, ttl_s=5, wait_s=0):
        started = time.monotonic()
        with pytest.raises(AgentBusy, match=AGENT), ordering.lock(AGENT, ttl_s=5, wait_s=0.2):
            pass
        assert time.monotonic() - started >= 0.2, "the second holder waited before giving up"
        with ordering.lock(OTHER, ttl_s=5, wait_s=0):
            pass  # other agents are not blocked


def test_a_released_lock_can_be_taken_again(ordering):
    with ordering.lock(AGENT, ttl_s=5, wait_s=0):
        pass
    with ordering.lock(AGENT, ttl_s=5, wait_s=0):
        pass


def test_a_waiter_gets_the_lock_once_the_holder_releases_it(ordering):
    held, release = threading.Event(), threading.Event()

    def holder() -> None:
        with ordering.lock(AGENT, ttl_s=5, wait_s=0):
            held.set()
            release.wait(5)

    thread = threading.Thread(target=holder)
    thread.start()
    assert held.wait(5)
    threading.Timer(0.2, release.set).start()
    with ordering.lock(AGENT, ttl_s=5, wait_s=3):
        assert release.is_set(), "acquired only after the holder let go"
    thread.join(5)


def test_an_expired_holder_does_not_release_the_next_holders_lock(ordering):
    stale = ordering.lock(AGENT, ttl_s=0.1, wait_s=0)
    stale.__enter__()
    time.sleep(0.2)  # the holder outlives its TTL; the lock is free again

    with ordering.lock(AGENT, ttl_s=5, wait_s=0):
        stale.__exit__(None, None, None)  # the stale holder finishes late
        with pytest.raises(AgentBusy), ordering.lock(AGENT, ttl_s=5, wait_s=0):
            pass


def test_many_at_once_decide_as_one_at_a_time(ordering):
    """A wave registers and checks its agents in one round trip each; the verdicts are those of
    the one-at-a-time calls."""
    ordering.register(OTHER, 9_000, "single-newer")
    wave = [(AGENT, 1_000, "wave-old"), (AGENT, 2_000, "wave-new"), (OTHER, 3_000, "wave-other")]

    ordering.register_many(wave)

    assert ordering.superseded_among(wave) == {"wave-old", "wave-other"}
    assert {rid for u, ts, rid in wave if ordering.is_superseded(u, ts, rid)} == {
        "wave-old",
        "wave-other",
    }
    assert ordering.superseded_among([]) == set()


def test_many_locks_are_taken_without_waiting_and_released_by_their_owner(ordering, r):
    r.set(f"presence:agent:{OTHER}:lock", "someone-else", px=5_000)

    owners = ordering.try_lock_many([AGENT, OTHER, AGENT], ttl_s=5)

    assert set(owners) == {AGENT}  # OTHER is held elsewhere; AGENT asked twice, taken once
    ordering.unlock_many(owners)
    assert r.get(f"presence:agent:{AGENT}:lock") is None
    assert r.get(f"presence:agent:{OTHER}:lock") == b"someone-else"


def test_many_locks_are_released_in_one_round_trip_and_only_where_still_ours(
    ordering, r, monkeypatch
):
    agents = [f"2c9e5d7e-0000-4000-8000-{n:012d}" for n in range(10, 60)]
    owners = ordering.try_lock_many(agents, ttl_s=5)
    r.set(f"presence:agent:{agents[0]}:lock", "next-holder", px=5_000)  # ours expired, retaken
    r.script_flush()  # a fresh server: the pipeline loads the script itself
    sends: list[int] = []
    original = redis.connection.Connection.send_packed_command

    def counted(self, command, check_health=True):
        sends.append(1)
        return original(self, command, check_health)

    monkeypatch.setattr(redis.connection.Connection, "send_packed_command", counted)
    ordering.unlock_many(owners)
    monkeypatch.undo()

    assert r.get(f"presence:agent:{agents[0]}:lock") == b"next-holder"
    assert all(r.get(f"presence:agent:{a}:lock") is None for a in agents[1:])
    assert len(sends) <= 3  # script check and load, then every release at once


def test_register_and_lock_registers_holds_the_lock_and_tells_if_superseded(ordering, r):
    with ordering.register_and_lock(AGENT, 100, "req-a", ttl_s=5, wait_s=0) as superseded:
        assert not superseded
        assert r.get(f"presence:agent:{AGENT}:lock") is not None
        second = ordering.register_and_lock(AGENT, 200, "req-b", ttl_s=5, wait_s=0.05)
        with pytest.raises(AgentBusy), second:  # a second holder waits, then gives up
            pass
        assert ordering.is_superseded(AGENT, 100, "req-a")  # req-b registered all the same
    assert r.get(f"presence:agent:{AGENT}:lock") is None

    with ordering.register_and_lock(AGENT, 100, "req-a", ttl_s=5, wait_s=0) as superseded:
        assert superseded  # redelivered after req-b: read once the lock is held


def test_register_and_lock_reads_the_marker_after_waiting_for_the_lock(ordering, r):
    r.set(f"presence:agent:{AGENT}:lock", "someone-else", px=5_000)

    def newer_arrives_then_release() -> None:
        time.sleep(0.1)
        ordering.register(AGENT, 200, "req-newer")
        r.delete(f"presence:agent:{AGENT}:lock")

    threading.Thread(target=newer_arrives_then_release).start()
    with ordering.register_and_lock(AGENT, 100, "req-a", ttl_s=5, wait_s=2) as superseded:
        assert superseded


def test_register_and_lock_takes_one_round_trip_when_the_agent_is_free(ordering, r, monkeypatch):
    with ordering.register_and_lock(OTHER, 1, "warm-up", ttl_s=5, wait_s=0):
        pass  # the scripts are loaded
    sends: list[int] = []
    original = redis.connection.Connection.send_packed_command

    def counted(self, command, check_health=True):
        sends.append(1)
        return original(self, command, check_health)

    monkeypatch.setattr(redis.connection.Connection, "send_packed_command", counted)
    with ordering.register_and_lock(AGENT, 100, "req-a", ttl_s=5, wait_s=0):
        assert len(sends) <= 2  # the script check, then register + lock + marker together
    monkeypatch.undo()


def test_register_and_lock_never_rolls_the_marker_back_while_it_waits(ordering, r):
    ordering.register(AGENT, 500, "req-newest")
    r.set(f"presence:agent:{AGENT}:lock", "someone-else", px=5_000)

    with (
        pytest.raises(AgentBusy),
        ordering.register_and_lock(  # retries the script meanwhile
            AGENT, 100, "req-old", ttl_s=5, wait_s=0.1
        ),
    ):
        pass

    assert r.get(f"presence:agent:{AGENT}:lock") == b"someone-else", "not ours to release"
    assert ordering.is_superseded(AGENT, 100, "req-old")
    assert not ordering.is_superseded(AGENT, 500, "req-newest")
    assert 0 < r.ttl(f"presence:agent:{AGENT}:newest") <= 60, "the marker's life is renewed"


def test_register_and_lock_takes_the_lock_with_its_expiry_and_releases_only_its_own(ordering, r):
    key = f"presence:agent:{AGENT}:lock"
    with ordering.register_and_lock(AGENT, 100, "req-a", ttl_s=5, wait_s=0):
        assert 0 < r.pttl(key) <= 5_000
        r.set(key, "next-holder", px=5_000)  # ours expired; another worker took it
    assert r.get(key) == b"next-holder"


def test_a_redelivered_request_takes_over_the_lock_its_dead_delivery_left(ordering, r):
    """Its worker died holding the lock: the same request gets it back at once (to read back
    what it did), while any other request still waits for the lock to expire."""
    key = f"presence:agent:{AGENT}:lock"
    r.set(key, "req-a|dead-process", px=60_000)  # left by req-a's delivery, killed mid-write

    newer = ordering.register_and_lock(AGENT, 200, "req-b", ttl_s=5, wait_s=0.05)
    with pytest.raises(AgentBusy), newer:
        pass
    with ordering.register_and_lock(AGENT, 100, "req-a", ttl_s=5, wait_s=0) as superseded:
        assert superseded  # req-b registered: the flow reads its earlier write back first
        assert 0 < r.pttl(key) <= 5_000, "held with this delivery's expiry"
    assert r.get(key) is None


def test_a_second_delivery_of_a_request_waits_while_the_first_is_alive(ordering, r):
    """The same message delivered twice at once: the second waits for the first's lock."""
    key = f"presence:agent:{AGENT}:lock"
    r.set(f"{holders.ALIVE_PREFIX}other-process", 1)
    r.set(key, "req-a|other-process", px=60_000)  # a live worker applying req-a

    second = ordering.register_and_lock(AGENT, 100, "req-a", ttl_s=5, wait_s=0.05)
    with pytest.raises(AgentBusy), second:
        pass
    with ordering.register_and_lock(OTHER, 100, "req-c", ttl_s=5, wait_s=0):
        same_process = ordering.register_and_lock(OTHER, 100, "req-c", ttl_s=5, wait_s=0.05)
        with pytest.raises(AgentBusy), same_process:  # another thread of this process
            pass


def test_an_older_request_registered_late_keeps_the_newer_marker_and_its_expiry(ordering, r):
    ordering.register(AGENT, 2_000, "req-new")
    r.expire(f"presence:agent:{AGENT}:newest", 5)

    ordering.register(AGENT, 1_000, "req-old")

    assert r.get(f"presence:agent:{AGENT}:newest") == b"00000000000000002000|req-new"
    assert 5 < r.ttl(f"presence:agent:{AGENT}:newest") <= 60


def test_the_newest_request_registers_and_locks_in_three_commands(ordering, r):
    ordering.register(AGENT, 1_000, "req-a")  # the script loaded once

    def register_and_lock() -> None:
        with ordering.register_and_lock(AGENT, 2_000, "req-b", ttl_s=5, wait_s=0):
            pass

    counted = commands_during(r, register_and_lock)
    # The script, the marker written with the old one read back, the lock; then the release.
    assert counted == {"evalsha": 2, "set": 2, "get": 1, "del": 1}


def test_keys_read_with_the_lock_come_back_in_the_same_script_call(ordering, r):
    r.set("presence:intent:req-b", "mark")
    read = ["presence:intent:req-b", "presence:state:nobody"]

    def register_lock_and_read() -> None:
        with ordering.register_lock_and_read(
            AGENT, 2_000, "req-b", ttl_s=5, wait_s=0, read=read
        ) as (superseded, values):
            assert not superseded
            assert values == [b"mark", None]

    counted = commands_during(r, register_lock_and_read)
    # As without reads, plus the one MGET inside the script: no round trip of its own.
    assert counted == {"evalsha": 2, "set": 2, "mget": 1, "get": 1, "del": 1}


def test_keys_are_read_after_a_dead_delivery_s_lock_is_taken_over(ordering, r):
    r.set(f"presence:agent:{AGENT}:lock", "req-a|dead-process", px=60_000)  # its worker died
    r.set("presence:intent:req-a", "sent")

    with ordering.register_lock_and_read(
        AGENT, 100, "req-a", ttl_s=5, wait_s=0, read=["presence:intent:req-a"]
    ) as (_, values):
        assert values == [b"sent"], "the mark its earlier delivery left, read once the lock is ours"
        assert r.get(f"presence:agent:{AGENT}:lock").startswith(b"req-a|")


def test_two_orgs_order_and_lock_the_same_agent_id_independently(r):
    default, acme = (
        AgentOrdering(r, marker_ttl_s=60),
        AgentOrdering(r, marker_ttl_s=60, prefix="presence:org:acme"),
    )
    default.register(AGENT, 2_000, "req-new")

    assert not acme.is_superseded(AGENT, 1_000, "req-old"), "another org's newer request"
    assert acme.superseded_among([(AGENT, 1_000, "req-old")]) == set()
    with default.lock(AGENT, ttl_s=5, wait_s=0):
        with acme.lock(AGENT, ttl_s=5, wait_s=0):  # not blocked by the other org's lock
            pass
        taken = acme.try_lock_many([AGENT], ttl_s=5)
        assert list(taken) == [AGENT]
        acme.unlock_many(taken)
        with acme.register_and_lock(AGENT, 1_000, "req-old", ttl_s=5, wait_s=0) as superseded:
            assert superseded is False
    assert default.is_superseded(AGENT, 1_000, "req-old")
