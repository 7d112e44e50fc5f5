"""A thin, typed Genesys Cloud client: timeouts on every call, no hidden retries, typed errors."""
