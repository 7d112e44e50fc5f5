"""One actionable line for the failures an operator meets first.

:func:`explain` turns a settings error, an unreachable Redis or database, or a database that was
never migrated into one line naming the setting to fix. Contract: the line never contains a
secret, not even part of one (URLs are shown with their password masked, settings errors name
the variable, never its value).
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from pydantic import ValidationError

MASK = "***"


class Problem(Exception):
    """A failure already explained in one line (names the setting or file; never a secret)."""


def mask_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (user names and hosts kept)."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "(unparsable URL)"
    if not password:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:{MASK}@{host}"))


def settings_problem(exc: ValidationError) -> str:
    """Which variables are wrong and why; never their values."""
    parts = []
    for error in exc.errors(include_input=False, include_url=False, include_context=False):
        message = str(error["msg"]).removeprefix("Value error, ")
        loc = error["loc"]
        parts.append(f"{str(loc[0]).upper()}: {message}" if loc else message)
    return "invalid settings: " + "; ".join(parts)


def first_line(text: str) -> str:
    """The first non-empty line of ``text``, stripped (driver messages span several)."""
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return text.strip()


def redis_problem(url: str, exc: BaseException) -> tuple[str, str]:
    """What went wrong with the Redis at ``url``, and the fix."""
    reason = first_line(str(exc)).rstrip(".") or type(exc).__name__
    if "auth" in reason.lower() or "password" in reason.lower():
        seen = f"Redis at REDIS_URL ({mask_url(url)}) refused the credentials: {reason}"
        return seen, "fix the password in REDIS_URL"
    return (
        f"cannot reach Redis at REDIS_URL ({mask_url(url)}): {reason}",
        "start it or fix REDIS_URL",
    )


def database_problem(url: str, exc: BaseException) -> str:
    """A database failure: missing tables (run ``presence migrate``) or cannot connect."""
    orig = getattr(exc, "orig", None)
    reason = first_line(str(orig if orig is not None else exc)) or type(exc).__name__
    shown = mask_url(url)
    if "no such table" in reason or type(orig).__name__ == "UndefinedTable":
        return (
            f"the database at DATABASE_URL ({shown}) has no audit tables ({reason}); "
            "run `presence migrate`"
        )
    hint = ""
    if "unable to open database file" in reason:
        hint = "; its directory must exist and be writable"
    return f"cannot open the database at DATABASE_URL ({shown}): {reason}{hint}"


def explain(exc: BaseException, *, redis_url: str | None, database_url: str | None) -> str | None:
    """One line for a known failure, or None for anything else (a bug: let it show)."""
    from kombu.exceptions import OperationalError as KombuOperationalError
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError
    from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError

    from worker.genesys.errors import GenesysError

    if isinstance(exc, Problem):
        return str(exc)
    if isinstance(exc, ValidationError) and exc.title == "Settings":
        return settings_problem(exc)
    if isinstance(exc, RedisConnectionError | RedisTimeoutError | KombuOperationalError):
        return "; ".join(redis_problem(redis_url or "", exc))
    if isinstance(exc, DBAPIError):
        return database_problem(database_url or "", exc)
    if isinstance(exc, ArgumentError | NoSuchModuleError):
        # Their messages quote the URL, password included: never shown.
        return "DATABASE_URL is not a usable SQLAlchemy URL (e.g. sqlite:///presence.sqlite3)"
    if isinstance(exc, GenesysError):
        return exc.message
    return None
