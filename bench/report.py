"""The table every benchmark prints and the JSON it keeps: measure, value, baseline, ratio."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Report:
    rows: list[tuple[str, str, str, str]] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)

    def add(self, name: str, value: str, baseline: str, ratio: str) -> None:
        self.rows.append((name, value, baseline, ratio))
