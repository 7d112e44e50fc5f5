"""Cost benchmark: worker CPU-seconds and Redis commands per 1,000 updates, against a raw loop.

Run: ``python -m bench.cpu`` (about 2 minutes; ``--pool prefork`` measures a prefork worker,
``--updates N`` changes the batch). Results go to ``bench/results/cpu.json``.

One emulator (limit off), one worker process (``--pool threads``, 8 threads by default) and its own
Redis database. Every phase is measured on a warm worker (channel open, agents primed):

- baseline: a raw sequential PATCH loop on one keep-alive connection to the same emulator —
  the client's own CPU for the same number of updates (no Redis at all);
- singles: ``--updates`` ``presence.update`` messages over 600 agents;
- waves: the same number of agents' changes as ``presence.wave`` messages of 1,000 agents.

CPU is the worker's user + system time (its pool children included) read from ``/proc``;
Redis commands are the server's ``INFO commandstats`` calls over the phase, every client
included (Celery's broker traffic and task events count: they are the worker's cost too).
"""

from __future__ import annotations

import argparse
import os
import random
import time
from pathlib import Path
from typing import Any

import httpx
import redis
from rich.console import Console

from bench.pipeline import raw_patch_loop, updates_for, wait_rows
from bench.report import Report
from producer import PresenceProducer
from sandbox.stack import LocalStack

console = Console()
BUDGET = "10000"
"""Far above what the phases spend in a minute, so the limiter never refuses; at most
``worker.limiter.COOL_DOWN_FILL_MAX``, so grants take the path of every real org's budget (a 429's
cool-down fills the window; no read of the cool-down key per grant)."""
STATES = ("On Queue", "Available", "Busy", "Meeting")


def tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its live descendants (Linux ``/proc``)."""
    total = 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        total += sum(tree_cpu_s(int(child)) for child in children)
    return total


def redis_calls_by_command(client: redis.Redis) -> dict[str, int]:
    """Commands the Redis server has executed so far (every client), by command name."""
    stats: dict[str, Any] = client.info("commandstats")
    return {
        k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items() if k != "cmdstat_info"
    }


def redis_calls(client: redis.Redis) -> int:
    """Commands the Redis server has executed so far (every client)."""
    return sum(redis_calls_by_command(client).values())


def measure(
    stack: LocalStack, client: redis.Redis, pid: int, rows_before: int, send: Any, count: int
) -> dict[str, Any]:
    """CPU-seconds and Redis commands of the worker while it handles ``count`` updates."""
    time.sleep(1.0)  # let the previous phase's tail settle
    cpu0, by0, t0 = tree_cpu_s(pid), redis_calls_by_command(client), time.monotonic()
    send()
    wait_rows(stack, rows_before + count, 600)
    cpu, wall = tree_cpu_s(pid) - cpu0, time.monotonic() - t0
    by = {k: n - by0.get(k, 0) for k, n in redis_calls_by_command(client).items()}
    return {
        "cpu_s": cpu,
        "cpu_s_per_1000": cpu * 1000 / count,
        "redis_commands_per_update": sum(by.values()) / count,
        "redis_commands_per_update_by_command": {
            k: round(n / count, 2) for k, n in sorted(by.items(), key=lambda kv: -kv[1]) if n
        },
        "wall_s": wall,
    }


def run(updates: int, pool: str, concurrency: int, redis_url: str) -> dict[str, Any]:
    args = ["--users", "1200", "--queues", "4", "--rate-limit", "0", "--heartbeat", "5"]
    env = {"RATE_LIMIT_PER_MINUTE": BUDGET}
    with LocalStack(emulator_args=args, redis_url=redis_url, redis_db=11, worker_env=env) as stack:
        assert stack.emulator is not None
        agents = stack.active_users()
        singles_agents, wave_agents = agents[:600], agents[:1000]
        raw_cpu0 = time.process_time()
        raw_rate, _ = raw_patch_loop(
            stack.emulator.base_url, stack.client_id, stack.client_secret, agents, updates
        )
        raw_cpu = time.process_time() - raw_cpu0
        stack.start_workers(1, pool=pool, concurrency=concurrency)
        pid = stack.workers[0].pid
        client = redis.Redis.from_url(stack.broker_url)
        producer = PresenceProducer(stack.broker_url)
        rng = random.Random(3)
        # Warm-up: the channel opens, agents are primed, definitions and memberships cached.
        producer.send_many(updates_for(singles_agents, 100, rng, states=STATES))
        wait_rows(stack, 100, 300)
        done = 100
        batch = updates_for(singles_agents, updates, rng, states=STATES)
        singles = measure(stack, client, pid, done, lambda: producer.send_many(batch), updates)
        done += updates
        waves_n = max(1000, updates // 1000 * 1000)
        wave_batch = [
            u
            for start in range(0, waves_n, 1000)
            for u in updates_for(wave_agents, 1000, rng, states=STATES)
        ][:waves_n]
        waves = measure(stack, client, pid, done, lambda: producer.send_wave(wave_batch), waves_n)
        producer.close()
        client.close()
        stats = httpx.get(f"{stack.emulator.base_url}/__emulator/stats").json()
    return {
        "updates": updates,
        "pool": pool,
        "concurrency": concurrency,
        "raw": {"cpu_s": raw_cpu, "cpu_s_per_1000": raw_cpu * 1000 / updates, "per_s": raw_rate},
        "singles": singles,
        "waves": {**waves, "updates": waves_n},
        "emulator_requests": stats.get("requests"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--updates", type=int, default=1000, help="single updates measured")
    parser.add_argument("--pool", default="threads", choices=("threads", "prefork"))
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"),
        help="a Redis the benchmark has to itself (its commands are counted server-wide)",
    )
    args = parser.parse_args()
    result = run(args.updates, args.pool, args.concurrency, args.redis_url)
    raw = result["raw"]["cpu_s_per_1000"]
    report = Report(data=result)
    for name in ("singles", "waves"):
        phase = result[name]
        report.add(
            f"{name}: worker CPU-s per 1,000 updates ({args.pool})",
            f"{phase['cpu_s_per_1000']:.2f}",
            f"{raw:.2f} raw PATCH loop",
            f"{phase['cpu_s_per_1000'] / raw:.1f}" if raw else "-",
        )
        report.add(
            f"{name}: Redis commands per update",
            f"{phase['redis_commands_per_update']:.1f}",
            "0 raw PATCH loop",
            "-",
        )
    report.publish(console, "cost benchmark", f"cpu-{args.pool}")


if __name__ == "__main__":
    main()
