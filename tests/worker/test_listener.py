"""NotificationListener: one channel and socket per process, subscribed before every write,
confirming writes, feeding the shared state cache, and surviving everything the platform (and
the network) does to a socket.

Listeners are built from the runtime's own pieces and talk to the emulator over real sockets.
"""

from __future__ import annotations

import base64
import contextlib
import socket
import threading
import time
from dataclasses import dataclass

import pytest

from tests.worker.conftest import SYSTEM_IDS, eventually, route_count
from worker.genesys.client import GenesysClient
from worker.notifications.listener import NotificationListener, parse_ms
from worker.notifications.slots import ChannelSlots
from worker.state_cache import AgentState, state_of

BREAK, MEAL = SYSTEM_IDS["Break"], SYSTEM_IDS["Meal"]


@pytest.fixture
def make_listener(runtime):
    """Listeners on the runtime's client and cache; each stopped (and its thread joined) after."""
    made: list[NotificationListener] = []

    def make(
        *, client: GenesysClient | None = None, max_slots: int = 4, **kw
    ) -> NotificationListener:
        kw.setdefault("heartbeat_s", 0.5)
        kw.setdefault("prime_agents", 0)
        slots = ChannelSlots(
            runtime.redis, key=runtime.settings.genesys_client_id, max_slots=max_slots
        )
        listener = NotificationListener(
            client or runtime.client, runtime.cache, slots, connect_timeout_s=5, **kw
        )
        made.append(listener)
        return listener

    yield make
    for listener in made:
        listener.stop()
    for listener in made:
        if listener._thread is not None:
            listener._thread.join(5)
            assert not listener._thread.is_alive(), "the socket thread did not stop"


@pytest.fixture
def agents(api) -> list[str]:
    return [str(u["id"]) for u in api.active_users()]


def subscribed_users(api, channel_id: str) -> set[str]:
    """User ids of the channel's presence topics, as the platform lists them."""
    answer = api.http.get(f"/api/v2/notifications/channels/{channel_id}/subscriptions")
    assert answer.status_code == 200, answer.text
    return {
        e["id"].removeprefix("v2.users.").removesuffix(".presence")
        for e in answer.json()["entities"]
    }


def channels(api) -> list[dict]:
    return api.admin("GET", "/channels").json()


def confirm_a_write(runtime, listener: NotificationListener, user_id: str, definition_id: str):
    """PATCH the agent and wait for the confirming event; returns (event, PATCH answer)."""
    waiter = listener.expect(user_id)
    try:
        presence, answer = runtime.client.patch_presence(user_id, definition_id)
        modified_ms = parse_ms(presence.modified_date.isoformat())
        event = waiter.wait_for(definition_id, answer.correlation_id, modified_ms, timeout_s=5)
    finally:
        listener.done(waiter)
    return event, answer


# -- subscribing and confirming ------------------------------------------------------------------
def test_ensure_subscribed_returns_once_the_platform_holds_the_subscription(
    api, make_listener, agents
):
    listener = make_listener()

    assert listener.ensure_subscribed(agents[0], wait_s=5)

    assert subscribed_users(api, listener.channel_id) == {agents[0]}
    assert listener.ensure_subscribed(agents[0], wait_s=5)
    assert route_count(api, "notifications.subscriptions.post") == 1, "subscribed once"


def test_a_write_after_ensure_subscribed_is_confirmed_by_its_event(runtime, make_listener, agents):
    listener = make_listener()
    assert listener.ensure_subscribed(agents[0], wait_s=5)

    event, answer = confirm_a_write(runtime, listener, agents[0], BREAK)

    assert event is not None, "no confirming event"
    assert event.user_id == agents[0]
    assert event.definition_id == BREAK
    assert event.system_presence == "BREAK"
    assert event.correlation_id == answer.correlation_id


def test_the_waiter_matches_without_a_correlation_id_and_ignores_other_definitions(
    runtime, make_listener, agents
):
    listener = make_listener()
    assert listener.ensure_subscribed(agents[0], wait_s=5)
    waiter = listener.expect(agents[0])
    presence, _ = runtime.client.patch_presence(agents[0], MEAL)
    modified_ms = parse_ms(presence.modified_date.isoformat())

    by_time = waiter.wait_for(MEAL, None, modified_ms, timeout_s=5)
    other = waiter.wait_for(BREAK, None, modified_ms, timeout_s=0.3)
    listener.done(waiter)

    assert by_time is not None
    assert by_time.modified_ms >= modified_ms
    assert other is None


def test_events_update_the_shared_state_cache(api, runtime, make_listener, agents):
    listener = make_listener()
    assert listener.ensure_subscribed(agents[0], wait_s=5)

    api.admin("PUT", f"/users/{agents[0]}/presence", {"presence": "Meal"})  # made in the UI

    eventually(lambda: runtime.cache.get(agents[0]) is not None, what="the cached state")
    state = runtime.cache.get(agents[0])
    assert state.definition_id == MEAL
    assert state.system_presence == "MEAL"
    assert state.seen_via == "event"
    assert state.modified_ms > 0


def test_concurrent_subscriptions_are_grouped_into_few_calls(api, make_listener, agents):
    listener = make_listener()
    listener.start()
    assert listener.connected.wait(5)
    wanted = agents[:40]
    results: dict[str, bool] = {}
    start = threading.Barrier(len(wanted))

    def subscribe(user_id: str) -> None:
        start.wait()
        results[user_id] = listener.ensure_subscribed(user_id, wait_s=5)

    threads = [threading.Thread(target=subscribe, args=(u,)) for u in wanted]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)

    assert results == dict.fromkeys(wanted, True)
    assert subscribed_users(api, listener.channel_id) == set(wanted)
    calls = route_count(api, "notifications.subscriptions.post")
    assert calls == listener.subscription_calls
    assert calls <= len(wanted) // 4, f"{calls} subscription calls for {len(wanted)} agents"


def test_an_unknown_agent_cannot_be_subscribed_and_does_not_spoil_the_next(
    api, make_listener, agents
):
    listener = make_listener()

    assert not listener.ensure_subscribed("00000000-0000-4000-8000-0000000000ff", wait_s=5)
    assert listener.ensure_subscribed(agents[0], wait_s=5)
    assert subscribed_users(api, listener.channel_id) == {agents[0]}


def test_beyond_max_topics_the_least_recently_used_agent_is_dropped(api, make_listener, agents):
    listener = make_listener(max_topics=3)
    for user_id in agents[:3]:
        assert listener.ensure_subscribed(user_id, wait_s=5)
    assert listener.ensure_subscribed(agents[0], wait_s=5)  # used again: now the most recent

    assert listener.ensure_subscribed(agents[3], wait_s=5)

    assert subscribed_users(api, listener.channel_id) == {agents[0], agents[2], agents[3]}
    assert route_count(api, "notifications.subscriptions.put") == 1, "one replacing call"


def test_the_channel_is_extended_before_it_expires(api, make_listener, agents):
    listener = make_listener(extend_after_s=0.3)
    assert listener.ensure_subscribed(agents[0], wait_s=5)
    [before] = channels(api)

    eventually(
        lambda: route_count(api, "notifications.subscriptions.put") >= 1, what="an extension"
    )

    [after] = channels(api)
    assert after["id"] == before["id"]
    assert after["expires"] > before["expires"]
    assert subscribed_users(api, listener.channel_id) == {agents[0]}, "topics kept"


# -- what happens to sockets -------------------------------------------------------------------
def test_a_dropped_socket_reconnects_and_events_flow_again(api, runtime, make_listener, agents):
    listener = make_listener()
    assert listener.ensure_subscribed(agents[0], wait_s=5)
    channel_id, before = listener.channel_id, listener.reconnects
    api.admin("PUT", f"/users/{agents[0]}/presence", {"presence": "Meal"})
    eventually(lambda: runtime.cache.get(agents[0]) is not None, what="the cached state")

    assert api.admin("POST", "/sockets/drop", {}).json()["dropped"] == 1

    eventually(
        lambda: listener.reconnects > before and listener.connected.is_set(), what="a reconnect"
    )
    assert listener.channel_id == channel_id, "the channel survived; only the socket was cut"
    assert runtime.cache.get(agents[0]) is None, "state that may have missed events is dropped"
    event, _ = confirm_a_write(runtime, listener, agents[0], BREAK)
    assert event is not None


def test_socket_closing_reconnects_to_the_same_channel(api, runtime, make_listener, agents):
    listener = make_listener()
    assert listener.ensure_subscribed(agents[0], wait_s=5)
    channel_id, before = listener.channel_id, listener.reconnects

    api.admin("POST", "/sockets/closing", {"close_after_s": 0.2})

    eventually(
        lambda: listener.reconnects > before and listener.connected.is_set(), what="a reconnect"
    )
    assert listener.channel_id == channel_id
    assert [c["id"] for c in channels(api)] == [channel_id], "no new channel was made"
    event, _ = confirm_a_write(runtime, listener, agents[0], BREAK)
    assert event is not None


def test_an_expired_channel_is_replaced_with_every_topic_resubscribed_in_one_call(
    api, runtime, make_listener, agents
):
    api.admin("PUT", "/settings", {"channel_ttl_s": 1.0})
    listener = make_listener()
    for user_id in agents[:3]:
        assert listener.ensure_subscribed(user_id, wait_s=5)
    expired = listener.channel_id
    api.admin("PUT", "/settings", {"channel_ttl_s": 3600})  # the next channel lives on

    eventually(
        lambda: listener.channel_id not in (None, expired) and listener.connected.is_set(),
        what="a new channel",
    )

    assert subscribed_users(api, listener.channel_id) == set(agents[:3])
    assert route_count(api, "notifications.subscriptions.put") == 1
    event, _ = confirm_a_write(runtime, listener, agents[2], BREAK)
    assert event is not None


def test_paused_heartbeats_are_covered_by_an_answered_ping(api, runtime, make_listener, agents):
    """A quiet socket is pinged; the pong proves it alive, so no reconnect is needed."""
    listener = make_listener(heartbeat_s=0.5)
    assert listener.ensure_subscribed(agents[0], wait_s=5)
    before = listener.reconnects

    api.admin("POST", "/faults/heartbeats", {"paused": True})
    threading.Event().wait(2.0)  # beyond the 1.5 s (3 heartbeats) silence limit

    assert listener.reconnects == before
    event, _ = confirm_a_write(runtime, listener, agents[0], BREAK)
    assert event is not None


@dataclass(eq=False)
class ProxiedConnection:
    downstream: socket.socket
    upstream: socket.socket
    websocket: bool = False  # the client's first bytes asked for /channels/{id}
    frozen: bool = False
    closed: bool = False

    def pump(self, src: socket.socket, dst: socket.socket) -> None:
        sniff = src is self.downstream
        try:
            while data := src.recv(65536):
                if sniff:
                    self.websocket, sniff = data.startswith(b"GET /channels/"), False
                if not self.frozen:
                    dst.sendall(data)
        except OSError:
            pass
        finally:
            self.closed = True
            for end in (self.downstream, self.upstream):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)


class FreezingProxy:
    """A TCP proxy in front of the emulator that can make the open notification sockets go
    silent (bytes are swallowed both ways, the connection stays open), as a half-open
    connection does. REST calls and new connections pass untouched."""

    def __init__(self, upstream: str) -> None:
        host, port = upstream.removeprefix("http://").split(":")
        self.upstream = (host, int(port))
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        self.connections: list[ProxiedConnection] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def freeze_notification_sockets(self) -> int:
        with self.lock:
            live = [c for c in self.connections if c.websocket and not c.closed]
        for conn in live:
            conn.frozen = True
        return len(live)

    def close(self) -> None:
        self.server.close()
        with self.lock:
            for conn in self.connections:
                conn.downstream.close()
                conn.upstream.close()

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self.server.accept()
            except OSError:
                return
            conn = ProxiedConnection(downstream, socket.create_connection(self.upstream))
            with self.lock:
                self.connections.append(conn)
            for src, dst in ((conn.downstream, conn.upstream), (conn.upstream, conn.downstream)):
                threading.Thread(target=conn.pump, args=(src, dst), daemon=True).start()


def test_a_silent_socket_is_abandoned_and_reconnected(api, runtime, make_listener, agents):
    proxy = FreezingProxy(api.emulator.base_url)
    try:
        through_proxy = GenesysClient(
            runtime.client.http, runtime.tokens, runtime.limiter, api_base=proxy.url, timeout_s=2,
            max_inline_wait_s=2,
        )  # fmt: skip
        listener = make_listener(client=through_proxy, heartbeat_s=0.5)
        assert listener.ensure_subscribed(agents[0], wait_s=5)
        channel_id, before = listener.channel_id, listener.reconnects

        assert proxy.freeze_notification_sockets() == 1

        eventually(
            lambda: listener.reconnects > before and listener.connected.is_set(),
            what="a reconnect after 3 silent heartbeat intervals",
        )
        assert listener.channel_id == channel_id
        event, _ = confirm_a_write(runtime, listener, agents[0], BREAK)
        assert event is not None
    finally:
        proxy.close()


# -- channel slots and priming -----------------------------------------------------------------
def test_a_process_without_a_channel_slot_confirms_by_read_back(api, make_listener, agents):
    first = make_listener(max_slots=1)
    second = make_listener(max_slots=1)
    assert first.ensure_subscribed(agents[0], wait_s=5)

    assert second.ensure_subscribed(agents[1], wait_s=0.5) is False

    assert first.has_slot
    assert not second.has_slot
    assert first.slots.in_use() == 1
    assert len(channels(api)) == 1, "the second process made no channel"


def test_priming_subscribes_many_agents_in_one_call_and_fills_the_cache(
    api, runtime, make_listener
):
    listener = make_listener(prime_agents=50)
    listener.start()

    assert listener.primed.wait(10)

    primed = subscribed_users(api, listener.channel_id)
    assert len(primed) == 50
    assert route_count(api, "notifications.subscriptions.put") == 1
    assert route_count(api, "users.list") == 2, "one listing to subscribe, one to read"
    presences = {u["id"]: u["presence"] for u in api.active_users()}
    labels = {d.id: d.label for d in runtime.catalog.definitions()}
    for user_id in primed:
        state = runtime.cache.get(user_id)
        assert state is not None, f"{user_id} was not cached"
        assert state.seen_via == "read"
        assert labels[state.definition_id] == presences[user_id]
    # A primed agent needs no subscription call before a write.
    assert listener.ensure_subscribed(next(iter(primed)), wait_s=5)
    assert route_count(api, "notifications.subscriptions.post") == 0


def test_agents_count_as_subscribed_only_once_priming_succeeded(api, make_listener, agents):
    api.admin(
        "POST",
        "/faults/errors",
        {"endpoint": "notifications.subscriptions.put", "status": 503, "count": 1},
    )
    listener = make_listener(prime_agents=1000)
    listener.start()
    eventually(
        lambda: route_count(api, "notifications.subscriptions.put", 503) == 1,
        what="the failed priming call",
    )

    assert listener.ensure_subscribed(agents[0], wait_s=5)

    assert not listener.primed.is_set()
    assert agents[0] in subscribed_users(api, listener.channel_id), (
        "ensure_subscribed returned True for an agent the platform does not send events for"
    )


def test_priming_fills_only_the_room_left_by_agents_already_subscribed(api, make_listener, agents):
    """A wave subscribed 5 agents while priming listed users: priming adds 15, not 20, so the
    channel never asks for more than its topic limit."""
    api.admin("POST", "/faults/latency", {"endpoint": "users.list", "latency_ms": 600})
    listener = make_listener(prime_agents=20, max_topics=20)
    wave = agents[-5:]
    assert listener.subscribe_many(wave, wait_s=5) == set(wave)

    assert listener.primed.wait(10)

    subscribed = subscribed_users(api, listener.channel_id)
    assert len(subscribed) == 20
    assert set(wave) <= subscribed
    assert route_count(api, "notifications.subscriptions.put", 400) == 0


def test_subscribe_many_makes_one_call_and_keeps_the_agents_it_was_given(
    api, make_listener, agents
):
    listener = make_listener(max_topics=30)
    first = agents[:20]
    assert listener.subscribe_many(first, wait_s=5) == set(first)
    calls = route_count(api, "notifications.subscriptions.post")
    second = agents[10:35]  # 10 already there, 15 new: 5 of the others must make room

    assert listener.subscribe_many(second, wait_s=5) == set(second[:30])

    subscribed = subscribed_users(api, listener.channel_id)
    assert set(second) <= subscribed
    assert len(subscribed) == 30
    changes = (
        route_count(api, "notifications.subscriptions.post")
        + route_count(api, "notifications.subscriptions.put")
        - calls
    )
    assert changes == 1


# -- channels bound to their token ----------------------------------------------------------------
def refresh_token(api) -> None:
    """The test's own client after its token was revoked or expired with everyone's."""
    api.http.headers["Authorization"] = f"Bearer {api.fetch_token()}"


def fresh_short_token(api, runtime, lifetime_s: int) -> None:
    """From now on tokens live ``lifetime_s``; the runtime drops the one it holds."""
    api.admin("PUT", "/settings", {"token_lifetime_s": lifetime_s})
    runtime.tokens.invalidate(runtime.tokens.get())
    runtime.tokens.get()


def test_a_renewed_token_moves_the_listener_to_a_new_channel_without_missing_an_event(
    api, runtime, make_listener, agents
):
    """Tokens of 6 s renew 0.6 s before they end; the channel bound to the old one would close.
    The listener moves first (new channel, every topic in one PUT, then the old socket is
    drained), so writes all along are confirmed on the socket and it never reconnects."""
    fresh_short_token(api, runtime, 6)
    listener = make_listener()
    for user_id in agents[:3]:
        assert listener.ensure_subscribed(user_id, wait_s=5)
    first = listener.channel_id
    definitions = [BREAK, MEAL]
    confirmed = 0
    deadline = time.monotonic() + 9
    while time.monotonic() < deadline:
        user_id = agents[confirmed % 3]
        assert listener.ensure_subscribed(user_id, wait_s=5)
        event, _ = confirm_a_write(runtime, listener, user_id, definitions[confirmed % 2])
        assert event is not None, f"write {confirmed} was not confirmed on the socket"
        confirmed += 1
        time.sleep(0.1)

    assert listener.channel_switches >= 1
    assert listener.channel_id != first
    assert listener.reconnects == 0, "the socket was never lost"
    assert subscribed_users(api, listener.channel_id) == set(agents[:3])
    assert confirmed >= 20


@pytest.mark.parametrize(
    ("fault", "kind"),
    [
        (("/tokens/revoke", {}), "token_revoked"),
        (("/sockets/system", {"kind": "no_longer_subscribed"}), "no_longer_subscribed"),
        (
            ("/sockets/system", {"kind": "subscription_changed", "close": False}),
            "subscription_changed",
        ),
    ],
    ids=["token-revoked", "no-longer-subscribed", "subscription-changed"],
)
def test_a_system_message_replaces_the_channel_with_every_topic_in_one_call(
    api, runtime, make_listener, agents, fault, kind
):
    listener = make_listener()
    for user_id in agents[:3]:
        assert listener.ensure_subscribed(user_id, wait_s=5)
    old = listener.channel_id
    runtime.cache.put(agents[0], AgentState(BREAK, "BREAK", 1, "event"))
    puts = route_count(api, "notifications.subscriptions.put")

    api.admin("POST", *fault)
    refresh_token(api)

    eventually(
        lambda: listener.channel_id not in (None, old) and listener.connected.is_set(),
        what="a new channel",
    )
    assert listener.system_messages.get(kind) == 1
    assert subscribed_users(api, listener.channel_id) == set(agents[:3])
    assert route_count(api, "notifications.subscriptions.put") - puts == 1
    assert runtime.cache.get(agents[0]) is None, "a state that may have missed events was kept"
    event, _ = confirm_a_write(runtime, listener, agents[2], MEAL)
    assert event is not None


def test_an_expired_token_closes_the_channel_and_the_listener_recovers(
    api, runtime, make_listener, agents
):
    listener = make_listener()
    assert listener.ensure_subscribed(agents[0], wait_s=5)
    old = listener.channel_id

    api.admin("POST", "/tokens/expire", {})
    refresh_token(api)

    eventually(
        lambda: listener.channel_id not in (None, old) and listener.connected.is_set(),
        what="a new channel",
    )
    assert listener.system_messages.get("token_revoked") == 1
    event, _ = confirm_a_write(runtime, listener, agents[0], BREAK)
    assert event is not None


# -- what the socket thread spends ----------------------------------------------------------------
class CountingSlots(ChannelSlots):
    claims = 0

    def claim(self) -> bool:
        self.claims += 1
        return super().claim()


def test_the_slot_lease_is_renewed_at_a_fraction_of_its_life_not_per_message(
    runtime, make_listener, agents
):
    slots = CountingSlots(runtime.redis, key="counting", max_slots=4, lease_s=2.0)
    listener = NotificationListener(runtime.client, runtime.cache, slots, heartbeat_s=0.05)
    try:
        assert listener.ensure_subscribed(agents[0], wait_s=5)
        time.sleep(2.0)  # ~40 heartbeats
    finally:
        listener.stop()
        assert listener._thread is not None
        listener._thread.join(5)

    # One claim to connect, then one per half second (a quarter of the 2 s lease).
    assert 2 <= slots.claims <= 7


def test_a_state_this_process_stored_is_not_written_again_by_its_event(
    api, runtime, make_listener, agents
):
    api.admin("POST", "/faults/events", {"delay_ms": 300})  # the PATCH answer comes first
    listener = make_listener()
    assert listener.ensure_subscribed(agents[0], wait_s=5)
    waiter = listener.expect(agents[0])
    try:
        presence, answer = runtime.client.patch_presence(agents[0], BREAK)
        runtime.cache.put(agents[0], state_of(presence, "patch"))  # as the flow does
        modified_ms = parse_ms(presence.modified_date.isoformat())
        assert waiter.wait_for(BREAK, answer.correlation_id, modified_ms, timeout_s=5)
    finally:
        listener.done(waiter)

    assert runtime.cache.get(agents[0]).seen_via == "patch", "the event rewrote the entry"


# -- a cold start waits for priming ---------------------------------------------------------------
def test_wait_primed_returns_once_priming_is_done(make_listener):
    listener = make_listener(prime_agents=20)

    assert listener.wait_primed()

    assert listener.primed.is_set()


def test_the_subscriptions_are_ready_before_the_caches_fill(api, make_listener):
    listing = {"endpoint": "users.list", "latency_ms": 1500}
    api.admin("POST", "/faults/latency", listing)  # so is the read after subscribing
    listener = make_listener(prime_agents=20)

    assert listener.wait_subscribed()

    assert not listener.primed.is_set(), "a write needs the subscriptions, not the fill"
    assert listener.wait_primed()


def test_wait_primed_is_bounded_once_per_process(make_listener):
    listener = make_listener(prime_agents=20, max_slots=0, prime_wait_s=0.3)  # never connects

    started = time.monotonic()
    assert listener.wait_primed() is False
    assert listener.wait_subscribed() is False
    assert listener.wait_primed() is False
    elapsed = time.monotonic() - started

    assert elapsed < 1.0, "the second call waited again"


def test_without_priming_there_is_nothing_to_wait_for(make_listener):
    assert make_listener(prime_agents=0).wait_primed()


# -- hostile frames ------------------------------------------------------------------------------
HOSTILE_FRAMES = [
    b"\xff\xfe not UTF-8 \xc3\x28",
    b"not json",
    b"[1, 2, 3]",
    b"null",
    b'"a string"',
    b'{"topicName": 7}',
    b'{"topicName": "v2.users.x.presence", "eventBody": [1]}',
    b'{"topicName": "v2.users.x.presence", "eventBody": {"presenceDefinition": "id"}}',
    b'{"topicName": "v2.users.x.presence", "eventBody": {"presenceDefinition": {"id": 5}}}',
    b'{"topicName": "v2.users.x.presence", "metadata": 3, "eventBody": '
    b'{"presenceDefinition": {"id": "d"}, "modifiedDate": 12}}',
    '{"topicName": "v2.users.\u00e9\u00e8.presence"}'.encode(),
]


def test_frames_that_are_not_the_platforms_are_ignored_and_the_socket_stays(
    api, runtime, make_listener, agents
):
    listener = make_listener()
    assert listener.ensure_subscribed(agents[0], wait_s=5)
    before = listener.reconnects
    frames = [base64.b64encode(frame).decode() for frame in HOSTILE_FRAMES]

    sent = api.admin("POST", "/sockets/raw", {"frames_base64": frames})

    assert sent.json()["sent"] == 1
    event, _ = confirm_a_write(runtime, listener, agents[0], BREAK)  # read after every frame
    assert event is not None, "events still flow after the hostile frames"
    assert listener.reconnects == before, "no frame cost the socket"
    assert listener.connected.is_set()
