"""The one retry policy: presence updates, waves and WFM deliveries all ask it.

The flows raise :class:`RetryLater` saying *why* they cannot finish now; the policy decides *when*
to try again or that it is time to give up. The Celery tasks only map the decision onto
``Task.retry`` or the dead-letter write.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from worker.settings import Settings

# 2**32 times any first delay is far beyond any cap; larger exponents only risk OverflowError.
MAX_EXPONENT = 32
WAIT_JITTER_S = 0.5


class Delay(StrEnum):
    """Why a request cannot finish now."""

    FAILURE = "failure"  # 5xx, 429, timeouts, internal errors: counts toward the retry limit
    WAIT = "wait"  # budget or another worker's lock: bounded by the request's age
    DEFER = "defer"  # waiting for queue capacity: bounded by the request's own deadline


class RetryLater(Exception):
    """Try the request again later.

    ``countdown_s`` is the wait asked for: for a ``WAIT`` or ``DEFER`` the delay itself, for a
    ``FAILURE`` the platform's ``Retry-After`` (a floor under the backoff), or 0.
    """

    def __init__(
        self, delay: Delay, message: str, *, countdown_s: float = 0.0, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.delay = delay
        self.message = message
        self.countdown_s = countdown_s
        self.code = code


@dataclass(frozen=True, slots=True)
class Retry:
    """Try again after ``countdown_s``; ``failures`` real failures so far."""

    countdown_s: float
    failures: int


@dataclass(frozen=True, slots=True)
class GiveUp:
    """Stop trying: record the request ``dead_letter`` with this code and message."""

    code: str
    message: str


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with jitter, never sooner than ``Retry-After``; at most
    ``max_failures`` retries after real failures; waits bounded by ``max_age_s``."""

    first_s: float
    max_s: float
    max_failures: int
    max_age_s: float | None = None
    uniform: Callable[[float, float], float] = random.uniform

    @classmethod
    def for_updates(cls, settings: Settings) -> RetryPolicy:
        return cls(
            first_s=settings.retry_backoff_s,
            max_s=settings.retry_backoff_max_s,
            max_failures=settings.max_retries,
            max_age_s=settings.max_request_age_s,
        )

    @classmethod
    def for_wfm(cls, settings: Settings) -> RetryPolicy:
        return cls(
            first_s=settings.wfm_retry_backoff_s,
            max_s=settings.wfm_retry_backoff_max_s,
            max_failures=settings.wfm_max_retries,
        )

    def backoff_s(self, failures: int, retry_after_s: float | None = None) -> float:
        """The delay after ``failures`` earlier failures (0 → about ``first_s``), jittered over
        its upper half, never below ``retry_after_s``."""
        exponent = min(max(0, failures), MAX_EXPONENT)
        base = min(self.max_s, self.first_s * (2**exponent))
        return max(self.uniform(base / 2, base), retry_after_s or 0.0)

    def clamp_failures(self, value: object) -> int:
        """A failure count carried by a message, made safe: producers can write it too, so
        anything but an integer is 0, and it is kept within 0 and ``max_failures``."""
        if isinstance(value, bool) or not isinstance(value, int):
            return 0
        return min(max(0, value), self.max_failures)

    def exhausted(self, failures: int) -> bool:
        """Whether ``failures`` real failures are more than the policy retries."""
        return failures > self.max_failures

    def decide(self, later: RetryLater, *, failures: int, age_s: float | None) -> Retry | GiveUp:
        """What to do with ``later``, given ``failures`` earlier real failures and the request's
        age (None when it has none, e.g. a wave)."""
        attempts = failures + 1
        if later.delay is Delay.FAILURE:
            if self.exhausted(failures + 1):
                return GiveUp(
                    later.code or "retries.exhausted",
                    f"Gave up after {attempts} attempts: {later.message}",
                )
            return Retry(self.backoff_s(failures, later.countdown_s), failures + 1)
        if (
            later.delay is Delay.WAIT
            and self.max_age_s is not None
            and age_s is not None
            and age_s > self.max_age_s
        ):
            return GiveUp(
                "too.old",
                f"Gave up after {attempts} attempts: still waiting after {age_s:.0f} s: "
                f"{later.message}",
            )
        jitter = self.uniform(0, WAIT_JITTER_S) if later.delay is Delay.WAIT else 0.0
        return Retry(later.countdown_s + jitter, failures)


@dataclass(frozen=True, slots=True)
class PendingDeadLetter:
    """A :class:`GiveUp` decided but not written yet (the audit database was down); ``tries``
    failed writes so far. Carried by the retried message so the next delivery writes it at once
    instead of running the request again."""

    give_up: GiveUp
    tries: int

    @classmethod
    def parse(cls, value: object) -> PendingDeadLetter | None:
        """The pending dead-letter a message carries, or None when it carries none (or anything
        but ``{"code": str, "message": str, "tries": int}``, which producers could write too)."""
        if not isinstance(value, dict) or set(value) != {"code", "message", "tries"}:
            return None
        code, message, tries = value["code"], value["message"], value["tries"]
        if not (isinstance(code, str) and isinstance(message, str)):
            return None
        if isinstance(tries, bool) or not isinstance(tries, int):
            return None
        return cls(GiveUp(code, message), min(max(0, tries), MAX_EXPONENT))

    def next_try(self) -> PendingDeadLetter:
        return PendingDeadLetter(self.give_up, min(self.tries + 1, MAX_EXPONENT))

    def to_message(self) -> dict[str, object]:
        return {"code": self.give_up.code, "message": self.give_up.message, "tries": self.tries}
