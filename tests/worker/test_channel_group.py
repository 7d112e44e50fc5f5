"""ChannelGroup: one process, several channels. New agents fill a channel with room (POST), then a
new channel, before any channel evicts; priming spreads over as many channels as it needs; every
channel's events reach the process's waiters. Real emulator, real sockets; channels of 5 topics
stand in for the platform's 1,000."""

from __future__ import annotations

import pytest

from tests.worker.conftest import SYSTEM_IDS, eventually, route_count
from tests.worker.test_listener import confirm_a_write, subscribed_users
from worker.notifications.group import ChannelGroup, channel_group
from worker.notifications.listener import NotificationListener, WaiterRegistry
from worker.notifications.roster import FirstPage, Roster, seed_first_page
from worker.notifications.slots import ChannelSlots

BREAK = SYSTEM_IDS["Break"]
TOPICS = 5


@pytest.fixture
def make_group(runtime):
    made: list[ChannelGroup] = []

    def make(*, max_channels: int = 3, max_slots: int = 4, prime_agents: int = 0) -> ChannelGroup:
        def member(waiters: WaiterRegistry) -> NotificationListener:
            slots = ChannelSlots(
                runtime.redis, key=runtime.settings.genesys_client_id, max_slots=max_slots
            )
            return NotificationListener(
                runtime.client,
                runtime.cache,
                slots,
                heartbeat_s=0.5,
                max_topics=TOPICS,
                connect_timeout_s=5,
                waiters=waiters,
            )

        group = ChannelGroup(
            member,
            runtime.client,
            runtime.cache,
            Roster(runtime.redis, key=runtime.settings.genesys_client_id),
            max_channels=max_channels,
            prime_agents=prime_agents,
            prime_wait_s=20,
            connect_timeout_s=5,
        )
        made.append(group)
        return group

    yield make
    for group in made:
        group.stop()
    for group in made:
        for member in group.members:
            if member._thread is not None:
                member._thread.join(5)


@pytest.fixture
def agents(api) -> list[str]:
    return [str(u["id"]) for u in api.active_users()]


def test_agents_beyond_a_channels_room_go_to_a_new_channel_without_any_replace(
    api, runtime, make_group, agents
):
    group = make_group()

    for user_id in agents[:7]:
        assert group.ensure_subscribed(user_id, wait_s=5)

    assert len(group.members) == 2
    first, second = group.members
    assert subscribed_users(api, first.channel_id) == set(agents[:5])
    assert subscribed_users(api, second.channel_id) == set(agents[5:7])
    assert route_count(api, "notifications.subscriptions.put") == 0, "no topic list replaced"
    # Events of either channel reach the process's waiters.
    for user_id in (agents[0], agents[6]):
        event, _ = confirm_a_write(runtime, group, user_id, BREAK)
        assert event is not None


def test_a_wave_larger_than_a_channel_is_spread_with_one_call_per_channel(api, make_group, agents):
    group = make_group()
    wave = agents[:12]

    covered = group.subscribe_many(wave, wait_s=5)

    assert covered == set(wave)
    assert len(group.members) == 3
    assert route_count(api, "notifications.subscriptions.post") == 3
    assert route_count(api, "notifications.subscriptions.put") == 0
    assert group.subscribe_many(wave, wait_s=5) == set(wave)
    assert route_count(api, "notifications.subscriptions.post") == 3, "held agents cost nothing"


def test_a_process_holds_no_more_channels_than_allowed_and_then_evicts(api, make_group, agents):
    group = make_group(max_channels=2)

    covered = group.subscribe_many(agents[:12], wait_s=5)

    assert len(group.members) == 2
    assert len(covered) == 2 * TOPICS, "only agents whose events will arrive"
    assert set(agents[10:12]) <= covered
    assert route_count(api, "notifications.subscriptions.put") == 1, "one channel made room"


def test_the_fleets_slots_bound_the_channels_too(api, make_group, agents):
    group = make_group(max_channels=3, max_slots=1)

    for user_id in agents[:7]:
        group.ensure_subscribed(user_id, wait_s=5)

    assert len(group.members) == 1, "no slot for a second channel"
    assert len(subscribed_users(api, group.members[0].channel_id)) == TOPICS


def test_priming_spreads_over_as_many_channels_as_it_needs_and_fills_the_cache(
    api, runtime, make_group, agents
):
    group = make_group(prime_agents=12)

    assert group.wait_primed()

    assert len(group.members) == 3
    primed = set().union(*(subscribed_users(api, m.channel_id) for m in group.members))
    assert primed == set(agents[:12])
    assert route_count(api, "notifications.subscriptions.put") == 0
    assert route_count(api, "users.list") == 2, "one listing to subscribe, one to read"
    eventually(lambda: all(runtime.cache.get(u) is not None for u in agents[:12]), what="cache")
    calls = route_count(api, "notifications.subscriptions.post")
    assert group.ensure_subscribed(agents[11], wait_s=5)
    assert route_count(api, "notifications.subscriptions.post") == calls, "a primed agent is free"


def test_a_first_page_the_start_checks_read_spares_the_listing_it_covers(
    api, runtime, make_group, agents
):
    key = runtime.settings.genesys_client_id
    seed_first_page(runtime.redis, key, FirstPage(agents[:12], more=False))
    group = make_group(prime_agents=12)

    assert group.wait_primed()

    primed = set().union(*(subscribed_users(api, m.channel_id) for m in group.members))
    assert primed == set(agents[:12])
    assert route_count(api, "users.list") == 1, "only the read after subscribing"


def test_the_subscriptions_are_ready_before_the_caches_fill(api, runtime, make_group, agents):
    key = runtime.settings.genesys_client_id
    seed_first_page(runtime.redis, key, FirstPage(agents[:12], more=False))
    api.admin("POST", "/faults/latency", {"endpoint": "users.list", "latency_ms": 1500})
    group = make_group(prime_agents=12)  # its one listing is the slow read after subscribing

    assert group.wait_subscribed()

    assert not group.primed.is_set(), "a write needs the subscriptions, not the fill"
    primed = set().union(*(subscribed_users(api, m.channel_id) for m in group.members))
    assert primed == set(agents[:12])
    assert group.wait_primed()
    assert all(runtime.cache.get(u) is not None for u in agents[:12])


def test_a_listing_after_a_first_page_asks_from_page_two(api, runtime, agents):
    everyone = runtime.client.list_active_users(len(agents) + 10)
    assert [u["id"] for u in everyone] == agents, "one page holds this org"

    assert runtime.client.list_active_users(5, from_page=2) == []


def test_processes_priming_together_list_the_org_once(api, runtime, make_group, agents):
    first, second = make_group(prime_agents=5), make_group(prime_agents=5)
    first.start()
    second.start()

    assert first.wait_primed()
    assert second.wait_primed()

    assert route_count(api, "users.list") == 2, "one listing to subscribe, one to read, for both"
    eventually(lambda: all(runtime.cache.get(u) is not None for u in agents[:5]), what="cache")
    for group in (first, second):
        assert subscribed_users(api, group.members[0].channel_id) == set(agents[:5])


def test_two_orgs_claim_their_own_slots_of_the_same_client_id(runtime):
    key = runtime.settings.genesys_client_id
    default = ChannelSlots(runtime.redis, key=key, max_slots=1)
    acme = ChannelSlots(runtime.redis, key=key, max_slots=1, prefix="presence:org:acme")
    assert default.claim()
    assert not ChannelSlots(runtime.redis, key=key, max_slots=1).claim(), "the default's are spent"

    assert acme.claim()
    assert (default.in_use(), acme.in_use()) == (1, 1)
    acme.release()
    assert (default.in_use(), acme.in_use()) == (1, 0)


def test_an_orgs_channel_group_keeps_its_slots_and_roster_under_the_orgs_prefix(runtime):
    prefix, key = "presence:org:acme", runtime.settings.genesys_client_id
    group = channel_group(
        runtime.settings, runtime.client, runtime.cache, runtime.redis, key, prefix=prefix
    )
    member = group.make_member(group.waiters)

    assert member.slots.key == f"{prefix}:channels:{{{key}}}:slots"
    assert group.roster.key == f"{prefix}:roster:{{{key}}}"
    assert member.slots.claim()
    assert runtime.redis.exists(member.slots.key)
    assert not runtime.redis.exists(f"presence:channels:{{{key}}}:slots")
    member.slots.release()
