"""What the worker adds to Celery and kombu's Redis broker: one transport (``guard``) that
refuses malformed messages before they are read and survives Redis going away while messages are
held (``redis_restore``), and retries whose publish can fail without losing the message
(``retry``)."""
