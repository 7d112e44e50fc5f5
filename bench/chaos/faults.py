"""The faults, each a blocking function that injects, holds and heals one failure, and the
scenarios that schedule them during the send phase (alone, then all together).

Emulator faults that share its one ``DELETE /__emulator/faults`` are healed through
:class:`EmulatorFaults`, which clears and re-applies whatever another fault still holds.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench.chaos.stack import ChaosStack

RESTART_AFTER_S = 3.0  # a supervisor's restart delay after a killed process


@dataclass
class EmulatorFaults:
    """The emulator's active injected faults, so that healing one keeps the others."""

    stack: ChaosStack
    active: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, name: str, path: str, body: dict[str, Any]) -> None:
        with self.lock:
            self.active[name] = (path, body)
            self.stack.admin("POST", path, body)

    def remove(self, name: str) -> None:
        with self.lock:
            self.active.pop(name, None)
            self.stack.admin("DELETE", "/faults")
            for path, body in self.active.values():
                self.stack.admin("POST", path, body)


@dataclass
class Context:
    stack: ChaosStack
    emulator: EmulatorFaults
    rng: random.Random
    storm_429s: int = 0  # 429s answered inside injected storms
    log: Callable[[str], None] = print
    lock: threading.Lock = field(default_factory=threading.Lock)


def worker_child_kill(ctx: Context) -> None:
    """SIGKILL a prefork pool child three times, 5 s apart (the master replaces it)."""
    for _ in range(3):
        children = ctx.stack.processes["prefork"].children()
        if children:
            victim = ctx.rng.choice(children)
            ctx.log(f"SIGKILL prefork child {victim}")
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGKILL)
        time.sleep(5)


def worker_kill(ctx: Context) -> None:
    """SIGKILL the whole threads worker, then the whole prefork worker (children orphaned),
    each started again after a supervisor's pause."""
    for name in ("threads", "prefork"):
        managed = ctx.stack.processes[name]
        children = managed.children()
        ctx.log(f"SIGKILL {name} worker")
        managed.kill(signal.SIGKILL)
        for child in children:  # what a container's end does to the rest of its processes
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
        time.sleep(RESTART_AFTER_S)
        ctx.stack.restart(name)
        time.sleep(5)


def _redis(sig: signal.Signals) -> Callable[[Context], None]:
    def fault(ctx: Context) -> None:
        assert ctx.stack.redis is not None
        ctx.log(f"Redis {sig.name}")
        ctx.stack.redis.kill(sig)
        time.sleep(RESTART_AFTER_S)
        ctx.stack.redis.start()
        ctx.log("Redis back (same port, same AOF file)")

    fault.__doc__ = f"{sig.name} Redis, start it again {RESTART_AFTER_S:g} s later."
    return fault


def postgres_down(ctx: Context) -> None:
    """PostgreSQL stopped (immediate) for 10 s."""
    ctx.log("PostgreSQL down")
    ctx.stack.postgres.stop()
    time.sleep(10)
    ctx.stack.postgres.start()
    ctx.log("PostgreSQL back")


def http_5xx(ctx: Context) -> None:
    """10 % of platform calls answer 503 for 20 s."""
    ctx.emulator.add("5xx", "/faults/errors", {"status": 503, "rate": 0.1})
    time.sleep(20)
    ctx.emulator.remove("5xx")


def storm_429(ctx: Context) -> None:
    """Every call answers 429 (Retry-After 5) for 10 s; those 429s are the storm's."""
    before = ctx.stack.too_many_requests()
    ctx.emulator.add("storm", "/faults/rate-limit-storm", {"seconds": 10, "retry_after_s": 5})
    time.sleep(10.5)
    with ctx.lock:
        ctx.storm_429s += ctx.stack.too_many_requests() - before
    ctx.emulator.remove("storm")


def dropped_sockets(ctx: Context) -> None:
    """Every notification socket dropped, five times, 3 s apart."""
    for _ in range(5):
        ctx.stack.admin("POST", "/sockets/drop", {})
        time.sleep(3)


def lost_events(ctx: Context) -> None:
    """20 % of notification events lost for 20 s."""
    ctx.emulator.add("events", "/faults/events", {"loss_rate": 0.2})
    time.sleep(20)
    ctx.emulator.remove("events")


def revoked_tokens(ctx: Context) -> None:
    """Every token revoked, three times, 5 s apart."""
    for _ in range(3):
        ctx.stack.admin("POST", "/tokens/revoke", {})
        time.sleep(5)


def wfm_down(ctx: Context) -> None:
    """The WFM receiver answers 503 for 30 s."""
    ctx.stack.admin("POST", "/wfm/fail", {"status": 503})
    time.sleep(30)
    ctx.stack.admin("DELETE", "/wfm/fail")


FAULTS: dict[str, Callable[[Context], None]] = {
    "worker-child-kill": worker_child_kill,
    "worker-kill": worker_kill,
    "redis-sigterm": _redis(signal.SIGTERM),
    "redis-sigkill": _redis(signal.SIGKILL),
    "postgres-down": postgres_down,
    "http-5xx": http_5xx,
    "storm-429": storm_429,
    "dropped-sockets": dropped_sockets,
    "lost-events": lost_events,
    "revoked-tokens": revoked_tokens,
    "wfm-down": wfm_down,
}

# Scenario → (fault, start as a fraction of the send phase). The combined one staggers every
# fault over the send phase, so that several overlap.
SCENARIOS: dict[str, list[tuple[str, float]]] = {
    "baseline": [],
    **{name: [(name, 0.3)] for name in FAULTS},
    "combined": [
        ("wfm-down", 0.0),
        ("lost-events", 0.05),
        ("http-5xx", 0.1),
        ("worker-child-kill", 0.15),
        ("redis-sigkill", 0.25),
        ("dropped-sockets", 0.35),
        ("storm-429", 0.45),
        ("postgres-down", 0.55),
        ("revoked-tokens", 0.65),
        ("worker-kill", 0.75),
        ("redis-sigterm", 0.9),
    ],
}
# The CI form: Redis SIGKILL and both kinds of worker kill in one short run.
SHORT: dict[str, list[tuple[str, float]]] = {
    "short": [("worker-child-kill", 0.1), ("redis-sigkill", 0.4), ("worker-kill", 0.6)],
}


def run_faults(ctx: Context, schedule: list[tuple[str, float]], send_s: float) -> list[str]:
    """Start each fault at its offset in its own thread; returns once all have healed, with
    any fault that failed to inject or heal as a line each."""
    errors: list[str] = []
    started = time.monotonic()

    def one(name: str, at: float) -> None:
        time.sleep(max(0.0, started + at * send_s - time.monotonic()))
        try:
            FAULTS[name](ctx)
        except Exception as exc:
            errors.append(f"{name}: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=one, args=item, daemon=True) for item in schedule]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors
