"""A synthetic marketplace catalog: procedurally drawn products, studio and review photos, daily churn.

``products`` defines and draws a product, ``photos`` photographs it (seller vs buyer), ``generate``
writes daily catalog snapshots (``vsearch generate-catalog``).
"""
