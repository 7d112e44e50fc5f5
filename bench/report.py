"""The table every benchmark prints and the JSON it keeps: measure, value, baseline, ratio."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

RESULTS = Path(__file__).parent / "results"


@dataclass
class Report:
    rows: list[tuple[str, str, str, str]] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)

    def add(self, name: str, value: str, baseline: str, ratio: str) -> None:
        self.rows.append((name, value, baseline, ratio))

    def publish(self, console: Console, title: str, name: str) -> Path:
        """Print the table and write ``data`` to ``bench/results/<name>.json``; returns the path."""
        table = Table(title=title)
        for column in ("measure", "presence worker", "baseline (same run)", "ratio"):
            table.add_column(column)
        for row in self.rows:
            table.add_row(*row)
        console.print(table)
        RESULTS.mkdir(exist_ok=True)
        path = RESULTS / f"{name}.json"
        path.write_text(json.dumps(self.data, indent=2, default=str))
        console.print(f"results written to {path}")
        return path
