"""Org key prefixes: the default org keeps exactly the Redis keys of a single-org deployment;
any other org's keys sit apart under ``presence:org:<org>``."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from worker import catalog
from worker.genesys.token import TokenProvider
from worker.intents import Intent, WriteIntents
from worker.limiter import SharedRateLimiter
from worker.names import DEFAULT_ORG, org_key_prefix
from worker.notifications.roster import FirstPage, Roster, seed_first_page
from worker.notifications.slots import ChannelSlots
from worker.ordering import AgentOrdering
from worker.preflight import fleet
from worker.preflight.genesys import channel_key
from worker.rules import capacity
from worker.rules.capacity import CapacityGuard, QueuePolicy
from worker.settings import Settings
from worker.state_cache import AgentState, StateCache


def test_the_default_org_has_the_single_org_prefix_and_others_their_own():
    assert org_key_prefix(DEFAULT_ORG) == "presence"
    assert org_key_prefix("acme") == "presence:org:acme"
    assert org_key_prefix("acme-2") != org_key_prefix("acme")


class StubPlatform:
    """One queue q1 whose only joined member is u1, with two agents on queue."""

    def call(self, method: str, path: str, **_: Any) -> SimpleNamespace:
        if path.startswith("/api/v2/users/"):
            return SimpleNamespace(data={"entities": [{"id": "q1"}]})
        if path == "/api/v2/routing/queues":
            return SimpleNamespace(data={"entities": [{"id": "q1", "joinedMemberCount": 1}]})
        if path.endswith("/members"):
            return SimpleNamespace(data={"entities": [{"id": "u1"}]})
        stats = [{"metric": "oOnQueueUsers", "stats": {"count": 2}}]
        return SimpleNamespace(data={"results": [{"group": {"queueId": "q1"}, "data": stats}]})


def settings_for(client_id: str) -> Settings:
    return Settings(
        _env_file=None,
        genesys_api_url="http://127.0.0.1:9",
        genesys_client_id=client_id,
        genesys_client_secret="s",
    )


@pytest.mark.parametrize("kw", [{}, {"prefix": org_key_prefix(DEFAULT_ORG)}], ids=["unset", "org"])
def test_the_default_org_uses_exactly_the_keys_of_a_single_org_deployment(r, kw):
    StateCache(r, ttl_s=60, **kw).put("u1", AgentState("d1", "AVAILABLE", 1, "event"))
    WriteIntents(r, ttl_s=60, **kw).mark({"req-1": Intent("d1", 0, 1)})
    ordering = AgentOrdering(r, marker_ttl_s=60, **kw)
    ordering.register("u1", 1, "req-1")
    ordering.try_lock_many(["u1"], ttl_s=60)
    definition = {"id": "d1", "type": "System", "systemPresence": "Available"}
    catalog.seed(r, [definition], **kw)
    guard = CapacityGuard(
        r,
        StubPlatform(),  # type: ignore[arg-type]
        default=QueuePolicy(),
        overrides={},
        observation_ttl_s=60,
        membership_ttl_s=60,
        reservation_grace_s=5,
        **kw,
    )
    guard.prefetch_memberships(["u2", "u3"])
    assert guard.check_and_reserve("req-1", "u1").allowed
    limiter = SharedRateLimiter(r, key="c", limit_per_minute=10, provisional_s=5, **kw)
    limiter.release(limiter.acquire(max_wait_s=0))
    limiter.cool_down(1)
    assert ChannelSlots(r, key="c", max_slots=1, **kw).claim()
    seed_first_page(r, "c", FirstPage(["u1"], more=True), **kw)
    roster = Roster(r, key="c", grace_s=0, **kw)
    roster.active(2, lambda limit, first: ["u1"])
    with roster.subscribing():
        pass
    roster.fill_once(lambda: None)
    assert not fleet.await_pass(r, settings_for("c"), **kw)  # claims the check
    fleet.record_passed(r, settings_for("d"), 60, **kw)

    assert {key.decode() for key in r.scan_iter("presence:*")} == {
        "presence:state:u1",
        "presence:intent:req-1",
        "presence:agent:u1:newest",
        "presence:agent:u1:lock",
        "presence:definitions",
        "presence:capacity:queues:u1",
        "presence:capacity:queues:u2",
        "presence:capacity:queues:u3",
        "presence:capacity:listing_pages",
        "presence:capacity:obs:q1",
        "presence:capacity:reserved:q1",
        "presence:limiter:{c}:log",
        "presence:limiter:{c}:cooldown",
        "presence:channels:{c}:slots",
        "presence:roster:{c}",
        "presence:roster:{c}:first",
        "presence:roster:{c}:snapshot",
        "presence:preflight:checking:{c}",
        "presence:preflight:passed:{d}",
    }
    # Keys held only while something runs, so gone by now:
    prefix = kw.get("prefix", "presence")
    assert (roster.listing_key, roster.subscribing_key) == (
        "presence:roster:{c}:listing",
        "presence:roster:{c}:subscribing",
    )
    assert capacity._listing(prefix) == "presence:capacity:listing"
    assert capacity._observing(prefix, "q1") == "presence:capacity:observing:q1"
    tokens = TokenProvider(
        r,
        None,
        login_base="http://127.0.0.1:9",
        client_id="c",
        client_secret="s",
        timeout_s=1,
        **kw,
    )  # type: ignore[arg-type]
    assert (tokens.key, tokens.lock_key) == ("presence:token:{c}", "presence:token:{c}:renewing")
    assert channel_key("c", **kw) == "presence:doctor:channel:{c}"


def test_another_org_writes_no_key_of_the_single_org_deployment(r):
    acme = org_key_prefix("acme")
    StateCache(r, ttl_s=60, prefix=acme).put("u1", AgentState("d1", "AVAILABLE", 1, "event"))
    AgentOrdering(r, prefix=acme).register("u1", 1, "req-1")
    catalog.seed(r, [{"id": "d1", "type": "System", "systemPresence": "Available"}], prefix=acme)
    SharedRateLimiter(r, key="c", limit_per_minute=10, provisional_s=5, prefix=acme).acquire(0)

    written = {key.decode() for key in r.scan_iter("presence:*")}

    assert written == {
        "presence:org:acme:state:u1",
        "presence:org:acme:agent:u1:newest",
        "presence:org:acme:definitions",
        "presence:org:acme:limiter:{c}:log",
    }
