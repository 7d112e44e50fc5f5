"""Broker-ledger benchmark: what recording each push costs a producer, and what a mover pass
costs Redis when a backlog waits.

Run: ``python -m bench.ledger`` (under a minute; a private Redis server, nothing else). Two
producers send the same updates in turns of ``--batch`` messages: ``plain`` (Celery on kombu's
Redis transport, the baseline) and ``ledgered`` (``PresenceProducer``: each push and its ledger
entry in one round trip). Then ``--backlog`` ledgered messages wait in the queue, all older than
the check age, and mover passes look them up (each finds its message still listed and leaves it):
the time per pass of ``MOVE_LIMIT`` entries is how long one Lua call holds Redis. Reported: sends
per second of each producer and their ratio, Redis memory per queued message with and without
its entry, and the pass times; results go to ``bench/results/ledger.json``.
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis
from celery import Celery

from producer import PresenceProducer, PresenceUpdate
from producer.schema import QUEUE, TASK_NAME
from worker.broker import ledger
from worker.embedded_redis import start_private_redis

RESULTS = Path(__file__).parent / "results"


def _update(n: int) -> PresenceUpdate:
    return PresenceUpdate(
        user_id=str(uuid.UUID(int=n + 1)),
        state="Available",
        source="bench",
        requested_at=datetime.now(UTC),
    )


def _memory(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def run(batch: int, rounds: int, backlog: int) -> dict[str, Any]:
    server = start_private_redis()
    client = redis.Redis.from_url(server.url)
    plain = Celery("bench-plain", broker=server.url, set_as_current=False)
    plain.conf.update(task_serializer="json", accept_content=["json"], task_ignore_result=True)
    ledgered = PresenceProducer(server.url)
    updates = [_update(n) for n in range(batch)]
    seconds = {"plain": 0.0, "ledgered": 0.0}
    try:
        for _ in range(rounds):
            for name in ("plain", "ledgered"):
                client.flushdb()
                started = time.perf_counter()
                if name == "plain":
                    for update in updates:
                        plain.send_task(TASK_NAME, args=[update.to_message()], queue=QUEUE)
                else:
                    for update in updates:
                        ledgered.send(update)
                seconds[name] += time.perf_counter() - started

        client.flushdb()
        empty = _memory(client)
        for update in updates:
            plain.send_task(TASK_NAME, args=[update.to_message()], queue=QUEUE)
        plain_bytes = (_memory(client) - empty) / batch
        client.flushdb()
        empty = _memory(client)
        for update in updates:
            ledgered.send(update)
        ledgered_bytes = (_memory(client) - empty) / batch

        client.flushdb()
        for n in range(backlog):
            ledgered.send(_update(n))
        later = time.time() + ledger.CHECK_AFTER_S + 1
        passes: list[float] = []
        while True:
            started = time.perf_counter()
            moved = ledger.move_due(client, lambda _e: None, now=later)
            if moved.waiting == 0:
                break
            passes.append(time.perf_counter() - started)
        assert client.llen(QUEUE) == backlog  # nothing was pushed twice
    finally:
        plain.close()
        ledgered.close()
        client.close()
        server.stop()
    sent = batch * rounds
    return {
        "sends": sent,
        "plain_per_s": sent / seconds["plain"],
        "ledgered_per_s": sent / seconds["ledgered"],
        "ratio": seconds["plain"] / seconds["ledgered"],
        "bytes_per_message_plain": plain_bytes,
        "bytes_per_message_ledgered": ledgered_bytes,
        "backlog": backlog,
        "passes": len(passes),
        "pass_ms_median": sorted(passes)[len(passes) // 2] * 1000,
        "pass_ms_max": max(passes) * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--backlog", type=int, default=20000)
    options = parser.parse_args()
    result = run(options.batch, options.rounds, options.backlog)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ledger.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
