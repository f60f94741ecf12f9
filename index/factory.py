"""Which faiss index to build: a small function of N, dim and a memory budget (like autofaiss).

Preference order, and why:

* ``Flat`` below ``FLAT_MAX`` vectors: exact, and already fast enough at that size.
* ``IVF{nlist},Flat`` when raw vectors fit the budget: shards cleanly (every shard shares the one
  trained quantizer, so S shards scan the same number of codes as one), memory-maps, trains fast.
  From 2,048 lists up the coarse quantizer is an HNSW32 graph over the centroids
  (``IVF{nlist}_HNSW32,Flat``): comparing a query with every centroid is then most of a
  single-query search (measured at N=1M, 2,048 lists, nprobe 1: ~70 of ~130 us), a graph walk
  over them costs about half of that and finds the same nearest list for 99% of queries.
* ``IVF{nlist},PQ{dim/4}x4fs,RFlat`` as the fallback for data whose neighbours IVF-Flat cannot
  find cheaply (DESIGN.md's ``manifold`` set: IVF has to probe a large part of the lists there).
  4-bit fast-scan PQ codes (dim/8 bytes) make scanning many lists cheap, and the stored vectors
  re-rank ``k * k_factor`` candidates exactly (index/refine.py). It stays an IVF layout: shards
  are partitions of one coarse quantizer and merge into one index, so they cost nothing
  (HNSW32 was this fallback before; each HNSW shard has to be searched in full).
* ``HNSW32`` as the last resort, where 4-bit codes cannot rank the neighbours at all (measured:
  a set whose vectors share one dominant direction plateaus at recall 0.69 even probing every
  list with 16x re-ranking). Every HNSW shard is searched in full, so it is never preferred.
* ``IVF{nlist},PQ{m}`` when raw vectors do not fit: 100M vectors x 64 bytes of codes.

``nlist`` is about 2 x sqrt(N) for IVF-Flat, rounded to a power of two, with at least 39 training
points per centroid available. faiss' guideline is 4..16 x sqrt(N); for single-query latency at a
fixed recall, fewer lists measured faster at N=1M on both benchmark sets (BENCHMARKS.md, index):
a query compares with every centroid (a small, cache-resident matrix) and then scans the probed
lists (memory-bound, ~10x the cost per vector here), and the tuner raises nprobe until the
target recall holds whatever nlist is. clustered: IVF2048 nprobe 1 answered 10,901 QPS at recall
0.980 against IVF4096 nprobe 2's 6,168 (and IVF1024's 6,735 at nprobe 1, where the scan
dominates). The refined layout takes half as many again, about sqrt(N): it probes ~10% of its
lists, so the centroid comparison is paid in full while its 4-bit scan is cheap per code. At
manifold 1M (k_factor 8, 7 interleaved rounds, single queries): IVF2048 nprobe 192 answered 90x
exact at recall 0.953, IVF1024 nprobe 128 97x at 0.956, IVF512 nprobe 80 99x at 0.960
(BENCHMARKS.md, fourth series).
"""

from __future__ import annotations

import math
import re

HNSW_QUANTIZER_MIN_NLIST = 2048  # below this, comparing with every centroid costs little
FLAT_MAX = 20_000  # below this an exact scan takes well under a millisecond per query
HNSW_M = 32
IVF_ID_BYTES = 8  # an inverted list stores an int64 id next to each code
MIN_POINTS_PER_CENTROID = 39  # faiss warns (and clusters badly) below this


def parse_memory(value: str | int) -> int:
    """``"16G"``, ``"512M"``, ``"1.5GiB"`` or a byte count -> bytes."""
    if isinstance(value, int):
        return value
    m = re.fullmatch(r"\s*([\d.]+)\s*([KMGT]?)(i?B)?\s*", value, flags=re.IGNORECASE)
    if not m:
        raise ValueError(f"memory budget must look like 16G, 512M or a byte count, got {value!r}")
    scale = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[m.group(2).upper()]
    return int(float(m.group(1)) * scale)


def nlist_for(n: int, refined: bool = False) -> int:
    """IVF list count for ``n`` vectors: power of two near 2*sqrt(n) (sqrt(n) for the refined
    layout), >= 39 points per list."""
    if n < MIN_POINTS_PER_CENTROID * 4:
        return 1
    target = 2 ** round(math.log2((1 if refined else 2) * math.sqrt(n)))
    cap = 2 ** int(math.log2(n // MIN_POINTS_PER_CENTROID))
    return int(max(1, min(target, cap, 1 << 18)))


def ivf_prefix(n: int, refined: bool = False) -> str:
    """The coarse quantizer for ``n`` vectors: ``IVF{nlist}`` (nlist_for), an HNSW32 graph over
    the centroids from HNSW_QUANTIZER_MIN_NLIST lists up. The refined layout keeps a flat one: it
    probes ~10% of the lists, and an HNSW graph asked for that many nearest centroids returned
    the wrong ones (recall 0.88 at 1M manifold)."""
    nlist = nlist_for(n, refined)
    if nlist >= HNSW_QUANTIZER_MIN_NLIST and not refined:
        return f"IVF{nlist}_HNSW{HNSW_M}"
    return f"IVF{nlist}"


def pq_m_for(dim: int, n: int, memory_budget_bytes: int) -> int:
    """The largest PQ sub-quantizer count (bytes per code) that divides ``dim`` and fits."""
    for m in (dim // 2, 128, 96, 64, 48, 32, 24, 16, 8, 4):
        if 0 < m <= dim and dim % m == 0 and n * (m + IVF_ID_BYTES) <= memory_budget_bytes:
            return m
    raise ValueError(
        f"{n} vectors do not fit {memory_budget_bytes} bytes even at 4 bytes per vector; "
        "raise --memory-budget or add shards on more machines"
    )


def estimated_bytes(factory: str, n: int, dim: int) -> int:
    """Rough resident size of an index (what the memory budget is compared with)."""
    kind = factory_kind(factory)
    if kind == "flat":
        return n * dim * 4
    if kind == "hnsw":
        m = int(re.match(r"HNSW(\d+)", factory).group(1))  # type: ignore[union-attr]
        return int(n * (dim * 4 + m * 2 * 4 * 1.1))  # vectors + ~2M links per node
    nlist = ivf_nlist(factory)
    centroids = nlist * dim * 4
    if kind == "ivf_pq":
        m = int(re.search(r"PQ(\d+)", factory).group(1))  # type: ignore[union-attr]
        return n * (m + IVF_ID_BYTES) + centroids
    if kind == "ivf_refine":  # 4-bit codes + id in the lists, float vectors in the refine store
        m = int(re.search(r"PQ(\d+)", factory).group(1))  # type: ignore[union-attr]
        return n * ((m + 1) // 2 + IVF_ID_BYTES + dim * 4) + centroids
    return n * (dim * 4 + IVF_ID_BYTES) + centroids


def candidate_factories(n: int, dim: int, memory_budget_bytes: int) -> list[str]:
    """Index factories worth building for this size, most preferred first (never empty)."""
    if n <= FLAT_MAX and estimated_bytes("Flat", n, dim) <= memory_budget_bytes:
        return ["Flat"]
    out: list[str] = []
    m = refine_pq_m(dim)
    refined = [f"{ivf_prefix(n, refined=True)},PQ{m}x4fs,RFlat"] if m else []
    for f in (f"{ivf_prefix(n)},Flat", *refined, f"HNSW{HNSW_M}"):
        if estimated_bytes(f, n, dim) <= memory_budget_bytes:
            out.append(f)
    if not out:  # raw vectors do not fit: compress
        out.append(f"{ivf_prefix(n)},PQ{pq_m_for(dim, n, memory_budget_bytes)}")
    return out


def refine_pq_m(dim: int) -> int | None:
    """PQ sub-quantizers for the refined layout: the largest even divisor of ``dim`` up to
    dim/4 (4 dims per 4-bit code: the codes rank candidates, the stored vectors decide)."""
    for m in range(dim // 4, 1, -1):
        if dim % m == 0 and m % 2 == 0:
            return m
    return None


def factory_kind(factory: str) -> str:
    """ "flat", "ivf_flat", "ivf_pq", "ivf_refine", "ivf_other" or "hnsw" (decides the knobs)."""
    f = factory.replace(" ", "")
    if f == "Flat":
        return "flat"
    if f.startswith("HNSW"):
        return "hnsw"
    if re.match(r"IVF\d+(_HNSW\d+)?,", f):
        if re.fullmatch(r"IVF\d+(_HNSW\d+)?,PQ\d+x4fs(_\d+)?,RFlat", f):
            return "ivf_refine"
        if f.endswith(",RFlat"):
            raise ValueError(f"unsupported refined factory {factory!r}: use IVF<n>,PQ<m>x4fs,RFlat")
        if re.search(r",PQ\d+", f):
            return "ivf_pq"
        if f.endswith(",Flat"):
            return "ivf_flat"
        return "ivf_other"
    raise ValueError(
        f"unsupported index factory {factory!r}: use Flat, IVF<n>,Flat, IVF<n>,PQ<m>, "
        "IVF<n>,PQ<m>x4fs,RFlat or HNSW<M>; IVF<n>_HNSW<M>,... for an HNSW coarse quantizer "
        "(PCA is added separately by the build)"
    )


def check_on_disk_layout(factory: str) -> None:
    """ValueError unless ``factory`` is a layout whose lists can live on disk (plain IVF)."""
    kind = factory_kind(factory)
    if kind not in ("ivf_flat", "ivf_pq") or "x4fs" in factory:
        raise ValueError(
            f"--on-disk needs a plain IVF layout (e.g. IVF4096,Flat or IVF4096,PQ32), not "
            f"{factory}: HNSW graphs, fast-scan blocks and refine stores are not list files"
        )


def at_scale(factory: str, n: int) -> str:
    """The same IVF recipe sized for ``n`` vectors (its list count, and quantizer, recomputed)."""
    prefix = ivf_prefix(n, refined=factory_kind(factory) == "ivf_refine")
    return re.sub(r"^IVF\d+(_HNSW\d+)?", prefix, factory.replace(" ", ""))


def ivf_nlist(factory: str) -> int:
    m = re.match(r"IVF(\d+)", factory.replace(" ", ""))
    if not m:
        raise ValueError(f"{factory!r} is not an IVF factory")
    return int(m.group(1))


def search_param_name(factory: str) -> str | None:
    """The knob that trades recall for speed: nprobe (IVF), efSearch (HNSW), none (Flat)."""
    kind = factory_kind(factory)
    return {"flat": None, "hnsw": "efSearch"}.get(kind, "nprobe")


def fixed_search_params(factory: str) -> list[dict[str, int]]:
    """Settings tried in turn beside the tuned knob ([{}] when there are none): the refined
    layout's candidate factors (index/refine.py; tuning.tune keeps the fastest that reaches
    the target, or the first when it has no timings)."""
    if factory_kind(factory) == "ivf_refine":
        from index.refine import K_FACTORS  # faiss: kept out of this module, which --help loads

        return [{"k_factor": f} for f in K_FACTORS]
    return [{}]


HNSW_DEFAULT_EF_SEARCH = 16  # faiss' efSearch when none is given


def quantizer_ef_grid(factory: str, nprobe: int) -> list[int]:
    """Graph-walk efforts below faiss' default worth trying for an HNSW coarse quantizer,
    cheapest first ([] for a flat quantizer, or when nprobe lists already need a longer walk:
    faiss walks max(efSearch, nprobe) centroids)."""
    if nprobe >= HNSW_DEFAULT_EF_SEARCH or not re.match(r"IVF\d+_HNSW\d+,", factory):
        return []
    return sorted({max(nprobe, ef) for ef in (4, 8, 12)})


def param_grid(factory: str) -> list[int]:
    """Values of the search knob, cheapest first (latency grows with each)."""
    name = search_param_name(factory)
    if name is None:
        return []
    steps = [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024]
    steps += [1536, 2048, 3072, 4096, 6144, 8192, 12288, 16384]
    if name == "efSearch":
        return [s for s in steps if 16 <= s <= 4096]
    nlist = ivf_nlist(factory)
    return [s for s in steps if s < nlist] + [nlist]


def training_size(factory: str, n: int, cap: int) -> int:
    """How many sample vectors training needs (k-means wants 39..256 points per centroid)."""
    kind = factory_kind(factory)
    if kind in ("flat", "hnsw"):
        return 0
    need = ivf_nlist(factory) * 64
    if kind in ("ivf_pq", "ivf_refine"):
        need = max(need, 256 * 100)  # PQ codebooks: 256 centroids per sub-quantizer
    return int(min(n, cap, need))
