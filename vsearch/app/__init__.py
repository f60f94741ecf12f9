"""The application layer: the CLI, the typed stage registry, backfill, the demo and search by
photo. The top of the system: it may import every layer below, nothing imports it."""
