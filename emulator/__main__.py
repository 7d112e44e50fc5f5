"""``python -m emulator`` runs the same console script as ``presence-emulator``."""

from emulator.cli import main

main()
