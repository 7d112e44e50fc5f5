"""What the worker adds to Celery and kombu's Redis broker to keep every message it holds."""
