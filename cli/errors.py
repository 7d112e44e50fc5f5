"""The CLI's last line: a known failure (settings, Redis, database) becomes one actionable line
on stderr and a non-zero exit status, never a traceback and never a secret."""

from __future__ import annotations

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape

from worker.problems import explain
from worker.settings import get_settings

SETTINGS_EXIT = 2
SERVICE_EXIT = 1


def _urls() -> tuple[str | None, str | None]:
    try:
        settings = get_settings()
    except ValidationError:
        return None, None
    return settings.redis_url, settings.database_url


def run(app: typer.Typer) -> None:
    """Run ``app``; exits 2 on a settings error, 1 on an unreachable or unmigrated service,
    each with one line. Anything else (a bug) still shows its traceback."""
    try:
        app()
    except Exception as exc:
        redis_url, database_url = _urls()
        line = explain(exc, redis_url=redis_url, database_url=database_url)
        if line is None:
            raise
        Console(stderr=True, soft_wrap=True).print(f"[red]error:[/] {escape(line)}")
        code = SETTINGS_EXIT if isinstance(exc, ValidationError) else SERVICE_EXIT
        raise SystemExit(code) from None
