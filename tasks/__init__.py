"""Celery tasks: each a few lines that delegate to plain functions in ``worker``."""
