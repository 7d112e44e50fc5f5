"""The platform's per-token request limit: N requests per rolling 60 seconds."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

WINDOW_S = 60.0


@dataclass(slots=True)
class WindowState:
    admitted: deque[float] = field(default_factory=deque)
    peak: int = 0
    rejected: int = 0


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    count: int
    reset_s: int
    retry_after_s: int


class RollingWindowLimiter:
    """Admits a request when fewer than ``limit`` were admitted in the last 60 s.

    ``limit == 0`` admits everything but still counts, so the peak rate stays measurable.
    Only admitted requests count toward the window; rejected ones are tallied separately.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.keys: dict[str, WindowState] = {}

    def hit(self, key: str, now: float) -> Decision:
        state = self.keys.get(key)
        if state is None:
            state = self.keys[key] = WindowState()
        window = state.admitted
        horizon = now - WINDOW_S
        while window and window[0] <= horizon:
            window.popleft()
        reset = math.ceil(window[0] + WINDOW_S - now) if window else int(WINDOW_S)
        if self.limit and len(window) >= self.limit:
            state.rejected += 1
            retry_after = max(1, reset)
            return Decision(False, len(window), reset, retry_after)
        window.append(now)
        if len(window) > state.peak:
            state.peak = len(window)
        return Decision(True, len(window), reset, 0)
