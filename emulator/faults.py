"""Injected faults: latency, error responses, 429 storms and event delivery problems.

Random choices use the emulator's seeded generator, so a fault run is reproducible.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

ANY_ROUTE = "*"


@dataclass(slots=True)
class LatencyFault:
    route: str
    latency_ms: float
    jitter_ms: float = 0.0


@dataclass(slots=True)
class ErrorFault:
    route: str
    status: int
    rate: float = 1.0
    remaining: int | None = None  # None: until cleared
    retry_after_s: int | None = None
    code: str | None = None
    message: str | None = None
    after: int = 0  # matching requests let through before the fault starts


@dataclass(slots=True)
class EventFault:
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss_rate: float = 0.0
    lose_next: int = 0


@dataclass(slots=True)
class Faults:
    rng: random.Random
    latency: list[LatencyFault] = field(default_factory=list)
    errors: list[ErrorFault] = field(default_factory=list)
    storm_until: float = 0.0
    storm_retry_after_s: int = 0
    events: EventFault = field(default_factory=EventFault)
    heartbeats_paused: bool = False

    def clear(self) -> None:
        self.latency.clear()
        self.errors.clear()
        self.storm_until = 0.0
        self.storm_retry_after_s = 0
        self.events = EventFault()
        self.heartbeats_paused = False

    def delay_for(self, route: str) -> float:
        """Seconds to wait before answering a request to ``route``."""
        total = 0.0
        for fault in self.latency:
            if fault.route in (ANY_ROUTE, route):
                total += max(0.0, fault.latency_ms + self.rng.uniform(-1, 1) * fault.jitter_ms)
        return total / 1000.0

    def error_for(self, route: str) -> ErrorFault | None:
        """The injected error to answer ``route`` with this time, if any; consumes a count."""
        for fault in self.errors:
            if fault.route not in (ANY_ROUTE, route):
                continue
            if fault.remaining is not None and fault.remaining <= 0:
                continue
            if fault.after > 0:
                fault.after -= 1
                continue
            if fault.rate < 1.0 and self.rng.random() >= fault.rate:
                continue
            if fault.remaining is not None:
                fault.remaining -= 1
            return fault
        return None

    def event_fate(self) -> float | None:
        """Delay in seconds for the next event, or None when it is lost."""
        ev = self.events
        if ev.lose_next > 0:
            ev.lose_next -= 1
            return None
        if ev.loss_rate and self.rng.random() < ev.loss_rate:
            return None
        if ev.delay_ms or ev.jitter_ms:
            return max(0.0, ev.delay_ms + self.rng.uniform(-1, 1) * ev.jitter_ms) / 1000.0
        return 0.0

    def json(self) -> dict[str, Any]:
        return {
            "latency": [vars_of(f) for f in self.latency],
            "errors": [vars_of(f) for f in self.errors],
            "stormUntil": self.storm_until,
            "events": vars_of(self.events),
            "heartbeatsPaused": self.heartbeats_paused,
        }


def vars_of(obj: object) -> dict[str, Any]:
    """Fields of a slotted dataclass as a dict."""
    return {name: getattr(obj, name) for name in obj.__slots__}  # type: ignore[attr-defined]
