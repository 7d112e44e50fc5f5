"""Rules a change must pass before it spends budget: transitions (and, later, capacity)."""
