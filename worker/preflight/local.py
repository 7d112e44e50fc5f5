"""The checks that need no Genesys: settings, files, Redis, the database and its revision."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import redis
from pydantic import ValidationError

from worker.preflight.findings import Finding, Verdict, ok
from worker.problems import database_problem, mask_url, redis_problem, settings_problem
from worker.settings import Settings


def load_settings() -> tuple[Settings | None, Finding]:
    """The settings from the environment, and the finding about them."""
    try:
        settings = Settings()
    except ValidationError as exc:
        return None, Finding("settings", Verdict.FAIL, settings_problem(exc), "fix the variable")
    return settings, check_settings(settings)


def check_settings(settings: Settings) -> Finding:
    """Valid settings that name a Genesys org and an OAuth client."""
    try:
        base = settings.api_base
    except ValueError as exc:
        return Finding("settings", Verdict.FAIL, str(exc), "set one of them")
    empty = [
        name
        for name, value in (
            ("GENESYS_CLIENT_ID", settings.genesys_client_id),
            ("GENESYS_CLIENT_SECRET", settings.genesys_client_secret.get_secret_value()),
        )
        if not value
    ]
    if empty:
        return Finding(
            "settings",
            Verdict.FAIL,
            f"{' and '.join(empty)} empty",
            "set the OAuth client-credentials client of the org",
        )
    return ok("settings", f"valid; Genesys at {mask_url(base)}")


def check_files(settings: Settings) -> Finding | None:
    """The transition matrix and capacity override files load (None: neither is set)."""
    from worker.rules.capacity import load_overrides
    from worker.rules.transitions import TransitionMatrix

    if settings.transition_matrix_file is None and settings.capacity_overrides_file is None:
        return None
    try:
        TransitionMatrix.load(settings.transition_matrix_file)
        load_overrides(settings.capacity_overrides_file)
    except ValueError as exc:
        return Finding("files", Verdict.FAIL, str(exc), "fix or unset the file")
    named = [
        str(p) for p in (settings.transition_matrix_file, settings.capacity_overrides_file) if p
    ]
    return ok("files", f"{', '.join(named)} loaded")


def check_redis(settings: Settings, timeout_s: float) -> tuple[redis.Redis | None, Finding]:
    client = redis.Redis.from_url(
        settings.redis_url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s
    )
    try:
        client.ping()
    except redis.RedisError as exc:
        client.close()
        seen, fix = redis_problem(settings.redis_url, exc)
        return None, Finding("Redis", Verdict.FAIL, seen, fix)
    return client, ok("Redis", f"{mask_url(settings.redis_url)} answers")


def check_database(settings: Settings, timeout_s: float) -> Finding:
    """Reachable and at the migrations' head revision; an absent SQLite file is not created."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory
    from sqlalchemy import create_engine, pool
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

    import migrations

    url = settings.database_url
    shown = mask_url(url)
    migrate = "run `presence migrate`"
    try:
        parsed = make_url(url)
        backend = parsed.get_backend_name()
        connect_args: dict[str, Any] = {}
        if backend == "sqlite":
            path = parsed.database or ""
            local = bool(path) and path != ":memory:" and not path.startswith("file:")
            if local and not Path(path).exists():
                where = Path(path).resolve().parent
                fix = migrate if where.is_dir() else f"create {where} or fix DATABASE_URL"
                return Finding(
                    "database", Verdict.FAIL, f"DATABASE_URL ({shown}): no such file", fix
                )
        elif backend.startswith("postgres"):
            connect_args["connect_timeout"] = max(1, int(timeout_s))
        engine = create_engine(url, poolclass=pool.NullPool, connect_args=connect_args)
    except (ArgumentError, NoSuchModuleError, ValueError):
        return Finding(
            "database", Verdict.FAIL, "DATABASE_URL is not a usable SQLAlchemy URL", "fix it"
        )
    head = ScriptDirectory.from_config(migrations.alembic_config(url)).get_current_head()
    quiet = logging.getLogger("alembic")
    level = quiet.level
    quiet.setLevel(logging.WARNING)  # not its INFO lines about plugins and DDL
    try:
        with engine.connect() as connection:
            current = MigrationContext.configure(connection).get_current_revision()
    except SQLAlchemyError as exc:
        seen = database_problem(url, exc)
        return Finding("database", Verdict.FAIL, seen, "fix DATABASE_URL or start the database")
    finally:
        quiet.setLevel(level)
        engine.dispose()
    if current == head:
        return ok("database", f"{shown} is at the latest revision ({head})")
    if current is None:
        return Finding("database", Verdict.FAIL, f"{shown} has no audit tables", migrate)
    return Finding(
        "database", Verdict.FAIL, f"{shown} is at revision {current}, not {head}", migrate
    )
