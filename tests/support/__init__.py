"""Helpers for tests that run real services and real worker processes."""
