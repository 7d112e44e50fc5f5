"""Private Redis and PostgreSQL servers, each on a free loopback port, that tests and the chaos
suite stop, kill and restart on the same port and data. Never the shared servers."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from sqlalchemy import create_engine, text

from worker.embedded_redis import _free_port, _server_binary, reachable


class DurableRedis:
    """``redis-server`` persisting as docker-compose.yml runs it (AOF ``everysec``,
    ``noeviction``), in ``workdir/redis`` (a temporary directory when none is given, removed
    by :meth:`close`)."""

    def __init__(self, workdir: Path | None = None, *, timeout_s: float = 15) -> None:
        self.timeout_s = timeout_s
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._temporary = workdir is None
        self.dir = (
            Path(tempfile.mkdtemp(prefix="presence-aof-redis-"))
            if workdir is None
            else workdir / "redis"
        )
        self.dir.mkdir(parents=True, exist_ok=True)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start (again, on the same port and AOF file); returns once it answers. Raises
        RuntimeError when it does not start (its log: ``redis.log`` in its directory)."""
        cmd = [
            _server_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "yes", "--appendfsync", "everysec", "--dir", str(self.dir),
            "--maxmemory-policy", "noeviction", "--logfile", str(self.dir / "redis.log"),
        ]  # fmt: skip
        self.process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            if reachable(self.url, 0.2):
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"the private Redis did not start; see {self.dir / 'redis.log'}")

    def kill(self, sig: signal.Signals = signal.SIGKILL) -> None:
        """Send ``sig`` and wait until the server has exited."""
        assert self.process is not None
        self.process.send_signal(sig)
        self.process.wait(timeout=self.timeout_s)

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._temporary:
            shutil.rmtree(self.dir, ignore_errors=True)


class PostgresMissing(RuntimeError):
    """No PostgreSQL server binaries on this machine."""


class PrivatePostgres:
    """A PostgreSQL cluster of its own (``initdb`` in a temporary directory); ``url`` is its
    ``postgres`` database, :meth:`database` makes fresh ones. ``options``: extra server options
    (``-c name=value …``). Raises PostgresMissing without the server binaries."""

    def __init__(self, *, options: str = "", prefix: str = "presence-pg-") -> None:
        bins = sorted(Path("/usr/lib/postgresql").glob("*/bin"))
        if not bins:
            raise PostgresMissing("PostgreSQL server binaries (/usr/lib/postgresql/*/bin)")
        self.bin = bins[-1]
        self.port = _free_port()
        self.options = options
        self.workdir = Path(tempfile.mkdtemp(prefix=prefix))  # the postgres user must reach it
        self.data = self.workdir / "data"
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"
        self._as_owner = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self._as_owner:
            shutil.chown(self.workdir, "postgres")
        self._run("initdb", "-D", str(self.data), "--auth=trust", "-U", "postgres", "-E", "UTF8")

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run(
            [*self._as_owner, str(self.bin / tool), *args],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def start(self) -> None:
        options = f"-p {self.port} -k {self.workdir} -c listen_addresses=127.0.0.1 {self.options}"
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-w", "-t", "60", "start")

    def stop(self) -> None:
        """Stop at once (``-m immediate``): as in a crash, open connections see it fail."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def database(self, name: str) -> str:
        """A fresh, empty database (dropped first if it exists); returns its URL."""
        engine = create_engine(self.url, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
                conn.execute(text(f'CREATE DATABASE "{name}"'))
        finally:
            engine.dispose()
        return self.url.rsplit("/", 1)[0] + f"/{name}"

    def close(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)
