"""The ``presence`` command line: enqueue, import, inspect, requeue, demo."""
