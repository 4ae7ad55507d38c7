"""Compute against codebook size: a VQGAN-LC training step costs about the same at 1K and 1M entries.

    python benchmarks/codebook_scaling.py [--json] [--device cpu|cuda] [--sizes 1024 16384 100000 1000000]

For LC (`vqgan-lc-small`: frozen N x 112 codebook + linear projector to D'=8) and VQGAN
(`vqgan-small`: learned N x 128 codebook), at each N, in one run:

- training step: forward + backward + Adam step of everything that trains (LC: encoder,
  decoder, 1x1 convs, projector; VQGAN: the same plus the codebook), batch 8 at 128 px,
  reconstruction (L1) + quantizer loss. The perceptual and GAN terms are left out: they cost the
  same at every N, so leaving them out makes the measured ratio the conservative (larger) one;
- encode throughput: images/s of `model.encode` in eval mode (the projected codebook computed
  once, as at inference);
- peak memory: growth of the resident set (CPU: VmHWM, reset after imports, in a fresh process
  per measurement) or `torch.cuda.max_memory_allocated` (GPU) from before the model is built to
  the end of the timed steps: codebook, optimizer state, activations and search together.

It prints `lc_step_time_ratio_1m_over_1k` (the seed's claim: close to 1; target <= 1.5) and the
same ratio for VQGAN. Each measurement runs in `--repeats` fresh processes, interleaved over
kinds and sizes, and keeps the best time (a shared machine adds noise, never speed).
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
from vqgan_lc.tokenizer.config import get_preset  # noqa: E402
from vqgan_lc.tokenizer.model import VQModel  # noqa: E402

MiB = 2**20
PRESETS = {"lc": "vqgan-lc-small", "vqgan": "vqgan-small"}
SIZES = (1_024, 16_384, 100_000, 1_000_000)


def _rss_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} missing from /proc/self/status")


def build(kind: str, n: int, device: str) -> VQModel:
    config = get_preset(PRESETS[kind])
    config.quantizer.codebook_size = n
    # A Gaussian stands in for the k-means codebook: the cost does not depend on the values.
    codebook = torch.randn(n, config.quantizer.codebook_dim) if kind == "lc" else None
    return VQModel(config, codebook).to(device)


def measure(kind: str, n: int, args) -> dict:
    """One measurement in this process: step times, encode throughput, peak memory growth."""
    device = args.device
    cuda = device == "cuda"
    torch.manual_seed(0)
    images = torch.rand(args.batch, 3, 128, 128, device=device) * 2 - 1
    warm = build(kind, 1024, device)  # thread pools, kernels and allocator warmed outside the window
    warm(images).reconstruction.mean().backward()
    del warm
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident set
        base = _rss_bytes("VmRSS")

    model = build(kind, n, device).train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=1e-4, betas=(0.5, 0.9))

    def step() -> None:
        out = model(images)
        loss = (out.reconstruction - images).abs().mean() + 0.1 * out.quantizer.loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def timed(fn) -> float:
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - start

    step()  # the first step allocates Adam's state
    step_seconds = [timed(step) for _ in range(args.steps)]
    peak = (torch.cuda.max_memory_allocated() if cuda else _rss_bytes("VmHWM")) - base
    model.eval()
    with torch.no_grad():
        model.encode(images)  # projects and caches the codebook once, as inference does
        encode_seconds = [timed(lambda: model.encode(images)) for _ in range(args.steps)]
    return {"step_seconds": min(step_seconds), "all_step_seconds": [round(s, 4) for s in step_seconds],
            "encode_images_per_s": args.batch / min(encode_seconds), "peak_mb": max(peak, 0) / MiB,
            "trainable_parameters": sum(p.numel() for p in trainable),
            "codebook_mb": model.quantizer.codebook.numel() * 4 / MiB if kind == "lc"
            else model.quantizer.embedding.weight.numel() * 4 / MiB}


def measure_in_subprocess(kind: str, n: int, args) -> dict:
    cmd = [sys.executable, __file__, "--worker", kind, "--n", str(n), "--device", args.device, "--batch",
           str(args.batch), "--steps", str(args.steps), "--threads", str(args.threads)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"{kind} at N={n} failed: {tail[0]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def compare(args) -> dict:
    runs: dict[str, dict[int, list[dict]]] = {k: {n: [] for n in args.sizes} for k in PRESETS}
    for _ in range(args.repeats):  # interleaved, so load spikes hit every kind and size alike
        for n in args.sizes:
            for kind in PRESETS:
                if args.device == "cuda":
                    runs[kind][n].append(measure(kind, n, args))
                    torch.cuda.empty_cache()
                else:
                    runs[kind][n].append(measure_in_subprocess(kind, n, args))
    results: dict[str, dict] = {}
    for kind, by_size in runs.items():
        results[kind] = {}
        for n, rows in by_size.items():
            results[kind][str(n)] = {
                "step_seconds": min(r["step_seconds"] for r in rows),
                "encode_images_per_s": max(r["encode_images_per_s"] for r in rows),
                "peak_mb": max(r["peak_mb"] for r in rows),
                "trainable_parameters": rows[0]["trainable_parameters"],
                "codebook_mb": rows[0]["codebook_mb"],
                "all_step_seconds": [s for r in rows for s in r["all_step_seconds"]],
            }
    return results


def summary(results: dict, args) -> dict:
    lo, hi = str(min(args.sizes)), str(max(args.sizes))
    tag = f"{_short(int(hi))}_over_{_short(int(lo))}"
    report = {"device": args.device, "threads": args.threads if args.device == "cpu" else None, "batch": args.batch,
              "image_size": 128, "presets": PRESETS, "sizes": list(args.sizes), "timed_steps": args.steps,
              "repeats": args.repeats}
    for kind in PRESETS:
        r = results[kind]
        report[f"{kind}_step_time_ratio_{tag}"] = r[hi]["step_seconds"] / r[lo]["step_seconds"]
        report[f"{kind}_encode_throughput_ratio_{tag}"] = r[hi]["encode_images_per_s"] / r[lo]["encode_images_per_s"]
        report[f"{kind}_peak_mb_by_size"] = {n: round(row["peak_mb"], 1) for n, row in r.items()}
    report["results"] = results
    return report


def _short(n: int) -> str:
    """1,000,000 -> "1m", 100,000 -> "100k", 16,384 -> "16k", 1,024 -> "1k" (binary sizes read as k)."""
    if n % 1_000_000 == 0:
        return f"{n // 1_000_000}m"
    if n % 1_000 == 0:
        return f"{n // 1_000}k"
    if n % 1_024 == 0:
        return f"{n // 1_024}k"
    return str(n)


def print_table(report: dict) -> None:
    print(f"device={report['device']}  threads={report['threads']}  batch={report['batch']} at 128 px  "
          f"timed steps={report['timed_steps']} x {report['repeats']} processes (best kept)")
    print(f"{'N':>10} {'kind':>6} {'step s':>8} {'encode img/s':>13} {'peak MB':>9} {'codebook MB':>12} "
          f"{'trainable params':>17}")
    for n in report["sizes"]:
        for kind in PRESETS:
            r = report["results"][kind][str(n)]
            print(f"{n:>10,} {kind:>6} {r['step_seconds']:>8.3f} {r['encode_images_per_s']:>13.1f} "
                  f"{r['peak_mb']:>9,.0f} {r['codebook_mb']:>12,.1f} {r['trainable_parameters']:>17,}")
    for key, value in report.items():
        if "ratio" in key:
            print(f"{key} = {value:.3f}")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=3, help="timed training steps (and encode calls) per process")
    p.add_argument("--repeats", type=int, default=2, help="fresh processes per measurement (best kept)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--worker", choices=tuple(PRESETS), help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if len(args.sizes) < 2 or min(args.sizes) < 2 or min(args.batch, args.steps, args.repeats, args.threads) < 1:
        p.error("need at least two sizes >= 2, and batch, steps, repeats and threads >= 1")
    args.sizes = sorted(set(args.sizes))
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.worker:
        print(json.dumps(measure(args.worker, args.n, args)))
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
