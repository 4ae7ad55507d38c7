"""Nearest-codebook-entry search: our bounded search vs the reference full matrix vs faiss.

    python benchmarks/quantizer_search.py [--json] [--device cpu|cuda] [--quick]

Methods (all exact, all include their per-call setup, since VQGAN-LC's projected codebook
changes every training step):
- ours:  vqgan_lc.quantize.search.nearest_codes(backend="auto")
- naive: the reference code's computation, ||z||^2 + ||e||^2 - 2 z e^T as one (M, N) matrix,
         then argmin over it
- faiss: faiss.IndexFlatL2 add + search(k=1) (CPU only)

ours and faiss run the full token count; naive gets fewer tokens where the full run would not
fit in memory or time (the table says how many); throughput is per token, so the ratios
compare like with like. Peak memory is the transient growth of the resident set
(CPU: VmHWM after resetting it, in a fresh subprocess per method and run) or of
torch.cuda.max_memory_allocated (GPU). The naive method's memory at the full token count is
its analytic lower bound, one fp32 (M, N) matrix; its measured peak is shown per token.
Each method runs in `--repeats` fresh processes, interleaved, `--inner` timed calls each, and
the best time is kept (a shared machine adds noise, never speed).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from vqgan_lc.quantize import search  # noqa: E402
from vqgan_lc.quantize.search import nearest_codes  # noqa: E402

MiB = 2**20


# --------------------------------------------------------------------------- data and methods

def make_data(n: int, m: int, d: int, kind: str, device: str, seed: int = 0):
    """Gaussian data is the hard case for a kd-tree; "clustered" mimics a trained tokenizer:
    a k-means-like codebook and queries near its entries."""
    gen = torch.Generator().manual_seed(seed)
    if kind == "gaussian":
        codebook, z = torch.randn(n, d, generator=gen), torch.randn(m, d, generator=gen)
    else:
        centres = 3 * torch.randn(max(1, n // 100), d, generator=gen)
        codebook = centres[torch.randint(0, centres.shape[0], (n,), generator=gen)] + 0.5 * torch.randn(n, d, generator=gen)
        z = codebook[torch.randint(0, n, (m,), generator=gen)] + 0.3 * torch.randn(m, d, generator=gen)
    return z.to(device), codebook.to(device)


def run_ours(z, codebook, budget_mb):
    return nearest_codes(z, codebook, memory_budget_mb=budget_mb)[0]


def run_naive(z, codebook, budget_mb):
    dist = (z ** 2).sum(dim=1, keepdim=True) + (codebook ** 2).sum(dim=1) - 2 * z @ codebook.t()
    return dist.argmin(dim=1)


def run_faiss(z, codebook, budget_mb):
    faiss = search.load_faiss()  # with the BLAS kernel the package's own faiss path gets

    index = faiss.IndexFlatL2(codebook.shape[1])
    index.add(codebook.numpy())
    return torch.from_numpy(index.search(z.numpy(), 1)[1][:, 0])


METHODS = {"ours": run_ours, "naive": run_naive, "faiss": run_faiss}


# --------------------------------------------------------------------------- one measurement

def _rss_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} missing from /proc/self/status")


def measure_cpu_worker(args) -> dict:
    """Runs in a fresh process: timed calls, and the resident-set high-water growth (Linux)."""
    torch.set_num_threads(args.threads)
    if args.worker == "faiss":
        search.load_faiss().omp_set_num_threads(args.threads)
    z, codebook = make_data(args.n, args.tokens, args.dim, args.data, "cpu")
    fn = METHODS[args.worker]
    fn(z[:64], codebook[:4096], args.budget_mb)  # load libraries / thread pools outside the window
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident set
    base = _rss_bytes("VmRSS")
    seconds = []
    for _ in range(args.inner):  # the same computation each time, so the peak is the first one's
        start = time.perf_counter()
        fn(z, codebook, args.budget_mb)
        seconds.append(time.perf_counter() - start)
    return {"seconds": min(seconds), "tokens": args.tokens, "peak_bytes": max(0, _rss_bytes("VmHWM") - base)}


def measure_cpu(method: str, n: int, tokens: int, args) -> dict:
    cmd = [sys.executable, __file__, "--worker", method, "--n", str(n), "--tokens", str(tokens),
           "--dim", str(args.dim), "--data", args.data, "--budget-mb", str(args.budget_mb),
           "--threads", str(args.threads), "--inner", str(args.inner)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{method} at N={n} failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure_cuda(method: str, n: int, tokens: int, args) -> dict:
    z, codebook = make_data(n, tokens, args.dim, args.data, "cuda")
    fn = METHODS[method]
    fn(z[:64], codebook[:4096], args.budget_mb)
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    seconds = []
    for _ in range(args.inner):
        start = time.perf_counter()
        fn(z, codebook, args.budget_mb)
        torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() - base
    del z, codebook
    torch.cuda.empty_cache()
    return {"seconds": min(seconds), "tokens": tokens, "peak_bytes": peak}


# --------------------------------------------------------------------------- the comparison

def method_tokens(method: str, n: int, args) -> int:
    """ours and faiss run every token (faiss's fast kernel needs >= 16,000 per call); the
    naive matrix is capped in size and work."""
    if method != "naive":
        return args.tokens
    if args.device == "cuda":
        cap = 0.25 * torch.cuda.mem_get_info()[0]  # the reference builds ~3 (M, N) temporaries
    else:
        cap = args.naive_matrix_mb * MiB
    return min(args.tokens, max(64, int(args.naive_pairs // n)), max(64, int(cap // (n * 4))))


def compare(args) -> dict:
    methods = ["ours", "naive"] + (["faiss"] if args.device == "cpu" else [])
    measure = measure_cpu if args.device == "cpu" else measure_cuda
    results = {}
    for n in args.sizes:
        runs = {m: [] for m in methods}
        tokens = {m: method_tokens(m, n, args) for m in methods}
        for _ in range(args.repeats):  # interleaved, so load spikes hit every method alike
            for m in methods:
                runs[m].append(measure(m, n, tokens[m], args))
        row = {}
        for m in methods:
            best = min(r["seconds"] for r in runs[m])
            peak = max(r["peak_bytes"] for r in runs[m])
            row[m] = {"tokens": tokens[m], "best_seconds": best, "tokens_per_s": tokens[m] / best,
                      "all_seconds": [round(r["seconds"], 4) for r in runs[m]],
                      "peak_mb": peak / MiB, "peak_bytes_per_token": peak / tokens[m]}
        row["naive"]["analytic_matrix_mb_at_full_tokens"] = args.tokens * n * 4 / MiB
        device = torch.device(args.device)
        row["ours"]["backend"] = search._choose_backend("auto", args.tokens, n, args.dim, device, args.budget_mb * MiB)
        results[n] = row
    return results


def ratios(row: dict) -> dict:
    ours_mb = max(row["ours"]["peak_mb"], 1.0)  # below 1 MB the RSS delta is allocator noise
    out = {"memory_ratio_naive_over_ours": row["naive"]["analytic_matrix_mb_at_full_tokens"] / ours_mb,
           "throughput_ratio_ours_over_naive": row["ours"]["tokens_per_s"] / row["naive"]["tokens_per_s"]}
    if "faiss" in row:
        out["throughput_ratio_ours_over_faiss"] = row["ours"]["tokens_per_s"] / row["faiss"]["tokens_per_s"]
    return out


def summary(results: dict, args) -> dict:
    key = 100_000 if 100_000 in results else sorted(results)[len(results) // 2]
    return {
        "device": args.device, "dim": args.dim, "tokens": args.tokens, "data": args.data,
        "threads": args.threads, "budget_mb": args.budget_mb, "summary_codebook_size": key,
        **ratios(results[key]),
        "results": {str(n): {**row, "ratios": ratios(row)} for n, row in results.items()},
    }


def print_table(report: dict) -> None:
    print(f"device={report['device']}  D'={report['dim']}  tokens={report['tokens']}  data={report['data']}  "
          f"threads={report['threads']}  budget={report['budget_mb']} MB")
    print(f"{'N':>9} {'method':>14} {'tokens':>7} {'tokens/s':>11} {'peak MB':>9} {'MB at full tokens':>18}")
    for n, row in report["results"].items():
        for m in ("ours", "naive", "faiss"):
            if m not in row:
                continue
            r = row[m]
            full = r.get("analytic_matrix_mb_at_full_tokens")
            full_txt = f">= {full:,.0f} (1 matrix)" if full is not None else f"{r['peak_mb']:,.1f}"
            name = f"ours ({r['backend']})" if m == "ours" else m
            print(f"{int(n):>9,} {name:>14} {r['tokens']:>7} {r['tokens_per_s']:>11,.0f} {r['peak_mb']:>9,.1f} {full_txt:>18}")
    n = report["summary_codebook_size"]
    print(f"at N={n:,}: memory naive/ours = {report['memory_ratio_naive_over_ours']:,.0f}x, "
          f"throughput ours/naive = {report['throughput_ratio_ours_over_naive']:.1f}x"
          + (f", ours/faiss = {report['throughput_ratio_ours_over_faiss']:.2f}x"
             if "throughput_ratio_ours_over_faiss" in report else ""))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--quick", action="store_true", help="smaller run: N in {16384, 100000}, 16384 tokens")
    p.add_argument("--sizes", type=int, nargs="+", default=[16_384, 100_000, 1_000_000])
    p.add_argument("--tokens", type=int, default=65_536)
    p.add_argument("--dim", type=int, default=8)
    p.add_argument("--data", choices=("gaussian", "clustered"), default="gaussian")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--inner", type=int, default=2, help="timed calls per fresh process (best kept)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--budget-mb", type=float, default=256.0, help="memory_budget_mb given to ours")
    p.add_argument("--naive-pairs", type=float, default=4e8, help="work cap (tokens x N) for the naive method")
    p.add_argument("--naive-matrix-mb", type=float, default=1024, help="CPU cap on the naive (M, N) matrix")
    p.add_argument("--worker", choices=tuple(METHODS), help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.tokens, args.repeats, args.naive_pairs = [16_384, 100_000], 16_384, 2, 1e8
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(measure_cpu_worker(args)))
        return
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible")
    report = summary(compare(args), args)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_table(report)


if __name__ == "__main__":
    main()
