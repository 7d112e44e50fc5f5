"""Repository tooling, not part of the installed package: the lock files (``tools.lock``)."""
