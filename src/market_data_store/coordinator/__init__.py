"""Public API of the coordinator (filled in as modules land)."""
