"""The CLI's last line: a known failure (settings, Redis, database) becomes one actionable line
on stderr and a non-zero exit status, never a traceback and never a secret."""

from __future__ import annotations

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape

from producer.schema import check_org
from worker.problems import explain
from worker.settings import get_settings

SETTINGS_EXIT = 2
SERVICE_EXIT = 1
ORG_HELP = "The Genesys org (as the workers configure it; default: the org of GENESYS_*)."


def org_option(value: str | None, option: str = "--org") -> str | None:
    """``value`` (trimmed) when it is None or an org name; else one line on stderr, exit 2."""
    if value is None:
        return None
    try:
        return check_org(value.strip())
    except ValueError as exc:
        Console(stderr=True, soft_wrap=True).print(f"[red]error:[/] {option}: {escape(str(exc))}")
        raise typer.Exit(SETTINGS_EXIT) from None


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
