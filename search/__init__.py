"""Search by photo at query time: localise the item, embed each view, score listings by their
best view, and the no-match calibration. Composes a model (models/) with an index (index/)."""
