"""What the worker adds to Celery and kombu's Redis broker: one transport (``guard``) that
refuses malformed messages before they are read, records every presence message in the broker
ledger until a worker holds it (``ledger``) and survives Redis going away while messages are held
(``redis_restore``); retries kept in the ledger's schedule instead of worker memory, which can
fail to be written without losing the message (``retry``), and published when due (``mover``)."""
