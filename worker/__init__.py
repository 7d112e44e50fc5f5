"""The worker runtime: settings, the Genesys client, the shared limiter, notification sockets,
the state cache and the update flow that Celery tasks delegate to."""
