"""A complete local stack — emulator, Redis, audit database, worker processes — for the demo
and the benchmarks."""
