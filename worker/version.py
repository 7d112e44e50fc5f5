"""The installed package's version, read from its metadata (``importlib.metadata``).

One source for ``presence --version``, the worker's start-up log line and Sentry's ``release``;
``pyproject.toml`` is where the version is set.
"""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version

PACKAGE = "presence-worker"
UNKNOWN = "unknown"
# The libraries whose exact versions decide how the worker behaves at the broker (a Redis restart
# is survived or not depending on kombu's), named in the start-up line.
COMPONENTS = ("celery", "kombu", "redis")


def package_version(package: str = PACKAGE) -> str:
    """``package``'s installed version; ``"unknown"`` when it is not installed (sources on
    PYTHONPATH only)."""
    try:
        return version(package)
    except PackageNotFoundError:
        return UNKNOWN


def startup_line() -> str:
    """``presence-worker 0.1.0 starting (celery 5.7.0, kombu 5.7.0, redis 8.1.0, python 3.11.7)``."""
    parts = [f"{name} {package_version(name)}" for name in COMPONENTS]
    parts.append(f"python {platform.python_version()}")
    return f"{PACKAGE} {package_version()} starting ({', '.join(parts)})"
