"""The load: several conflicting updates per agent (distinct ``requested_at``, some sent out of
order) and one shift wave, sent through the producer library in batches over the send phase."""

from __future__ import annotations

import functools
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from bench.chaos.accounting import Sent
from producer import PresenceProducer, PresenceUpdate

STATES = ("On Queue", "Available", "Busy", "Meeting", "Break", "Training")
WAVE_STATE = "On Queue"  # a shift starting: no capacity guard


@dataclass(frozen=True, slots=True)
class Plan:
    """``batches`` of single updates sent at even intervals, the wave after half of them."""

    batches: list[list[PresenceUpdate]]
    wave: list[PresenceUpdate]


def plan(
    agents: list[str], *, updates: int, per_agent: int, wave_agents: int, batches: int, seed: int
) -> Plan:
    """``updates`` updates over ``updates // per_agent`` of ``agents``; the wave takes the next
    ``wave_agents`` agents plus a fifth as many of the updated ones (whose older updates, some
    sent after the wave, must end superseded)."""
    rng = random.Random(seed)
    updated = agents[: updates // per_agent]
    t0 = datetime.now(UTC) - timedelta(minutes=1)
    singles = []
    for k in range(per_agent):
        for i, agent in enumerate(updated):
            at = t0 + timedelta(milliseconds=k * 200 + i % 100)
            singles.append((k + rng.uniform(-1.5, 1.5), agent, at))
    singles.sort()  # mostly oldest first; a jitter of ±1.5 rounds sends some out of order
    flat = [
        PresenceUpdate(user_id=agent, state=rng.choice(STATES), requested_at=at, source="chaos")
        for _, agent, at in singles
    ]
    size = -(-len(flat) // batches)
    chunks = [flat[i : i + size] for i in range(0, len(flat), size)]
    wave_to = agents[len(updated) : len(updated) + wave_agents] + updated[: wave_agents // 5]
    wave_at = t0 + timedelta(seconds=30)  # newer than every single update
    wave = [
        PresenceUpdate(user_id=a, state=WAVE_STATE, requested_at=wave_at, source="chaos-shift")
        for a in wave_to
    ]
    return Plan(chunks, wave)


def send(broker_url: str, load: Plan, send_s: float) -> list[Sent]:
    """Send the plan over ``send_s`` seconds; returns every request sent. An update that cannot
    be enqueued (Redis down) is sent again with the same request id until it is, as a producer
    retries; a wave (one message) likewise."""
    producer = PresenceProducer(broker_url)
    sent: list[Sent] = []
    started = time.monotonic()
    try:
        for index, batch in enumerate(load.batches):
            time.sleep(max(0.0, started + index * send_s / len(load.batches) - time.monotonic()))
            for update in batch:
                request_id = str(uuid.uuid4())
                _retrying(functools.partial(_send_one, producer, update, request_id))
                sent.append(Sent(request_id, update.user_id, update.requested_at))
            if index == len(load.batches) // 2 and load.wave:
                ids = _retrying(lambda: producer.send_wave(load.wave))
                sent += [
                    Sent(i, u.user_id, u.requested_at) for i, u in zip(ids, load.wave, strict=True)
                ]
    finally:
        producer.close()
    return sent


def _send_one(producer: PresenceProducer, update: PresenceUpdate, request_id: str) -> list[str]:
    return [producer.send(update, request_id=request_id)]


def _retrying(send_once: Callable[[], list[str]]) -> list[str]:
    deadline = time.monotonic() + 120
    while True:
        try:
            return send_once()
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)
