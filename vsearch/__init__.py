"""The applications, the top layer: the CLI and its stage registry, backfill, the demo, the
search service (``serve``) and the evaluation app. They may import every layer below; nothing
below imports them."""
