"""Class-conditional GPT: KV-cache sampling speed and chunked-loss memory, side by side.

    python benchmarks/gpt.py [--json] [--device cpu|cuda|auto] [--threads 1] [--quick]

1. Sampling: gpt-tiny (vocabulary 16,384, 1,000 classes) draws `--batch` x 256 tokens with
   the KV cache and again recomputing the whole prefix every step, from the same seed; both
   score only the last position per step. Reported: tokens/s of each, their ratio
   (`kv_cache_speedup`), and how far the two runs drew the same tokens. The two paths
   differ only by float rounding (~1e-6 in the logits; tests/generate/test_gpt.py checks
   equality on small models), but a random-init model's logits are nearly uniform, so over
   thousands of draws a rounding-level tie at the top-k cut can flip one token, after which
   that row continues differently.
2. Loss memory: cross-entropy over a 100,000-entry vocabulary for 8 x 256 rows of width
   `--width`, forward + backward (gradients for hidden states and head weight), as plain
   F.cross_entropy on the full logits and as `chunked_cross_entropy` with `--loss-chunk` rows.
   Peak memory is the growth over the inputs already in place: on CPU the resident set's
   high-water mark (VmHWM, reset through /proc/self/clear_refs) in a fresh subprocess per
   variant; on CUDA torch.cuda.max_memory_allocated. Both variants include the head
   weight's gradient (vocab x width fp32), which neither can avoid.

CPU runs use `--threads` intra-op threads (default 1) for every measurement alike: a decoding
step of gpt-tiny is a chain of tiny kernels, and on a shared machine two OpenMP threads per
kernel were measured 7-10x slower per step than one (they wait on each other).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from vqgan_lc.distributed import resolve_device  # noqa: E402
from vqgan_lc.generate.gpt import GPT, chunked_cross_entropy, gpt_config  # noqa: E402

MiB = 2**20


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------- sampling

def sampling(args, device: torch.device) -> dict:
    torch.manual_seed(0)
    config = gpt_config("gpt-tiny", vocab_size=16384, num_classes=1000, block_size=args.tokens)
    model = GPT(config).to(device).eval()
    labels = torch.arange(args.batch, device=device) % config.num_classes
    model.generate(labels[:2], use_cache=True)               # warm-up: kernels, RoPE table
    result, samples = {}, {}
    for name, cached in (("cached", True), ("uncached", False)):
        generator = torch.Generator(device=device).manual_seed(1)
        _sync(device)
        start = time.perf_counter()
        samples[name] = model.generate(labels, use_cache=cached, generator=generator)
        _sync(device)
        seconds = time.perf_counter() - start
        result[f"{name}_seconds"] = seconds
        result[f"{name}_tokens_per_s"] = args.batch * args.tokens / seconds
    result["kv_cache_speedup"] = result["cached_tokens_per_s"] / result["uncached_tokens_per_s"]
    same = samples["cached"] == samples["uncached"]
    result["samples_identical"] = bool(same.all())
    # Tokens equal up to each row's first difference (a row differs from there on).
    result["matching_prefix_fraction"] = same.long().cumprod(dim=1).float().mean().item()
    return result


# --------------------------------------------------------------------------- loss memory

def _loss_inputs(args, device: torch.device):
    generator = torch.Generator(device=device).manual_seed(0)
    rows = args.loss_batch * args.tokens
    hidden = torch.randn(rows, args.width, device=device, generator=generator).requires_grad_()
    weight = (0.02 * torch.randn(args.vocab, args.width, device=device, generator=generator)).requires_grad_()
    targets = torch.randint(0, args.vocab, (rows,), device=device, generator=generator)
    return hidden, weight, targets


def _run_loss(variant: str, hidden, weight, targets, chunk: int) -> float:
    if variant == "plain":
        loss = F.cross_entropy(hidden @ weight.T, targets)
    else:
        loss = chunked_cross_entropy(hidden, weight, targets, chunk)
    loss.backward()
    return loss.item()


def _rss_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def loss_worker(args) -> None:
    """Subprocess body: one variant, CPU; prints its JSON result."""
    if args.threads:
        torch.set_num_threads(args.threads)
    hidden, weight, targets = _loss_inputs(args, torch.device("cpu"))
    Path("/proc/self/clear_refs").write_text("5")           # reset VmHWM to the current resident set
    base = _rss_bytes("VmRSS")
    loss = _run_loss(args.worker, hidden, weight, targets, args.loss_chunk)
    peak = max(0, _rss_bytes("VmHWM") - base)
    # Time a second, warm run: the first pays for page faults and thread start-up. It cannot
    # be the measured one, since memory freed by a warm-up may stay resident and hide growth.
    hidden.grad = weight.grad = None
    start = time.perf_counter()
    _run_loss(args.worker, hidden, weight, targets, args.loss_chunk)
    seconds = time.perf_counter() - start
    print(json.dumps({"peak_bytes": peak, "seconds": seconds, "loss": loss}))


def loss_memory(args, device: torch.device) -> dict:
    result = {}
    for variant in ("plain", "chunked"):
        if device.type == "cpu":
            cmd = [sys.executable, __file__, "--worker", variant, "--width", str(args.width),
                   "--vocab", str(args.vocab), "--tokens", str(args.tokens),
                   "--loss-batch", str(args.loss_batch), "--loss-chunk", str(args.loss_chunk),
                   "--threads", str(args.threads)]
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if done.returncode:
                raise RuntimeError(f"{variant} loss worker failed: {done.stderr.strip().splitlines()[-1:]}")
            row = json.loads(done.stdout.strip().splitlines()[-1])
        else:
            hidden, weight, targets = _loss_inputs(args, device)
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            start = time.perf_counter()
            loss = _run_loss(variant, hidden, weight, targets, args.loss_chunk)
            torch.cuda.synchronize(device)
            row = {"peak_bytes": torch.cuda.max_memory_allocated(device) - base,
                   "seconds": time.perf_counter() - start, "loss": loss}
            del hidden, weight, targets
            torch.cuda.empty_cache()
        result[f"{variant}_peak_mb"] = row["peak_bytes"] / MiB
        result[f"{variant}_seconds"] = row["seconds"]
        result[f"{variant}_loss"] = row["loss"]
    result["chunked_loss_memory_ratio"] = result["plain_peak_mb"] / max(result["chunked_peak_mb"], 1e-9)
    result["full_logits_mb"] = args.loss_batch * args.tokens * args.vocab * 4 / MiB
    return result


# --------------------------------------------------------------------------- main

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object at the end")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--threads", type=int, default=1, help="CPU intra-op threads (0: torch's default)")
    parser.add_argument("--quick", action="store_true", help="64 tokens per sample instead of 256 (a smoke run)")
    parser.add_argument("--tokens", type=int, default=256, help="image tokens per sample")
    parser.add_argument("--batch", type=int, default=16, help="samples drawn at once in the sampling test")
    parser.add_argument("--vocab", type=int, default=100000, help="vocabulary of the loss test")
    parser.add_argument("--width", type=int, default=512, help="hidden width of the loss test")
    parser.add_argument("--loss-batch", type=int, default=8, help="sequences in the loss test")
    parser.add_argument("--loss-chunk", type=int, default=256, help="rows of logits per chunk")
    parser.add_argument("--worker", choices=("plain", "chunked"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        loss_worker(args)
        return 0
    if args.quick:
        args.tokens = 64
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)

    samp = sampling(args, device)
    print(f"sampling gpt-tiny, {args.batch} x {args.tokens} tokens, vocab 16384:\n"
          f"  KV cache     {samp['cached_tokens_per_s']:10.1f} tokens/s ({samp['cached_seconds']:.2f} s)\n"
          f"  recompute    {samp['uncached_tokens_per_s']:10.1f} tokens/s ({samp['uncached_seconds']:.2f} s)\n"
          f"  speedup      {samp['kv_cache_speedup']:10.1f}x   same samples: {samp['samples_identical']} "
          f"(matching prefixes: {100 * samp['matching_prefix_fraction']:.1f}% of tokens)", flush=True)

    mem = loss_memory(args, device)
    print(f"loss over vocab {args.vocab}, {args.loss_batch} x {args.tokens} rows, width {args.width}, forward+backward "
          f"(full fp32 logits: {mem['full_logits_mb']:.0f} MB):\n"
          f"  F.cross_entropy          peak {mem['plain_peak_mb']:8.1f} MB  {mem['plain_seconds']:6.2f} s  "
          f"loss {mem['plain_loss']:.6f}\n"
          f"  chunked ({args.loss_chunk:5d} rows)    peak {mem['chunked_peak_mb']:8.1f} MB  "
          f"{mem['chunked_seconds']:6.2f} s  loss {mem['chunked_loss']:.6f}\n"
          f"  memory ratio {mem['chunked_loss_memory_ratio']:.1f}x", flush=True)

    if args.json:
        summary = {"device": str(device), "threads": torch.get_num_threads(), "tokens": args.tokens,
                   "batch": args.batch, "loss_vocab": args.vocab, "loss_width": args.width,
                   "loss_rows": args.loss_batch * args.tokens, "loss_chunk": args.loss_chunk, **samp, **mem}
        print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
