"""The lock files and the Docker base image's digest: refresh them, or check they are in sync.

``python -m tools.lock`` (``make lock``) resolves ``pyproject.toml`` against PyPI with ``uv pip
compile`` into two hash-pinned files, newest versions within the ranges:

* ``requirements/dev.txt``: the ``dev`` extra (which brings ``embedded`` and ``postgres``),
  what ``make install``, the demo, the tests and CI install;
* ``requirements/runtime.txt``: the package and its ``postgres`` extra, constrained to the dev
  lock's versions (so production runs exactly what the tests ran), what the Dockerfile installs.

It then asks the registry for the current digest of the Dockerfile's base image tag with the
first of ``docker buildx imagetools``, ``crane`` or ``skopeo`` that answers, and keeps the pinned
digest (saying so) when none does. ``--keep`` (``make lock-sync``) keeps every current pin that still
satisfies ``pyproject.toml`` (after editing it, to change only what the edit requires) and leaves
the digest alone. ``--check`` (``make lock-check``, CI) changes nothing: exit status 1 when a lock
would change, 0 when both are in sync; it needs PyPI, not Docker Hub.

The locks are universal (environment markers for every platform and Python >= 3.11) and come from
PyPI only: uv reads no pip configuration, and ``--no-config`` ignores any uv configuration file.
"""

from __future__ import annotations

import argparse
import difflib
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = ROOT / "pyproject.toml"
DEV_LOCK = ROOT / "requirements" / "dev.txt"
RUNTIME_LOCK = ROOT / "requirements" / "runtime.txt"
DOCKERFILE = ROOT / "Dockerfile"
INDEX_URL = "https://pypi.org/simple"
PYTHON_VERSION = "3.11"  # the oldest supported (requires-python); the image's Python
REFRESH_COMMAND = "make lock"
REGISTRY_TIMEOUT_S = 60

# ``FROM image:tag@sha256:<64 hex>`` — the tag stays beside the digest it was resolved from.
_FROM = re.compile(r"^FROM\s+(?P<image>[^\s@]+:[^\s@]+)@(?P<digest>sha256:[0-9a-f]{64})", re.M)


@dataclass(frozen=True)
class Lock:
    """One lock file: the ``pyproject.toml`` extras it resolves, and what it is constrained by."""

    path: Path
    extras: tuple[str, ...]
    constraint: Path | None = None


LOCKS = (
    Lock(DEV_LOCK, ("dev",)),
    Lock(RUNTIME_LOCK, ("postgres",), constraint=DEV_LOCK),
)


def compile_command(lock: Lock, output: Path, *, upgrade: bool) -> list[str]:
    """The ``uv pip compile`` command (run in the repository root) that writes ``lock`` to
    ``output``. An existing ``output`` is read first: its pins are kept unless ``upgrade``."""
    cmd = [
        sys.executable, "-m", "uv", "pip", "compile", "--quiet", "--no-config",
        "--index-url", INDEX_URL, "--universal", "--python-version", PYTHON_VERSION,
        "--generate-hashes", "--custom-compile-command", REFRESH_COMMAND,
        PYPROJECT.name, "--output-file", str(output),
    ]  # fmt: skip
    for extra in lock.extras:
        cmd += ["--extra", extra]
    if lock.constraint is not None:  # relative, so that the lock's notes name no temporary path
        cmd += ["--constraint", str(lock.constraint.relative_to(ROOT))]
    if upgrade:
        cmd.append("--upgrade")
    return cmd


def compile_lock(lock: Lock, output: Path, *, upgrade: bool) -> None:
    """Compile ``lock`` into ``output``; CalledProcessError when uv fails (PyPI unreachable,
    ranges unsolvable), leaving ``output`` as it was."""
    subprocess.run(compile_command(lock, output, upgrade=upgrade), check=True, cwd=ROOT)


def pins(text: str) -> list[str]:
    """A lock's lines without its hashes: the pins, markers and ``# via`` notes.

    A check compares these, so a wheel that a project later adds to a release it already
    published does not count as drift.
    """
    kept = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("--hash="):
            continue
        kept.append(line.removesuffix("\\").rstrip())
    return kept


def lock_drift(committed: Path, compiled: Path) -> list[str]:
    """A unified diff of ``committed`` → ``compiled`` pins; empty when in sync."""
    before = pins(committed.read_text()) if committed.exists() else []
    after = pins(compiled.read_text())
    rel = committed.relative_to(ROOT)
    return list(
        difflib.unified_diff(
            before, after, f"{rel} (committed)", f"{rel} (from pyproject.toml)", lineterm=""
        )
    )


# -- the base image ---------------------------------------------------------------------------


def base_image(dockerfile: str) -> tuple[str, str]:
    """``(image:tag, sha256:…)`` of the Dockerfile's first ``FROM``; ValueError when it is not
    pinned by digest."""
    first = re.search(r"^FROM\s.*$", dockerfile, re.M)
    found = _FROM.match(first[0]) if first is not None else None
    if found is None:
        raise ValueError("the Dockerfile's FROM is not pinned as image:tag@sha256:<digest>")
    return found["image"], found["digest"]


def pin_base_image(dockerfile: str, digest: str) -> str:
    """``dockerfile`` with its first ``FROM`` pinned to ``digest`` (same tag)."""
    if re.fullmatch(r"sha256:[0-9a-f]{64}", digest) is None:
        raise ValueError(f"not an image digest: {digest!r}")
    image, _ = base_image(dockerfile)
    return _FROM.sub(f"FROM {image}@{digest}", dockerfile, count=1)


def _run(cmd: Sequence[str]) -> bytes | None:
    if shutil.which(cmd[0]) is None:
        return None
    try:
        done = subprocess.run(cmd, capture_output=True, timeout=REGISTRY_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def _via_buildx(image: str) -> str | None:
    out = _run(
        ["docker", "buildx", "imagetools", "inspect", image, "--format", "{{json .Manifest}}"]
    )
    if out is None:
        return None
    try:
        digest = json.loads(out)["digest"]
    except (ValueError, KeyError, TypeError):
        return None
    return digest if isinstance(digest, str) else None


def _via_crane(image: str) -> str | None:
    out = _run(["crane", "digest", image])
    return out.decode().strip() if out is not None else None


def _via_skopeo(image: str) -> str | None:
    # The raw manifest (the multi-platform index for an official image) is what the digest names.
    out = _run(["skopeo", "inspect", "--raw", f"docker://{image}"])
    return f"sha256:{hashlib.sha256(out).hexdigest()}" if out else None


RESOLVERS: tuple[tuple[str, Callable[[str], str | None]], ...] = (
    ("docker buildx imagetools", _via_buildx),
    ("crane", _via_crane),
    ("skopeo", _via_skopeo),
)


def refresh_base_image(path: Path = DOCKERFILE) -> str:
    """Pin ``path``'s base image to its tag's current digest; a one-line account of what happened."""
    text = path.read_text()
    image, current = base_image(text)
    for name, resolve in RESOLVERS:
        digest = resolve(image)
        if digest is None or re.fullmatch(r"sha256:[0-9a-f]{64}", digest) is None:
            continue
        if digest == current:
            return f"base image {image} is current ({name}): {current}"
        path.write_text(pin_base_image(text, digest))
        return f"base image {image} re-pinned ({name}): {current} -> {digest}"
    return (
        f"base image {image} kept at {current}: none of docker buildx, crane or skopeo could "
        "resolve its digest here"
    )


def check() -> int:
    """0 when both locks are in sync with ``pyproject.toml`` and the base image is pinned by
    digest; else 1, printing the drift."""
    drift: list[str] = []
    with tempfile.TemporaryDirectory(prefix="presence-lock-") as tmp:
        for lock in LOCKS:
            output = Path(tmp) / lock.path.name
            if lock.path.exists():
                shutil.copyfile(lock.path, output)
            compile_lock(lock, output, upgrade=False)
            drift += lock_drift(lock.path, output)
    try:
        image, digest = base_image(DOCKERFILE.read_text())
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 1
    if drift:
        print("\n".join(drift))
        print(
            f"the lock files are out of sync with pyproject.toml: run `make lock-sync` (keeps the other pins) or `{REFRESH_COMMAND}`"
        )
        return 1
    print(f"lock files in sync with pyproject.toml; base image {image}@{digest}")
    return 0


# -- entry point --------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.lock", description=__doc__.splitlines()[0]
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="change nothing; exit 1 on drift")
    mode.add_argument("--keep", action="store_true", help="keep pins that still satisfy the ranges")
    args = parser.parse_args(argv)
    try:
        if args.check:
            return check()
        for lock in LOCKS:  # the dev lock first: the runtime lock is constrained to it
            compile_lock(lock, lock.path, upgrade=not args.keep)
            print(f"wrote {lock.path.relative_to(ROOT)}")
    except subprocess.CalledProcessError:
        print("uv could not resolve pyproject.toml against PyPI (see above)", file=sys.stderr)
        return 2
    if not args.keep:
        print(refresh_base_image())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
