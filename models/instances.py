"""Which listings get a class in the instance head: a bounded set, so training scales to 100M.

The instance head (softmax over listing ids, cosine logits) is what pulls a buyer's phone photo onto
its listing's studio photos. One class per listing does not scale: at 100M listings the head alone
would be 100M x 256 weights, and most classes would be seen once a year. So a training run gives a
class to at most ``max_classes`` listings, chosen per run:

1. every listing with a buyer review photo first (a review photo and its listing's photos are the
   only pairs that teach phone -> studio directly), then
2. a seeded, stable sample of the rest (stable hash of ``seed:listing_id``, so the choice does not
   depend on file order or worker count).

Photos of listings without a class keep their category/attribute labels (those heads keep the
whole taxonomy) and get instance label -1, which the masked loss ignores.
"""

from __future__ import annotations

from collections.abc import Iterable

from core.hashing import stable_hash


def instance_classes(
    listing_ids: Iterable[str], reviewed: Iterable[str], max_classes: int, seed: int = 0
) -> list[str]:
    """At most ``max_classes`` listing ids (sorted): reviewed listings first, then a stable sample."""
    if max_classes < 1:
        raise ValueError(f"max_instance_classes must be >= 1, got {max_classes}")
    ids = sorted(set(listing_ids))
    with_reviews = set(reviewed) & set(ids)

    def order(listing_id: str) -> tuple[bool, int]:
        return (listing_id not in with_reviews, stable_hash(f"{seed}:{listing_id}"))

    return sorted(sorted(ids, key=order)[:max_classes])
