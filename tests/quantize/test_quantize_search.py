"""nearest_codes equals a float64 brute force, whatever the backend, budget, dtype or metric."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vqgan_lc.quantize import search
from vqgan_lc.quantize.search import codebook_sq_norms, nearest_codes

BACKENDS = ["torch", "kdtree", "faiss", "auto"]


def brute_force(z: torch.Tensor, codebook: torch.Tensor, metric: str = "l2"):
    """Reference: every squared distance in float64, (M, N) - fine at test sizes."""
    z64, e64 = z.double(), codebook.double()
    if metric == "cosine":
        z64, e64 = F.normalize(z64, dim=1), F.normalize(e64, dim=1)
    return ((z64[:, None, :] - e64[None, :, :]) ** 2).sum(-1)


def assert_matches_brute_force(z, codebook, indices, dists, metric="l2"):
    full = brute_force(z, codebook, metric)
    best = full.min(dim=1)
    chosen = full.gather(1, indices[:, None])[:, 0]
    # The chosen entry is a nearest one up to fp32 rounding of the expanded distance ...
    assert torch.all(chosen <= best.values + 1e-5 * (1 + best.values))
    # ... and where the runner-up is clearly farther, it is exactly the brute-force index.
    second = full.topk(2, dim=1, largest=False).values[:, 1] if full.shape[1] > 1 else best.values + 1
    clear = (second - best.values) > 1e-4 * (1 + best.values)
    assert torch.equal(indices[clear], best.indices[clear])
    # The reported distance is the chosen entry's distance, in fp32.
    assert dists.dtype == torch.float32 and indices.dtype == torch.int64
    torch.testing.assert_close(dists.double(), chosen, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("m,n,d", [(1, 1, 1), (37, 5, 3), (300, 1000, 8), (257, 3001, 16), (400, 2500, 4)])
def test_equals_brute_force(backend, m, n, d):
    gen = torch.Generator().manual_seed(m * 7 + n + d)
    z, codebook = torch.randn(m, d, generator=gen), torch.randn(n, d, generator=gen)
    indices, dists = nearest_codes(z, codebook, backend=backend)
    assert_matches_brute_force(z, codebook, indices, dists)


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_tiny_budget_many_chunks_same_answer(backend):
    gen = torch.Generator().manual_seed(1)
    z, codebook = torch.randn(64, 8, generator=gen), torch.randn(3001, 8, generator=gen)
    indices, dists = nearest_codes(z, codebook, backend=backend, memory_budget_mb=0.02)
    assert_matches_brute_force(z, codebook, indices, dists)
    assert torch.equal(indices, nearest_codes(z, codebook, backend=backend)[0])


def test_torch_score_blocks_stay_inside_budget(monkeypatch):
    """The largest (chunk x tile) block never approaches M x N, and follows the budget."""
    largest = []
    real_addmm = torch.addmm

    def recording_addmm(*args, **kwargs):
        largest.append(kwargs["out"].numel())
        return real_addmm(*args, **kwargs)

    monkeypatch.setattr(search.torch, "addmm", recording_addmm)
    z, codebook = torch.randn(2000, 8), torch.randn(5000, 8)
    for budget_mb in (0.05, 1.0):
        largest.clear()
        nearest_codes(z, codebook, backend="torch", memory_budget_mb=budget_mb)
        assert max(largest) * 4 <= budget_mb * 2**20
    assert max(largest) < z.shape[0] * codebook.shape[0] / 4


@pytest.mark.parametrize("budget_mb", [0.001, 0.03, 1.0, 256.0])
@pytest.mark.parametrize("m,n,d", [(1, 1, 1), (100, 100_000, 8), (65536, 1_000_000, 8), (10, 50, 768)])
def test_tile_shape_fits_budget(budget_mb, m, n, d):
    chunk, tile = search._tile_shape(m, n, d, budget_mb * 2**20, torch.device("cpu"))
    assert 1 <= chunk <= m and 1 <= tile <= n
    if (tile + 2 * d) * 4 + 40 + tile * (d + 1) * 4 <= budget_mb * 2**20:  # a 1-row chunk fits
        assert chunk * (tile * 4 + 2 * d * 4 + 40) + tile * (d + 1) * 4 <= budget_mb * 2**20


def test_faiss_batches_stay_inside_budget(monkeypatch):
    calls = []
    faiss = search.load_faiss()  # the module the search itself will use (loaded on first use)
    real = faiss.knn_L2sqr

    def recording(x, y, d, nx, ny, *rest):
        calls.append(nx)
        return real(x, y, d, nx, ny, *rest)

    monkeypatch.setattr(faiss, "knn_L2sqr", recording)
    z, codebook = torch.randn(3000, 8), torch.randn(4000, 8)
    nearest_codes(z, codebook, backend="faiss", memory_budget_mb=0.5)
    assert len(calls) > 1 and sum(calls) == 3000 and max(calls) - min(calls) <= 1
    assert max(calls) * 1024 * 4 <= 0.5 * 2**20  # faiss's (queries x 1024) inner-product block


@pytest.mark.parametrize(  # the kd-tree needs room for its tree, so no tiny budget for it
    "backend,budget_mb", [(b, 256.0) for b in BACKENDS] + [("torch", 0.02), ("faiss", 0.02)])
def test_duplicate_entries_resolve_to_lowest_index(backend, budget_mb):
    gen = torch.Generator().manual_seed(2)
    codebook = torch.randn(3000, 8, generator=gen)
    for target in (10, 700):  # copies land in the same tile and in later tiles
        for copy in (target + 1, target + 600, 2047, 2048, 2999):
            codebook[copy] = codebook[target]
    z = torch.cat([codebook[[10, 700]], codebook[[10, 700]] + 1e-3 * torch.randn(2, 8, generator=gen)])
    z = z.repeat(150, 1)  # enough queries for auto to pick the kd-tree
    indices, dists = nearest_codes(z, codebook, backend=backend, memory_budget_mb=budget_mb)
    assert torch.equal(indices, torch.tensor([10, 700, 10, 700]).repeat(150))
    assert torch.all(dists[0::4] == 0) and torch.all(dists[1::4] == 0)


@pytest.mark.parametrize("backend", ["torch", "kdtree", "faiss"])
def test_negative_zero_counts_as_a_duplicate(backend):
    codebook = torch.tensor([[3.0, 3.0], [0.0, 0.0], [-0.0, 0.0], [0.0, -0.0], [5.0, 1.0]])
    indices, dists = nearest_codes(torch.zeros(300, 2), codebook, backend=backend)
    assert torch.all(indices == 1) and torch.all(dists == 0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_are_searched_in_fp32(backend, dtype):
    gen = torch.Generator().manual_seed(3)
    z = torch.randn(300, 8, generator=gen).to(dtype)
    codebook = torch.randn(2000, 8, generator=gen).to(dtype)
    indices, dists = nearest_codes(z, codebook, backend=backend)
    assert_matches_brute_force(z.float(), codebook.float(), indices, dists)


@pytest.mark.parametrize("backend", BACKENDS)
def test_inside_autocast_results_unchanged_and_fp32(backend):
    gen = torch.Generator().manual_seed(4)
    z, codebook = torch.randn(300, 8, generator=gen), torch.randn(2000, 8, generator=gen)
    plain = nearest_codes(z, codebook, backend=backend)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = nearest_codes(z, codebook, backend=backend)
    assert torch.equal(plain[0], inside[0]) and torch.equal(plain[1], inside[1])
    assert inside[1].dtype == torch.float32


@pytest.mark.parametrize("backend", BACKENDS)
def test_cosine_metric_matches_normalised_brute_force(backend):
    gen = torch.Generator().manual_seed(5)
    z = torch.randn(300, 8, generator=gen) * 5
    codebook = torch.randn(2000, 8, generator=gen) * torch.rand(2000, 1, generator=gen) * 10
    indices, dists = nearest_codes(z, codebook, metric="cosine", backend=backend)
    assert_matches_brute_force(z, codebook, indices, dists, metric="cosine")
    cos_sim = F.normalize(z.double(), dim=1) @ F.normalize(codebook.double(), dim=1).t()
    assert (indices == cos_sim.argmax(dim=1)).float().mean() > 0.99


@pytest.mark.parametrize("backend", BACKENDS)
def test_cached_norms_give_the_same_answer(backend):
    gen = torch.Generator().manual_seed(6)
    z, codebook = torch.randn(300, 8, generator=gen), torch.randn(2000, 8, generator=gen)
    norms = codebook_sq_norms(codebook)
    assert norms.dtype == torch.float32 and norms.shape == (2000,)
    torch.testing.assert_close(norms, (codebook.double() ** 2).sum(1).float())
    cached = nearest_codes(z, codebook, codebook_sq_norms=norms, backend=backend)
    fresh = nearest_codes(z, codebook, backend=backend)
    assert torch.equal(cached[0], fresh[0]) and torch.equal(cached[1], fresh[1])


def test_gradients_are_not_tracked_and_inputs_untouched():
    z = torch.randn(50, 8, requires_grad=True)
    codebook = torch.randn(100, 8, requires_grad=True)
    before = codebook.detach().clone()
    indices, dists = nearest_codes(z, codebook)
    assert not dists.requires_grad and not indices.requires_grad
    assert torch.equal(codebook.detach(), before)


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_accelerator_distance_recompute_matches_the_cpu_one(monkeypatch, metric):
    """The torch branch that recomputes distances off-CPU, run here on CPU tensors."""
    gen = torch.Generator().manual_seed(11)
    z, codebook = torch.randn(3000, 8, generator=gen), torch.randn(500, 8, generator=gen).half()
    indices = torch.randint(0, 500, (3000,), generator=gen)
    on_cpu = search._exact_sq_distances(z, codebook, indices, metric, 0.01 * 2**20)
    monkeypatch.setattr(search, "_numpy_side", lambda device: False)
    off_cpu = search._exact_sq_distances(z, codebook, indices, metric, 0.01 * 2**20)
    torch.testing.assert_close(off_cpu, on_cpu)
    assert off_cpu.dtype == torch.float32


def test_no_queries_give_empty_outputs():
    indices, dists = nearest_codes(torch.empty(0, 8), torch.randn(10, 8))
    assert indices.shape == (0,) and indices.dtype == torch.int64 and dists.shape == (0,)


def test_backends_agree_exactly_on_random_data():
    gen = torch.Generator().manual_seed(7)
    z, codebook = torch.randn(1000, 8, generator=gen), torch.randn(5000, 8, generator=gen)
    results = [nearest_codes(z, codebook, backend=b) for b in ("torch", "kdtree", "faiss")]
    for indices, dists in results[1:]:
        assert torch.equal(indices, results[0][0]) and torch.equal(dists, results[0][1])


def test_auto_policy():
    cpu, cuda, budget = torch.device("cpu"), torch.device("cuda"), 256 * 2**20
    choose = search._choose_backend
    assert choose("auto", 65536, 100_000, 8, cpu, budget) == "faiss"  # fused faiss kernel applies
    assert choose("auto", 65536, 100_000, 8, cuda, budget) == "torch"
    assert choose("auto", 65536, 100_000, 4, cpu, budget) == "kdtree"  # no fused kernel for D=4
    assert choose("auto", 65536, 100_000, 8, cpu, 32 * 2**20) == "kdtree"  # batches too small for it
    assert choose("auto", 4096, 100_000, 8, cpu, budget) == "kdtree"
    assert choose("auto", 4096, 100_000, 64, cpu, budget) == "torch"
    assert choose("auto", 16, 100_000, 8, cpu, budget) == "torch"  # too few queries for a tree
    assert choose("auto", 4096, 1_000_000, 8, cpu, 8 * 2**20) == "torch"  # tree above the budget
    assert choose("faiss", 4096, 100_000, 8, cpu, budget) == "faiss"


def test_faiss_batches_are_even_so_none_falls_below_the_fused_threshold():
    assert search._faiss_batch(70_000, 100_000, 8, 256 * 2**20) == 35_000
    assert search._faiss_batch(100, 10, 8, 256 * 2**20) == 100
    assert search._faiss_batch(10, 5000, 8, 1) == 1


@pytest.mark.parametrize("d", [8, 16])
def test_duplicates_on_the_fused_faiss_path(d):
    """16,000+ queries put faiss on its SIMD kernel, which alone may return a later copy."""
    gen = torch.Generator().manual_seed(9)
    codebook = torch.randn(3000, d, generator=gen)
    for copy in (701, 702, 703, 716, 1300, 2999):
        codebook[copy] = codebook[700]
    z = (codebook[700] + 1e-3 * torch.randn(16_000, d, generator=gen)).contiguous()
    for backend in ("auto", "faiss"):
        indices, _ = nearest_codes(z, codebook, backend=backend)
        assert torch.all(indices == 700)


@pytest.mark.parametrize(
    "z,codebook,kwargs,message",
    [
        (torch.randn(4, 8, 1), torch.randn(10, 8), {}, "queries must be 2-D"),
        (torch.randn(4, 8), torch.randn(10), {}, "codebook must be 2-D"),
        (torch.randn(4, 8), torch.randn(10, 7), {}, "dimension mismatch"),
        (torch.randn(4, 8), torch.randn(0, 8), {}, "codebook is empty"),
        (torch.randint(0, 3, (4, 8)), torch.randn(10, 8), {}, "floating point"),
        (torch.randn(4, 8), torch.randn(10, 8), {"metric": "dot"}, "metric must be one of"),
        (torch.randn(4, 8), torch.randn(10, 8), {"backend": "annoy"}, "backend must be one of"),
        (torch.randn(4, 8), torch.randn(10, 8), {"memory_budget_mb": 0}, "must be positive"),
        (torch.randn(4, 8), torch.randn(10, 8), {"codebook_sq_norms": torch.ones(9)}, "must have shape"),
        (torch.randn(4, 8), torch.randn(10_000, 8), {"backend": "kdtree", "memory_budget_mb": 0.1}, "needs ~"),
    ],
)
def test_bad_input_raises_one_line_value_error(z, codebook, kwargs, message):
    with pytest.raises(ValueError, match=message) as info:
        nearest_codes(z, codebook, **kwargs)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_queries_are_reported_on_cpu(backend, bad):
    z = torch.randn(20_000, 8)  # enough queries for auto to take faiss's fused kernel
    z[3, 2] = bad
    with pytest.raises(ValueError, match="NaN or infinite"):
        nearest_codes(z, torch.randn(50, 8), backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_nan_entry_is_reported_or_never_chosen(backend):
    gen = torch.Generator().manual_seed(10)
    z, codebook = torch.randn(300, 8, generator=gen), torch.randn(50, 8, generator=gen)
    codebook[7, 1] = float("nan")
    try:
        indices, dists = nearest_codes(z, codebook, backend=backend)
    except ValueError as err:
        assert "NaN or infinite" in str(err)
    else:  # a backend that skips the broken entry still returns the nearest finite one
        finite = torch.cat([codebook[:7], codebook[8:]])
        expected = brute_force(z, finite).argmin(dim=1)
        assert torch.equal(indices, expected + (expected >= 7).long())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_torch_path_matches_cpu():
    gen = torch.Generator().manual_seed(8)
    z, codebook = torch.randn(5000, 8, generator=gen), torch.randn(20_000, 8, generator=gen)
    indices, dists = nearest_codes(z.cuda(), codebook.cuda(), memory_budget_mb=4)
    assert indices.device.type == "cuda" and dists.device.type == "cuda"
    assert_matches_brute_force(z[:500], codebook, indices[:500].cpu(), dists[:500].cpu())
    with torch.autocast("cuda", dtype=torch.float16):
        again = nearest_codes(z.cuda().half(), codebook.cuda(), memory_budget_mb=4)
    assert again[1].dtype == torch.float32


# ---- exact ties between distinct entries ----------------------------------------------------

TIE_BACKENDS = ["torch", "kdtree", "auto"] + (["faiss"] if search.load_faiss() is not None else [])


def _grid(d, values, generator=None):
    import itertools

    points = torch.tensor(list(itertools.product(values, repeat=d)), dtype=torch.float32)
    return points if generator is None else points[torch.randperm(len(points), generator=generator)]


@pytest.mark.parametrize("d", [2, 3, 4])
def test_equidistant_entries_resolve_to_lowest_index_in_every_backend(d):
    """Small integers: every distance is exact in fp32 and float64, so the ties are real. The
    entries are shuffled, so the lowest index of a tie sits anywhere in the tree's leaves."""
    gen = torch.Generator().manual_seed(d)
    codebook = _grid(d, (0.0, 2.0, 4.0, 6.0), gen)  # 16, 64, 256 entries
    z = _grid(d, (-1.0, 0.0, 1.0, 2.0, 3.0, 5.0, 7.0)).repeat(2, 1)  # midpoints tie 2 to 2^d entries
    expected = brute_force(z, codebook).argmin(dim=1)  # first, so lowest, index among the minima
    for backend in TIE_BACKENDS:
        indices, dists = nearest_codes(z, codebook, backend=backend)
        assert torch.equal(indices, expected), backend
        torch.testing.assert_close(dists.double(), brute_force(z, codebook).min(dim=1).values)


def test_ties_between_duplicated_and_distinct_entries():
    # entry 1 and its later copy 2 tie with the lower entry 0; entry 4 and its copy 6 with 5
    codebook = torch.tensor([[-1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [9.0, 9.0], [0.0, 5.0], [0.0, 7.0],
                             [0.0, 5.0], [-9.0, -9.0]])
    z = torch.tensor([[0.0, 0.0], [0.0, 6.0], [1.0, 0.0], [0.0, 5.0]]).repeat(100, 1)
    for backend in TIE_BACKENDS:
        indices, _ = nearest_codes(z, codebook, backend=backend)
        assert torch.equal(indices, torch.tensor([0, 4, 1, 4]).repeat(100)), backend


def test_many_equidistant_entries_on_the_fused_faiss_path_and_kdtree():
    # (cosine is left out: normalised entries are rounded, so their ties are not exact)
    gen = torch.Generator().manual_seed(5)
    codebook = _grid(8, (0.0, 2.0), gen)  # 256 entries
    z = _grid(8, (-1.0, 1.0, 3.0))[:16_384]  # 16,000+ queries: faiss's SIMD kernel; up to 256-way ties
    expected = brute_force(z, codebook).argmin(dim=1)
    for backend in TIE_BACKENDS:
        assert torch.equal(nearest_codes(z, codebook, backend=backend)[0], expected), backend
