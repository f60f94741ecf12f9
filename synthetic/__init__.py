"""A synthetic marketplace catalog: procedurally drawn products, studio and review photos, daily churn.

``spec`` says what a product is, ``silhouettes`` outlines it and ``products`` draws it; ``photos``
photographs it (seller vs buyer). Three styles write daily catalog snapshots (``tables``: the
schemas and the writer; ``truth``: what the photos really show): ``generate`` (studio, with
``render``), ``bazaar`` and ``phone`` (with ``phone_photos``); ``command`` is
``vsearch generate-catalog``.
"""
