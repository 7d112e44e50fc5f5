"""Channel lifecycle benchmark: confirmations across token renewals and channels closed under
the workers.

Run: ``python -m bench.channels`` (about 5 minutes; ``--seconds 30`` for a shorter run). Three
phases, each with 2 worker processes and steady updates (``--rate`` per second) on an emulator
whose channels are bound to their token:

(1) ``--token-lifetime 20`` for ``--seconds``: tokens renew every 18 s and the channels they
    made close at 20 s; every update should end ``confirmed`` on the socket.
(2) the same length with every token revoked every 20 s (``token_revoked``, then the close);
(3) the same with ``no_longer_subscribed`` sent to every channel every 20 s.

The baseline is the number of updates sent: the ratio is the share confirmed on the socket (1.00
is every one). In (2) and (3) an update whose PATCH was in flight at the very moment of the close
may end ``applied_unconfirmed`` (read back instead); they are counted separately. Results go to
``bench/results/channels.json``.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
from rich.console import Console
from sqlalchemy import select

from bench.report import Report
from models import AuditRecord
from models.db import session_scope
from producer import PresenceProducer, PresenceUpdate
from sandbox.stack import LocalStack

console = Console()
STATES = ("Available", "Busy")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


def admin(stack: LocalStack, path: str, body: object) -> Any:
    assert stack.emulator is not None
    response = httpx.post(f"{stack.emulator.base_url}/__emulator{path}", json=body, timeout=30)
    response.raise_for_status()
    return response.json()


def outcomes(stack: LocalStack, source: str, expected: int, timeout_s: float) -> Counter[str]:
    """Outcomes of the rows from ``source`` once ``expected`` exist (or ``timeout_s`` passed)."""
    deadline = time.monotonic() + timeout_s
    query = select(AuditRecord.outcome).where(AuditRecord.source == source)
    while True:
        with session_scope(stack.database_url) as session:
            rows = [str(o) for (o,) in session.execute(query)]
        if len(rows) >= expected or time.monotonic() > deadline:
            return Counter(rows)
        time.sleep(0.2)


def warm_up(stack: LocalStack, producer: PresenceProducer, agents: list[str]) -> None:
    """One update per agent, all recorded: both workers hold a primed channel before the clock
    starts (a cold start is not what this measures)."""
    for user_id in agents:
        producer.send(
            PresenceUpdate(
                user_id=user_id, state="Away", requested_at=datetime.now(UTC), source="warmup"
            )
        )
    outcomes(stack, "warmup", len(agents), 60)


def phase(
    name: str,
    seconds: float,
    rate: float,
    *,
    token_lifetime_s: int,
    fault: Callable[[LocalStack], None] | None = None,
    fault_every_s: float = 20.0,
) -> dict[str, Any]:
    args = [
        "--users", "200", "--queues", "4", "--rate-limit", "0", "--heartbeat", "5",
        "--token-lifetime", str(token_lifetime_s),
    ]  # fmt: skip
    # The workers' own budget far above the load, as the emulator's limit is off: a budget wait
    # would re-schedule tasks and measure the limiter, not the channel.
    env = {"RATE_LIMIT_PER_MINUTE": "100000"}
    with LocalStack(emulator_args=args, redis_url=REDIS_URL, redis_db=11, worker_env=env) as stack:
        agents = stack.active_users()[:20]
        stack.start_workers(2, concurrency=8)
        producer = PresenceProducer(stack.broker_url)
        warm_up(stack, producer, agents)
        stop = threading.Event()
        faults = 0

        def inject() -> None:
            nonlocal faults
            while not stop.wait(fault_every_s):
                assert fault is not None
                fault(stack)
                faults += 1

        injector = threading.Thread(target=inject, daemon=True) if fault else None
        if injector is not None:
            injector.start()
        sent = 0
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            user_id = agents[sent % len(agents)]
            state = STATES[(sent // len(agents)) % 2]
            producer.send(
                PresenceUpdate(
                    user_id=user_id, state=state, requested_at=datetime.now(UTC), source="bench"
                )
            )
            sent += 1
            time.sleep(max(0.0, started + sent / rate - time.monotonic()))
        stop.set()
        producer.close()
        counts = outcomes(stack, "bench", sent, 60)
        stats: dict[str, Any] = dict(stack.emulator_stats())
        creates = stats["requests"].get("notifications.channels.create", {})
    result = {
        "phase": name,
        "seconds": seconds,
        "sent": sent,
        "outcomes": dict(counts),
        "faults": faults,
        "channels_created": sum(int(n) for n in dict(creates).values()),
    }
    console.print(result)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=90, help="length of each phase")
    parser.add_argument("--rate", type=float, default=5, help="updates per second")
    args = parser.parse_args()
    report = Report()
    runs = [
        phase("token lifetime 20 s", args.seconds, args.rate, token_lifetime_s=20),
        phase(
            "tokens revoked every 20 s",
            args.seconds,
            args.rate,
            token_lifetime_s=86_400,
            fault=lambda s: admin(s, "/tokens/revoke", {}),
        ),
        phase(
            "no_longer_subscribed every 20 s",
            args.seconds,
            args.rate,
            token_lifetime_s=86_400,
            fault=lambda s: admin(s, "/sockets/system", {"kind": "no_longer_subscribed"}),
        ),
    ]
    for run in runs:
        confirmed = run["outcomes"].get("confirmed", 0)
        report.add(
            f"{run['phase']}: confirmed on the socket",
            f"{confirmed}",
            f"{run['sent']} sent",
            f"{confirmed / run['sent']:.3f}",
        )
    report.data["phases"] = runs
    report.publish(console, "notification channel lifecycle", "channels")


if __name__ == "__main__":
    main()
