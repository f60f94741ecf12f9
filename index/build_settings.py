"""The index build's settings: light (no faiss, no numpy), so the CLI builds ``vsearch build-index``'s
flags from them without loading the build (every field is a flag: --factory, --shards, ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from core.settings import doc
from index import factory as factory_mod


@dataclass(frozen=True)
class IndexSettings:
    factory: str = field(
        default="auto",
        metadata=doc(
            "faiss index_factory string (Flat, IVF4096,Flat, IVF4096,PQ32, "
            "IVF4096,PQ64x4fs,RFlat, HNSW32) or auto: the cheapest layout that fits "
            "--memory-budget and reaches --target-recall in a trial",
            metavar="FACTORY",
        ),
    )
    shards: int = field(default=1, metadata=doc("S; a listing's shard is a stable hash of its id"))
    target_recall: float = field(
        default=0.95,
        metadata=doc("recall@10 vs exact search that tuning must reach and validation confirm"),
    )
    memory_budget_bytes: int = field(
        default=16 << 30,
        metadata=doc(
            "bytes auto may spend on the whole index (all shards)",
            flag="memory-budget",
            metavar="BYTES",
        ),
    )
    pca_dim: int = field(
        default=0,
        metadata=doc(
            "dimension after PCA; 0: auto, the smallest multiple of 16 whose measured recall "
            "keeps half the target's allowed loss, or none (a cut saving under a quarter is not "
            "worth its cost)"
        ),
    )
    max_train_size: int = field(
        default=200_000,
        metadata=doc("training sample held in driver memory (~200 MB at D=256)"),
    )
    validation_queries: int = field(
        default=1000,
        metadata=doc("held-out database vectors used as queries (half tune, half validate)"),
    )
    tune_margin: float = field(
        default=0.005,
        metadata=doc("tune for target + margin, so validation's other queries pass too"),
    )
    latency_queries: int = field(default=300, metadata=doc("single queries timed for p50/p99"))
    ivf_max_probe_fraction: float = field(
        default=1 / 32,
        metadata=doc("auto: IVF-Flat must reach the target probing at most this share of lists"),
    )
    trial_size: int = field(default=50_000, metadata=doc("auto: sample vectors of the IVF trial"))
    seed: int = field(default=0, metadata=doc("seed of the samples"))
    use_gpu: bool | None = field(
        default=None, metadata=doc("k-means on GPU (default: when faiss sees one)")
    )
    # An index larger than RAM: shards filled one per pass, then merged into one index whose
    # lists are a file the searcher memory-maps (index/ondisk.py; manifest format 3).
    on_disk: bool = field(
        default=False,
        metadata=doc(
            "build an index larger than RAM: fill one shard at a time, merge the shards into "
            "merged.faiss + merged.ivfdata, serve the lists memory-mapped (plain IVF layouts)"
        ),
    )

    def __post_init__(self) -> None:
        if self.shards < 1:
            raise ValueError(f"shards must be >= 1, got {self.shards}")
        if not 0 < self.target_recall <= 1:
            raise ValueError(f"target recall must be in (0, 1], got {self.target_recall}")
        if self.factory != "auto":
            factory_mod.factory_kind(self.factory)
            if self.on_disk:
                factory_mod.check_on_disk_layout(self.factory)
