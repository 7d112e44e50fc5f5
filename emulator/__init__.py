"""A local Genesys Cloud stand-in: REST, OAuth, notifications and a WFM webhook sink.

The emulator follows the platform's public API reference and the official SDKs' models field
by field and serves the demo, the tests and the benchmarks over real sockets. ``emulator.server.build_app`` assembles it;
``presence-emulator`` (``emulator.cli``) runs it.
"""
