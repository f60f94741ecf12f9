"""Train once, on a sample: the PCA rotation/reduction and the (empty) faiss index.

PCA for inner product: faiss' PCAMatrix centres the data, and subtracting a mean changes which
vectors have the largest inner product with a query. Training it on the sample and its mirror
image (x and -x) makes the mean exactly zero, so the learnt map is a pure rotation onto the
principal axes of E[xx^T]: at full dimension inner products are unchanged, and a reduced map keeps
the directions that carry most of them. Outputs are re-normalised so inner product = cosine.

The trained index is returned on the CPU (what every shard copies and what gets written), even
when k-means ran on a GPU.
"""

from __future__ import annotations

import logging

import faiss
import numpy as np

from index import factory as factory_mod

log = logging.getLogger(__name__)

PCA_DIM_MULTIPLE = 16  # keeps PQ sub-quantizer counts (divisors of dim) available


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """Unit-length float32 rows, as a new array (a zero row stays zero).

    faiss' own in-place renormalisation: on one query row it costs ~1 us where numpy's norm and
    divide cost ~7 us, a few percent of a whole IVF search at 1M vectors.
    """
    out = np.array(x, dtype=np.float32, order="C", copy=True)
    if out.ndim == 2 and out.size:
        faiss.normalize_L2(out)
    return out


def train_pca(sample: np.ndarray, dim_out: int) -> faiss.PCAMatrix:
    """An uncentred PCA map ``sample.shape[1] -> dim_out`` (see module docstring)."""
    d_in = int(sample.shape[1])
    if not 0 < dim_out <= d_in:
        raise ValueError(f"PCA output dim must be in 1..{d_in}, got {dim_out}")
    if sample.shape[0] < 2:
        raise ValueError("PCA needs at least 2 sample vectors")
    pca = faiss.PCAMatrix(d_in, dim_out)
    mirrored = np.ascontiguousarray(np.vstack([sample, -sample]), dtype=np.float32)
    pca.train(mirrored)
    return pca


def apply_pca(pca: faiss.VectorTransform | None, x: np.ndarray) -> np.ndarray:
    """Project (None: no reduction, keep the input space) and re-normalise, ready for faiss."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    return normalize_rows(pca.apply(x) if pca is not None else x)


def pca_to_bytes(pca: faiss.VectorTransform | None) -> bytes:
    """Serialised PCA; b"" for none (a full-dimension rotation would only cost time)."""
    if pca is None:
        return b""
    w = faiss.VectorIOWriter()
    faiss.write_VectorTransform(pca, w)  # type: ignore[arg-type]
    return faiss.vector_to_array(w.data).tobytes()


def pca_from_bytes(data: bytes, source: str = "pca.bin") -> faiss.VectorTransform | None:
    if not data:
        return None
    r = faiss.VectorIOReader()
    faiss.copy_array_to_vector(np.frombuffer(data, dtype=np.uint8), r.data)
    try:
        return faiss.read_VectorTransform(r)  # type: ignore[arg-type]
    except RuntimeError as e:
        raise ValueError(f"{source} is not a faiss VectorTransform: {e}") from e


def index_to_bytes(index: faiss.Index) -> bytes:
    return faiss.serialize_index(index).tobytes()


def index_from_bytes(data: bytes) -> faiss.Index:
    return faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))


def gpu_available() -> bool:
    try:
        return faiss.get_num_gpus() > 0
    except AttributeError:  # faiss-cpu builds may lack the symbol
        return False


def train_index(
    factory: str, train_vectors: np.ndarray, use_gpu: bool | None = None
) -> faiss.Index:
    """An empty, trained, CPU-resident inner-product index for ``factory``.

    k-means (the expensive part) runs on every GPU when one is present: the standard faiss
    recipe of a GPU flat index as the clustering index; the result is plain CPU data.
    """
    dim = int(train_vectors.shape[1])
    factory_mod.factory_kind(factory)  # clear error for unsupported strings
    index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    if index.is_trained:
        return index
    if train_vectors.shape[0] == 0:
        raise ValueError(f"{factory} needs training vectors, got none")
    use_gpu = gpu_available() if use_gpu is None else use_gpu
    ivf = faiss.try_extract_index_ivf(index)
    if hasattr(faiss.downcast_index(index), "do_polysemous_training"):
        # Polysemous codes only pay off with Hamming-threshold search, which we do not use;
        # their annealing step costs more than the PQ training itself.
        faiss.downcast_index(index).do_polysemous_training = False  # type: ignore[attr-defined]
    if use_gpu and ivf is not None:
        log.info("training %s with k-means on %d GPU(s)", factory, faiss.get_num_gpus())
        ivf.clustering_index = faiss.index_cpu_to_all_gpus(faiss.IndexFlatIP(ivf.d))
    index.train(np.ascontiguousarray(train_vectors, dtype=np.float32))
    if ivf is not None:
        ivf.clustering_index = None  # type: ignore[assignment]  # never serialise a GPU object
    return index
