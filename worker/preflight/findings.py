"""What a check found: a verdict, what was seen, the fix."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Verdict(enum.StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"
    SKIP = "skip"


@dataclass(frozen=True, slots=True)
class Finding:
    """One check's result: what was seen and, unless ok, what to do about it. ``fatal``: a
    worker must not start with this failure."""

    check: str
    verdict: Verdict
    detail: str
    fix: str = ""
    fatal: bool = True

    @property
    def failed(self) -> bool:
        return self.verdict is Verdict.FAIL

    @property
    def line(self) -> str:
        """The finding as one log line."""
        text = f"{self.check}: {self.detail}"
        return f"{text}; {self.fix}" if self.fix else text


def ok(check: str, detail: str) -> Finding:
    return Finding(check, Verdict.OK, detail)


def skip(check: str, detail: str) -> Finding:
    return Finding(check, Verdict.SKIP, detail)
