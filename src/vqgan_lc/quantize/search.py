"""Exact nearest-codebook-entry search whose transient memory is bounded.

The reference code forms the full (tokens x entries) distance matrix: 26 GB at 65,536 tokens
x 100,000 entries. Here nothing larger than a budgeted block is formed. Backends (all exact):
- "torch": query chunks x codebook tiles; each block of scores ||e||^2 - 2 z.e (||z||^2 does
  not move the argmin) is reduced at once into a running (min, argmin). Any device.
- "kdtree": scipy's exact float64 kd-tree; at VQGAN-LC's latent sizes (D' = 4, 8) a query
  visits a small part of the codebook.
- "faiss": faiss's flat L2 search, queries batched to the budget; with 7 <= D <= 32 and
  >= 16,000 queries per call it runs a fused SIMD distance+argmin kernel.
"auto": "torch" off-CPU. On CPU the fastest measured path for the regime: "faiss" where its
fused kernel applies, else "kdtree" (D <= 10, M >= 256, tree within budget), else "torch"
(2-5x faster than faiss's non-fused BLAS path at D = 16..768).

Returned distances are recomputed as sum((z - e)^2) in fp32 for the chosen entry, the same
whichever backend chose it.

Ties: the lowest index wins among entries at exactly the minimal distance, duplicate entries
and distinct equidistant entries alike, in every backend. torch: first-occurrence argmin in a
tile, strict "<" across tiles. faiss may return any copy of a duplicate, so its results are
mapped to the first copy. kdtree holds only the first copy of each duplicated vector and asks
for two neighbours; where both are at the same distance, every entry within that distance is
gathered and the lowest index among the nearest taken. Distinct entries closer than fp32
rounding may still be ranked differently by different backends (kdtree compares in float64).
"""
from __future__ import annotations

import contextlib
import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy.spatial import cKDTree

# faiss loads on first use (it picks the BLAS kernel for this CPU first), so importing the
# quantizer does not import it; where it is missing the other backends keep working.
from .._faiss import load_faiss

METRICS = ("l2", "cosine")
BACKENDS = ("auto", "torch", "kdtree", "faiss")
KDTREE_MAX_DIM = 10  # beyond ~10 dimensions a kd-tree visits most leaves and loses to brute force
KDTREE_MIN_QUERIES = 256  # below this, building the tree costs about what brute force does
# faiss (1.15, x86-64) switches its top-1 flat search to a fused distance+argmin SIMD kernel,
# ~20x faster than its BLAS path, for 7 <= D <= 32 and at least ~16,000 queries in one call.
FAISS_FUSED_DIMS = (7, 32)
FAISS_FUSED_MIN_QUERIES = 16_000
_FP32, _FP64, _I64 = 4, 8, 8
_NON_FINITE = "queries or codebook contain NaN or infinite values (or squares overflow fp32)"


def codebook_sq_norms(codebook: torch.Tensor) -> torch.Tensor:
    """Squared l2 norm of each entry, ``(N,)`` fp32 - compute once per codebook and pass it on."""
    if codebook.dim() != 2:
        raise ValueError(f"codebook must be 2-D (N, D), got shape {tuple(codebook.shape)}")
    with torch.no_grad():
        return codebook.detach().float().pow(2).sum(dim=1)


def _validate(z, codebook, sq_norms, metric, backend, budget_mb) -> None:
    if z.dim() != 2:
        raise ValueError(f"queries must be 2-D (M, D), got shape {tuple(z.shape)}")
    if codebook.dim() != 2:
        raise ValueError(f"codebook must be 2-D (N, D), got shape {tuple(codebook.shape)}")
    if z.shape[1] != codebook.shape[1]:
        raise ValueError(f"dimension mismatch: queries have D={z.shape[1]}, codebook has D={codebook.shape[1]}")
    if codebook.shape[0] == 0 or codebook.shape[1] == 0:
        raise ValueError(f"codebook is empty, shape {tuple(codebook.shape)}")
    if not (z.is_floating_point() and codebook.is_floating_point()):
        raise ValueError(f"queries and codebook must be floating point, got {z.dtype} and {codebook.dtype}")
    if z.device != codebook.device:
        raise ValueError(f"queries on {z.device} but codebook on {codebook.device}; put them on one device")
    if sq_norms is not None and (tuple(sq_norms.shape) != (codebook.shape[0],) or sq_norms.device != codebook.device):
        raise ValueError(f"codebook_sq_norms must have shape ({codebook.shape[0]},) on {codebook.device}, "
                         f"got {tuple(sq_norms.shape)} on {sq_norms.device}")
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend in ("faiss", "kdtree") and z.device.type != "cpu":
        raise ValueError(f"backend={backend!r} searches CPU tensors only, got {z.device}; use backend='torch'")
    if backend == "faiss" and load_faiss() is None:
        raise RuntimeError("backend='faiss' needs faiss, which is not importable (pip install faiss-cpu)")
    if not budget_mb > 0:
        raise ValueError(f"memory_budget_mb must be positive, got {budget_mb}")


def _kdtree_bytes(n: int, d: int) -> int:
    # float64 entries and index array of the tree, its nodes (leaves of <= 32 entries), an
    # fp32 copy of the entries, and the (N,) int64 arrays of the duplicate map and kept rows.
    return n * (d * (_FP64 + _FP32) + 2 * _I64 + 7 * _I64)


def _faiss_batch(m: int, n: int, d: int, budget_bytes: float) -> int:
    """Queries per faiss call: its BLAS path holds a (min(batch, 4096) x 1024) block, so the
    batch follows the budget; batches are made equal so none falls below the fused threshold."""
    per_query = min(n, 1024) * _FP32 + d * _FP32 + 24
    most = max(1, min(m, int(budget_bytes // per_query)))
    calls = -(-m // most)
    return -(-m // calls)


def _choose_backend(backend: str, m: int, n: int, d: int, device: torch.device, budget_bytes: float) -> str:
    if backend != "auto":
        return backend
    if device.type != "cpu":
        return "torch"
    lo, hi = FAISS_FUSED_DIMS
    # the cheap tests first: faiss is loaded only when its fused kernel would be chosen
    if lo <= d <= hi and _faiss_batch(m, n, d, budget_bytes) >= FAISS_FUSED_MIN_QUERIES and load_faiss() is not None:
        return "faiss"
    kd_ok = d <= KDTREE_MAX_DIM and m >= KDTREE_MIN_QUERIES
    return "kdtree" if kd_ok and _kdtree_bytes(n, d) <= 0.75 * budget_bytes else "torch"


# --------------------------------------------------------------------------- torch (blocked)

def _tile_shape(m: int, n: int, d: int, budget_bytes: float, device: torch.device) -> tuple[int, int]:
    """(query chunk, codebook tile) whose score block and per-tile copies fit the budget. On CPU
    a ~4 MB block stays in cache from the matmul to the min; on a GPU bigger ones amortise launches."""
    chunk_pref, tile_pref = (512, 2048) if device.type == "cpu" else (4096, 16384)
    tile = min(n, tile_pref)
    while True:
        tile_copy = tile * (d + 1) * _FP32  # converted / normalised codebook tile and its norms
        per_query = tile * _FP32 + 2 * d * _FP32 + 40  # scores row, query copy, running state
        chunk = int((budget_bytes - tile_copy) // per_query)
        if chunk >= 1 or tile == 1:
            return max(1, min(m, chunk_pref, chunk)), tile
        tile = max(1, tile // 2)


def _prepare_entries(e: torch.Tensor, sq_norms, metric: str) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 entries (unit length for cosine) and their squared norms; no copy when possible."""
    e = e.float()
    if metric == "cosine":
        e = F.normalize(e, dim=1)
        return e, e.pow(2).sum(dim=1)
    return e, (sq_norms.float() if sq_norms is not None else e.pow(2).sum(dim=1))


def _search_torch(z, codebook, sq_norms, metric, budget_bytes):
    m, d = z.shape
    n = codebook.shape[0]
    # A NaN entry would turn its whole tile's min into NaN and hide the tile's real winner.
    if z.device.type == "cpu" and not bool(torch.isfinite(codebook).all()):
        raise ValueError(_NON_FINITE)
    # Prepare the whole codebook once when that copy is small next to the budget (and take it
    # out of the budget); otherwise each tile is converted on the fly. Slicing an fp32
    # codebook with cached norms costs nothing.
    whole = None
    if codebook.dtype == torch.float32 and metric == "l2" and sq_norms is not None:
        whole = (codebook, sq_norms.float())
    elif n * (d + 1) * _FP32 <= budget_bytes / 4:
        whole = _prepare_entries(codebook, sq_norms, metric)
        budget_bytes -= n * (d + 1) * _FP32
    chunk, tile = _tile_shape(m, n, d, budget_bytes, z.device)
    dev = z.device
    indices = torch.empty(m, dtype=torch.int64, device=dev)
    scores_buf = torch.empty(chunk * tile, dtype=torch.float32, device=dev)
    vals = torch.empty(chunk, dtype=torch.float32, device=dev)
    args = torch.empty(chunk, dtype=torch.int64, device=dev)
    best = torch.empty(chunk, dtype=torch.float32, device=dev)
    mask = torch.empty(chunk, dtype=torch.bool, device=dev)
    for q0 in range(0, m, chunk):
        q = z[q0:q0 + chunk].float()
        if metric == "cosine":
            q = F.normalize(q, dim=1)
        c = q.shape[0]
        best_c, idx_c = best[:c].fill_(math.inf), indices[q0:q0 + c].zero_()
        vals_c, args_c, mask_c = vals[:c], args[:c], mask[:c]
        for e0 in range(0, n, tile):
            if whole is not None:
                e, e_sq = whole[0][e0:e0 + tile], whole[1][e0:e0 + tile]
            else:
                e, e_sq = _prepare_entries(codebook[e0:e0 + tile], None if sq_norms is None else sq_norms[e0:e0 + tile], metric)
            scores = scores_buf[:c * e.shape[0]].view(c, e.shape[0])
            torch.addmm(e_sq.unsqueeze(0), q, e.t(), beta=1.0, alpha=-2.0, out=scores)
            torch.min(scores, dim=1, out=(vals_c, args_c))  # first occurrence on ties
            torch.lt(vals_c, best_c, out=mask_c)  # strict: an earlier tile keeps equal scores
            torch.minimum(best_c, vals_c, out=best_c)
            torch.where(mask_c, args_c.add_(e0), idx_c, out=idx_c)
    return indices


# --------------------------------------------------------------------------- kd-tree (CPU)

def _first_duplicates(e: np.ndarray) -> np.ndarray | None:
    """For each entry, the lowest index holding exactly the same vector; None if all differ.
    Rows are hashed, a stable sort groups equal hashes in index order, each group points at its
    first member; a hash collision between different rows is caught by comparing the rows."""
    n = e.shape[0]
    bits = e.view(np.int32)
    weights = np.random.default_rng(0).integers(1, 2**31, size=e.shape[1], dtype=np.int64) * 2 + 1
    row_hash = np.zeros(n, dtype=np.int64)
    for j in range(e.shape[1]):  # column by column: temporaries stay (N,); int64 wraps, fine for a hash
        column = np.where(bits[:, j] == np.int32(-2**31), 0, bits[:, j])  # -0.0 hashes like 0.0
        row_hash += column.astype(np.int64) * weights[j]
    order = np.argsort(row_hash, kind="stable")
    sorted_hash = row_hash[order]
    starts = np.ones(n, dtype=bool)
    starts[1:] = sorted_hash[1:] != sorted_hash[:-1]
    if starts.all():
        return None
    first_sorted = order[np.maximum.accumulate(np.where(starts, np.arange(n), 0))]
    first = np.empty(n, dtype=np.int64)
    first[order] = first_sorted
    same = (e[first] == e).all(axis=1)
    return np.where(same, first, np.arange(n))


def _lowest_of_ties(tree: cKDTree, q: np.ndarray, dist: np.ndarray, found: np.ndarray) -> np.ndarray:
    """Tree rows nearest to `q` from a k=2 query, exact ties resolved to the lowest row.

    The tree returns either of two equidistant rows; only queries whose two neighbours are at
    the same distance need more, and there may be more than two rows at that distance."""
    best = found[:, 0].copy()
    tied = np.flatnonzero(dist[:, 1] == dist[:, 0])
    if tied.size:
        # The tree compares squared distances with the squared radius, and squaring the
        # returned root may round down: a hair more radius keeps every tied row inside. The
        # candidates' distances are then recomputed, so the hair admits no farther row.
        radius = dist[tied, 0] * (1 + 1e-9)
        for row, candidates in zip(tied, tree.query_ball_point(q[tied], radius, workers=1)):
            candidates = np.sort(np.asarray(candidates, dtype=np.int64))
            sq = ((tree.data[candidates] - q[row]) ** 2).sum(axis=1)
            best[row] = candidates[np.argmin(sq)]  # argmin: first, so lowest row, among the minima
    return best


def _search_kdtree(z, codebook, metric, budget_bytes):
    m, d = z.shape
    n = codebook.shape[0]
    if _kdtree_bytes(n, d) > budget_bytes:
        raise ValueError(f"backend='kdtree' needs ~{_kdtree_bytes(n, d) / 2**20:.1f} MB for its tree, "
                         f"above memory_budget_mb={budget_bytes / 2**20:g}; use backend='torch'")
    e = codebook.float()
    e = (F.normalize(e, dim=1) if metric == "cosine" else e).contiguous().numpy()
    # numpy/scipy from here: no per-op thread-pool wake-ups for these few cheap passes.
    if not np.isfinite(e).all():
        raise ValueError(_NON_FINITE)
    # The tree holds only the first copy of each duplicated vector: copies never compete, and
    # `kept` (ascending) maps tree rows back to codebook indices, the lowest row to the lowest index.
    first = _first_duplicates(e)
    kept = None if first is None else np.flatnonzero(first == np.arange(n))
    rows = e if kept is None else e[kept]
    tree = cKDTree(rows.astype(np.float64), leafsize=32, balanced_tree=False)
    # Two neighbours reveal a tie between distinct entries (~20-40% slower than one), which
    # `_lowest_of_ties` settles as the other backends do.
    k = min(2, rows.shape[0])
    room = max(budget_bytes - _kdtree_bytes(n, d), 0)
    batch = max(1, min(m, int(room // (d * (_FP32 + _FP64) + 48)), 1 << 16))
    indices = torch.empty(m, dtype=torch.int64)
    out = indices.numpy()
    for q0 in range(0, m, batch):
        q = z[q0:q0 + batch].float()
        q = (F.normalize(q, dim=1) if metric == "cosine" else q).numpy().astype(np.float64)
        try:
            dist, found = tree.query(q, k=k, workers=torch.get_num_threads())
        except ValueError as err:  # scipy refuses NaN / inf queries
            raise ValueError(_NON_FINITE) from err
        found = found if k == 1 else _lowest_of_ties(tree, q, dist, found)
        out[q0:q0 + q.shape[0]] = found if kept is None else kept[found]
    return indices


# --------------------------------------------------------------------------- faiss (CPU)

def _search_faiss(z, codebook, sq_norms, metric, budget_bytes):
    faiss = load_faiss()
    m, d = z.shape
    n = codebook.shape[0]
    e = codebook.float()
    e_np = (F.normalize(e, dim=1) if metric == "cosine" else e).contiguous().numpy()
    # Cached norms are handed over; otherwise faiss computes them itself (one cheap C pass).
    norms = () if sq_norms is None else (faiss.swig_ptr(sq_norms.float().contiguous().numpy()),)
    batch = _faiss_batch(m, n, d, budget_bytes)
    indices = torch.empty(m, dtype=torch.int64)
    dist = torch.empty(m, dtype=torch.float32)
    for q0 in range(0, m, batch):
        q = z[q0:q0 + batch].float()
        q_np = (F.normalize(q, dim=1) if metric == "cosine" else q).contiguous().numpy()
        c = q_np.shape[0]
        i_out, d_out = indices[q0:q0 + c].numpy(), dist[q0:q0 + c].numpy()
        faiss.knn_L2sqr(faiss.swig_ptr(q_np), faiss.swig_ptr(e_np), d, c, n, 1,
                        faiss.swig_ptr(d_out), faiss.swig_ptr(i_out), *norms)
    first = _first_duplicates(e_np)  # faiss's SIMD kernel may return any copy of a duplicate
    return indices if first is None else torch.from_numpy(first[indices.numpy()])


# --------------------------------------------------------------------------- entry point

def _numpy_side(device: torch.device) -> bool:
    return device.type == "cpu"


def _exact_sq_distances(z, codebook, indices, metric, budget_bytes):
    """sum((z - e[idx])^2) in fp32, chunked. On CPU in numpy: torch would spread these light
    passes over its intra-op thread pool, and on a busy machine waiting costs more than work."""
    if metric == "cosine":
        z, codebook = F.normalize(z.float(), dim=1), F.normalize(codebook.float(), dim=1)
    m, d = z.shape
    on_cpu = _numpy_side(z.device)
    out = torch.empty(m, dtype=torch.float32, device=z.device)
    if on_cpu:
        z_np, e_np, idx_np, out_np = z.float().numpy(), codebook.float().numpy(), indices.numpy(), out.numpy()
    step = max(1, int(budget_bytes // (4 * d * _FP32)))
    for q0 in range(0, m, step):
        rows = slice(q0, q0 + step)
        if on_cpu:
            diff = z_np[rows] - e_np[idx_np[rows]]
            out_np[rows] = np.einsum("md,md->m", diff, diff)
        else:
            diff = z[rows].float() - codebook[indices[rows]].float()
            out[rows] = (diff * diff).sum(dim=1)
    return out


def nearest_codes(
    z: torch.Tensor,
    codebook: torch.Tensor,
    *,
    codebook_sq_norms: torch.Tensor | None = None,
    metric: str = "l2",
    memory_budget_mb: float = 256.0,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Index of the nearest codebook entry for every query, and its squared distance.

    z: (M, D) queries; codebook: (N, D) entries; any float dtypes, one device.
    codebook_sq_norms: cached ``codebook_sq_norms(codebook)`` for "l2" (unused by "cosine",
    which l2-normalises both sides). backend: "auto" | "torch" | "kdtree" | "faiss".
    Returns int64 indices (M,) and fp32 squared distances (M,) on z's device; fp32 and no
    autograd even under autocast. On CPU NaN/inf queries raise ValueError, as do NaN/inf
    entries unless the backend skips them; elsewhere that check would cost a device sync, so
    non-finite inputs give arbitrary indices.
    """
    _validate(z, codebook, codebook_sq_norms, metric, backend, memory_budget_mb)
    budget_bytes = memory_budget_mb * 2**20
    m, d = z.shape
    if m == 0:
        return (torch.empty(0, dtype=torch.int64, device=z.device),
                torch.empty(0, dtype=torch.float32, device=z.device))
    chosen = _choose_backend(backend, m, codebook.shape[0], d, z.device, budget_bytes)
    no_autocast = (torch.autocast(device_type=z.device.type, enabled=False)
                   if z.device.type in ("cpu", "cuda") else contextlib.nullcontext())
    with torch.no_grad(), no_autocast:
        z, codebook = z.detach(), codebook.detach()
        sq = codebook_sq_norms.detach() if (codebook_sq_norms is not None and metric == "l2") else None
        if chosen == "kdtree":
            indices = _search_kdtree(z, codebook, metric, budget_bytes)
        elif chosen == "faiss":
            indices = _search_faiss(z, codebook, sq, metric, budget_bytes)
        else:
            indices = _search_torch(z, codebook, sq, metric, budget_bytes)
        dists = _exact_sq_distances(z, codebook, indices, metric, budget_bytes)
    # A NaN/inf query shows in its distance: one (M,) check instead of a pass over the queries.
    # Off-CPU it would cost a device sync.
    if z.device.type == "cpu" and not np.isfinite(dists.numpy()).all():
        raise ValueError(_NON_FINITE)
    return indices, dists
