"""A local Genesys Cloud stand-in: REST, OAuth, notifications and a WFM webhook sink.

The emulator follows ``shared/reference/genesys-api.md`` field by field and serves the demo, the
tests and the benchmarks over real sockets. ``emulator.server.build_app`` assembles it;
``presence-emulator`` (``emulator.cli``) runs it.
"""
