"""``presence flower``: Flower (live tasks, retries, workers) against REDIS_URL.

Flower reads its basic-auth credentials from ``FLOWER_BASIC_AUTH`` itself, so the password never
appears on a command line (``ps`` shows only the address and port). The broker URL comes from
``worker.app`` (REDIS_URL), for the same reason. Flower keeps what it sees in memory only: the
state of record for retries and dead letters is the audit table.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping

from worker.addresses import is_loopback

AUTH_ENV = "FLOWER_BASIC_AUTH"
DEFAULT_ADDRESS = "127.0.0.1"
DEFAULT_PORT = 5555


class FlowerConfigError(ValueError):
    """The options or the environment do not make a safe Flower invocation."""


def check_basic_auth(value: str) -> list[str]:
    """The user names of ``user:password[,user:password…]``; raises FlowerConfigError otherwise
    (the message never contains the password)."""
    users = []
    for number, entry in enumerate(value.split(","), start=1):
        user, sep, password = entry.partition(":")
        if not sep or not user.strip() or not password:
            raise FlowerConfigError(
                f"{AUTH_ENV} entry {number} is not user:password "
                "(several users: user1:password1,user2:password2)"
            )
        users.append(user.strip())
    return users


def flower_invocation(
    *,
    address: str,
    port: int,
    no_auth: bool,
    allow_control: bool,
    environ: Mapping[str, str],
) -> tuple[list[str], dict[str, str], str]:
    """The command line, environment and a one-line description of the Flower to start.

    Raises FlowerConfigError when basic auth is missing (and ``no_auth`` was not given), is
    malformed, or when ``no_auth`` would expose Flower beyond loopback.
    """
    env = dict(environ)
    if no_auth:
        if not is_loopback(address):
            raise FlowerConfigError(
                f"--no-auth is allowed on a loopback address only, not {address!r}; "
                f"set {AUTH_ENV}=user:password instead"
            )
        env.pop(AUTH_ENV, None)
        access = "no authentication"
    else:
        credentials = env.get(AUTH_ENV, "").strip()
        if not credentials:
            raise FlowerConfigError(
                f"set {AUTH_ENV}=user:password (or pass --no-auth to run without authentication "
                "on loopback)"
            )
        users = check_basic_auth(credentials)
        env[AUTH_ENV] = credentials
        access = f"basic auth for {', '.join(users)}"
    cmd = [
        sys.executable, "-m", "celery", "-A", "worker.app", "flower",
        f"--address={address}", f"--port={port}",
        f"--read_only={'False' if allow_control else 'True'}",
    ]  # fmt: skip
    mode = "control enabled" if allow_control else "read-only"
    return cmd, env, f"Flower at http://{address}:{port} ({access}, {mode})"
