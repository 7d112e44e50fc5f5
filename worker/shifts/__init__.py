"""Scheduled shift changes: schedule formats, storage helpers and (later) their dispatch."""
