"""Confirmations continue while the notification channel comes and goes: tokens renewing under
it, a revoked token, ``no_longer_subscribed``. Real worker processes, real emulator.

The long run the platform asks for (``--token-lifetime 20`` for 90 s) is ``bench/channels.py``;
here the lifetimes are shortened so the suite stays fast.
"""

from __future__ import annotations

import time

import pytest

from tests.support.pipeline import Pipeline

STATES = ("Available", "Busy")


def steady_updates(
    pipeline: Pipeline, agents: list[str], seconds: float, every_s: float
) -> list[str]:
    """One update every ``every_s`` for ``seconds``, each agent flipping between two states."""
    sent: list[str] = []
    deadline = time.monotonic() + seconds
    turn = 0
    while time.monotonic() < deadline:
        user_id = agents[turn % len(agents)]
        state = STATES[(turn // len(agents)) % 2]
        sent.append(pipeline.send(pipeline.update(user_id, state)))
        turn += 1
        time.sleep(every_s)
    return sent


def outcomes(pipeline: Pipeline, request_ids: list[str]) -> dict[str, list[str]]:
    rows = pipeline.wait_rows(len(request_ids), request_ids=request_ids)
    by_outcome: dict[str, list[str]] = {}
    for row in rows:
        by_outcome.setdefault(str(row.outcome), []).append(row.request_id)
    return by_outcome


def test_updates_across_several_token_lifetimes_are_all_confirmed_on_the_socket(
    pipeline: Pipeline,
) -> None:
    pipeline.admin("PUT", "/settings", {"token_lifetime_s": 6})
    pipeline.start(1)
    channels_before = pipeline.route_count("notifications.channels.create")
    agents = [a["id"] for a in pipeline.agents(6, online=True)]
    for user_id in agents:
        pipeline.set_presence(user_id, "Away")

    sent = steady_updates(pipeline, agents, seconds=15, every_s=0.3)

    found = outcomes(pipeline, sent)
    assert set(found) == {"confirmed"}, {k: len(v) for k, v in found.items()}
    assert pipeline.route_count("notifications.channels.create") - channels_before >= 2, (
        "the worker moved to a new channel as its tokens renewed"
    )


@pytest.mark.parametrize(
    "fault",
    [("/tokens/revoke", {}), ("/sockets/system", {"kind": "no_longer_subscribed"})],
    ids=["token-revoked", "no-longer-subscribed"],
)
def test_after_the_channel_is_closed_under_it_the_next_updates_are_confirmed(
    pipeline: Pipeline, fault: tuple[str, dict[str, str]]
) -> None:
    pipeline.start(1)
    agents = [a["id"] for a in pipeline.agents(6, online=True)]
    for user_id in agents:
        pipeline.set_presence(user_id, "Away")
    before = steady_updates(pipeline, agents, seconds=1.5, every_s=0.3)
    pipeline.wait_rows(len(before), request_ids=before)

    assert pipeline.admin("POST", *fault).status_code == 200
    time.sleep(1.5)  # the worker notices within a second and makes a new channel
    after = steady_updates(pipeline, agents[::-1], seconds=3, every_s=0.3)

    found = outcomes(pipeline, after)
    assert set(found) == {"confirmed"}, {k: len(v) for k, v in found.items()}
    assert len(pipeline.connected_channels()) == 1
