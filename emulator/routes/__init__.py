"""Route modules; each exposes ``register(router)`` and names its routes for fault targeting."""
