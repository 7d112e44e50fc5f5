"""An injected clock for tests of code that takes ``clock=`` and ``sleep=``: time moves only
when the code under test sleeps (or the test says so)."""

from __future__ import annotations


class ManualClock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
