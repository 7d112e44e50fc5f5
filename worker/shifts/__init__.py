"""Scheduled shift changes: schedule formats, storage helpers and their dispatch."""
