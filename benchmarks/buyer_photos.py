"""Buyer photo -> its listing, side by side: whole frame, localiser, oracle crop, colour histogram.

What a shopper sees: every review photo of a held-out listing is searched against the WHOLE
catalog (every listing photo of the day, training listings included, exact search, a listing
scored by its best photo). For the same photos, in one run:

  whole frame      the photo letterboxed to the model's size (what search did before issue 29)
  localiser        the whole frame, and the localiser's boxes when it is sure and the item small,
                   each listing scored by its best view (``search.views``: what `vsearch query`
                   / `serve` do with a model that ships one; box recall = the best of its boxes
                   at IoU >= 0.5)
  oracle crop      the photo cut to the item's TRUE box (the generator's truth), with the query
                   path's context margin: the ceiling of any localiser with this embedding
  colour histogram an 8x8x8 RGB histogram of the whole frame (a training-free baseline)

hit@1 / hit@10, overall and by how much of the frame the item fills (``item_side``: the true
box's longer side over the photo's); the localiser's recall of the true box at IoU >= 0.5. The
same figures for buyer photos of TRAINING listings show whether the model fits what it saw.

    python -m benchmarks.buyer_photos --catalog CAT --workdir WORK [--model VERSION]
        [--date 2026-01-01] [--style phone] [--write]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from core import catalog as catalog_contract
from core import images, storage
from core.snapshot import read_snapshot
from synthetic import truth

QUERY_SIZE = 256  # the frame crops are cut from: a small item keeps its pixels
SIZE_BINS = ((0.0, 0.3, "item < 30%"), (0.3, 0.45, "30-45%"), (0.45, 9.0, ">= 45%"))


@dataclass(frozen=True)
class Query:
    uri: str
    listing_id: str
    held_out: bool
    item_side: float  # nan when the catalog recorded no box
    box: images.Box | None  # the true box, photo fractions


def _hits(scores: np.ndarray, gallery_ids: np.ndarray, query_ids: np.ndarray) -> np.ndarray:
    """Rank (0 = first) of each query's own listing; listings scored by their best photo.

    ``scores`` [Q, V, G]: V views per query (the best view counts)."""
    order = np.argsort(gallery_ids, kind="stable")
    listings, starts = np.unique(gallery_ids[order], return_index=True)
    best = scores.max(axis=1)[:, order]  # [Q, G]: best view per photo
    per_listing = np.maximum.reduceat(best, starts, axis=1)
    own = np.searchsorted(listings, query_ids)
    own_score = per_listing[np.arange(len(query_ids)), own]
    return (per_listing > own_score[:, None]).sum(axis=1)


def _rows(name: str, ranks: np.ndarray, queries: list[Query]) -> dict[str, float]:
    out = {"hit@1": float(np.mean(ranks < 1)), "hit@10": float(np.mean(ranks < 10))}
    sides = np.array([q.item_side for q in queries])
    for lo, hi, label in SIZE_BINS:
        sel = (sides >= lo) & (sides < hi)
        out[f"hit@10 {label}"] = float(np.mean(ranks[sel] < 10)) if sel.any() else float("nan")
    return out


def run(
    catalog: str, workdir: str, version: str | None, date: str, eval_fraction: float = 0.2
) -> dict[str, object]:
    """Every method's figures, for held-out and for training listings' buyer photos."""
    import tensorflow as tf

    from models import artifact
    from models.baselines import colour_histogram
    from models.export import QUERY_MARGIN
    from models.localiser import crop_boxes

    config = artifact.resolve(workdir, version)
    embedder = artifact.Embedder.open(workdir, config.version)
    size = config.image_size
    snap = read_snapshot(catalog, date)
    boxes = truth.read_review_boxes(catalog)
    root = storage.normalize(catalog).rstrip("/") + "/"
    gallery_ids, gallery_px = [], []
    unusable = 0  # a catalog may hold broken photos (the demo's does): as embed, leave them out
    for ref in snap.images():
        if ref.kind == "listing":
            try:
                gallery_px.append(images.decode_image(storage.read_bytes(ref.uri), size))
            except (images.ImageError, storage.StorageError):
                unusable += 1
                continue
            gallery_ids.append(ref.listing_id)
    gallery = embedder.embed_decoded(gallery_px)
    gallery_hist = colour_histogram(np.stack(gallery_px))
    queries: list[Query] = []
    photo_bytes: dict[str, bytes] = {}  # read once: every method searches the same photos
    for r in snap.reviews:
        try:
            photo_bytes[r.image_uri] = storage.read_bytes(r.image_uri)
            images.decode_image(photo_bytes[r.image_uri], 8)
        except (images.ImageError, storage.StorageError):
            photo_bytes.pop(r.image_uri, None)
            unusable += 1
            continue
        b = boxes.get(r.image_uri.removeprefix(root))
        queries.append(
            Query(
                r.image_uri,
                r.listing_id,
                catalog_contract.is_eval_listing(r.listing_id, eval_fraction),
                b.item_side if b else float("nan"),
                b.box if b else None,
            )
        )
    # Per query photo: its views' vectors [V, D], their boxes [V, 4] (None: no localiser) and
    # what each view adds to a cosine [V] (None: nothing).
    Views = tuple[np.ndarray, np.ndarray | None, np.ndarray | None]
    methods: dict[str, Callable[[bytes, Query], Views]] = {}

    def whole(data: bytes, q: Query) -> Views:
        return embedder.embed_decoded([embedder.decode(data)]), None, None

    def oracle(data: bytes, q: Query) -> Views:
        frame, content = images.decode_frame(data, QUERY_SIZE)
        box = images.photo_to_frame(q.box, content)  # type: ignore[arg-type]
        crop = crop_boxes(
            tf.constant(frame[None]), tf.constant([[box]], tf.float32), size, QUERY_MARGIN
        )
        return embedder.embed_decoded([crop.numpy()[0]]), None, None

    methods["whole frame"] = whole
    if embedder.has_query_signature():
        from search.views import view_offsets

        def localised(data: bytes, q: Query) -> Views:
            # As search does: the photo, and the localiser's boxes when it is sure enough.
            views = embedder.embed_query([data])
            offsets = view_offsets(views.box_scores, views.frame_boxes)[0]
            return views.embeddings[0], views.photo_boxes[0], offsets

        methods["localiser"] = localised
    if all(q.box is not None for q in queries):
        methods["oracle crop"] = oracle
    ids = np.array(gallery_ids)
    results: dict[str, object] = {
        "queries": len(queries),
        "gallery_listings": len(set(ids)),
        "unusable_photos": unusable,
    }
    timings: dict[str, float] = {}
    for split, wanted in (("held-out", True), ("trained", False)):
        qs = [q for q in queries if q.held_out == wanted]
        if not qs:
            continue
        datas = [photo_bytes[q.uri] for q in qs]
        qids = np.array([q.listing_id for q in qs])
        table: dict[str, dict[str, float]] = {}
        for name, fn in methods.items():
            t0 = time.perf_counter()
            scores, found = [], []
            for data, q in zip(datas, qs, strict=True):
                emb, views, offsets = fn(data, q)
                scores.append(emb @ gallery.T + (0 if offsets is None else offsets[:, None]))
                if views is not None and q.box is not None:
                    from models.localiser import box_iou

                    found.append(float(box_iou(views[1:], np.array(q.box)).max(initial=0.0)))
            timings[name] = (time.perf_counter() - t0) / len(qs)
            width = max(s.shape[0] for s in scores)
            padded = np.full((len(scores), width, len(ids)), -np.inf, np.float32)
            for i, s in enumerate(scores):
                padded[i, : len(s)] = s
            table[name] = _rows(name, _hits(padded, ids, qids), qs)
            if found:
                table[name]["box recall@IoU0.5"] = float(np.mean(np.array(found) >= 0.5))
        hists = colour_histogram(np.stack([images.decode_image(d, size) for d in datas]))
        table["colour histogram"] = _rows(
            "hist", _hits((hists @ gallery_hist.T)[:, None], ids, qids), qs
        )
        results[split] = {"queries": len(qs), "methods": table}
    results["ms_per_query"] = {k: round(v * 1000, 1) for k, v in timings.items()}
    results["model"] = config.version
    return results


def markdown(results: dict[str, object]) -> str:
    lines = []
    for split in ("held-out", "trained"):
        part = results.get(split)
        if not isinstance(part, dict):
            continue
        table = part["methods"]
        cols = list(next(iter(table.values())).keys())
        extra = [c for m in table.values() for c in m if c not in cols]
        cols += list(dict.fromkeys(extra))
        lines.append(f"\n{split} listings' buyer photos ({part['queries']} queries):\n")
        lines.append("| method | " + " | ".join(cols) + " |")
        lines.append("|---|" + "---:|" * len(cols))
        for name, m in table.items():
            cells = [f"{m[c]:.3f}" if c in m and m[c] == m[c] else "-" for c in cols]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _only_model(workdir: str) -> str:
    """The one trained model under WORKDIR/models/; with several, --model must say which."""
    from core import paths

    found = sorted(
        storage.basename(storage.parent(u))
        for u in storage.glob(storage.join(paths.models_root(workdir), "*", "metrics.json"))
    )
    if len(found) != 1:
        raise SystemExit(f"buyer_photos: --model must name one of {found} under {workdir}")
    return found[0]


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--catalog", help="default: benchmarks/model_quality's catalog of --style")
    ap.add_argument("--workdir", help="default: benchmarks/model_quality's workdir of --style")
    ap.add_argument("--style", default="phone", help="model_quality's catalog style")
    ap.add_argument("--listings", type=int, default=600, help="model_quality's catalog size")
    ap.add_argument("--model", default=None, help="model VERSION (default: the only one there)")
    ap.add_argument("--date", default="2026-01-01")
    ap.add_argument("--label", default="", help="what this model is, for the report")
    ap.add_argument("--write", action="store_true", help="write the section of BENCHMARKS.md")
    args = ap.parse_args(argv)
    root = f"bench-output/model_quality/{args.style}-{args.listings}"
    catalog = args.catalog or storage.join(root, "catalog")
    workdir = args.workdir or storage.join(root, "work-defaults")
    version = args.model or _only_model(workdir)
    res = run(catalog, workdir, version, args.date)
    given = (
        f"--catalog {args.catalog} --workdir {args.workdir}"
        if args.catalog and args.workdir
        else f"--style {args.style} --listings {args.listings}"
    )
    body = (
        f"## Buyer photos: {args.style} catalog, {res['gallery_listings']} listings"
        f"{' - ' + args.label if args.label else ''}\n\n"
        f"`python -m benchmarks.buyer_photos {given}`: "
        f"model `{res['model']}`; every review photo searched against all "
        f"{res['gallery_listings']} listings (exact search, a listing scored by its best photo); "
        f"item size = the true box's longer side over the photo's. Milliseconds per query "
        f"(decode + model, 2 shared cores): {res['ms_per_query']}. Unreadable photos left out: "
        f"{res['unusable_photos']}.\n" + markdown(res)
    )
    print(body)
    if args.write:
        from benchmarks import report

        report.write_section(f"buyer_photos_{args.style}", body)
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
