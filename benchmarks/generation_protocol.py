"""The generation protocol's throughput and memory: `sample` and `eval-gen` at batch sizes 16..256.

    python benchmarks/generation_protocol.py [--json] [--device cpu|cuda|auto] [--quick]

Setup (in a temporary folder): the `vqgan-lc-tiny` tokenizer (64 px, f8: 8x8 tokens, 16,384
entries; random weights: throughput does not depend on the values), token and latent caches of
16 synthetic images in 4 classes, and gpt-tiny and dit-tiny trained for one step, so each run
folder is a finished pipeline folder.

Each measurement runs `vqgan-lc sample` in its own process (peak RSS is per process):
- `sample`: samples/s and peak RSS for gpt-tiny (top-k 10%, no guidance) and dit-tiny (DDIM,
  `--dit-steps` steps, guidance 4) at each batch size, `--samples-per-batch` batches each.
- `eval-gen`: images/s of `eval-gen` (FD-lite0 and class consistency with its classifier
  trained once beforehand; no FID) on the gpt samples, at each batch size, process start and
  model loading included.
`sample` rates count the sampling loop alone (report.json's `seconds`), not process start
and loading.
- `peak_memory_ratio_10x`: peak RSS of sampling 10x more images / peak RSS for 1x (gpt-tiny,
  PNG + npz, batch 32). Streaming keeps it near 1 (target <= 1.1): each chunk is decoded,
  written and dropped.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

BATCHES = (16, 32, 64, 128, 256)


def _setup(root: Path, device: str) -> dict:
    import numpy as np
    import torch
    from PIL import Image

    from vqgan_lc.generate.cache import CacheConfig, build_cache
    from vqgan_lc.generate.training import generator_config, train_generator
    from vqgan_lc.tokenizer.config import get_preset
    from vqgan_lc.tokenizer.model import VQModel

    torch.manual_seed(0)
    config = get_preset("vqgan-lc-tiny")
    VQModel(config, torch.randn(config.quantizer.codebook_size, config.quantizer.codebook_dim)).save_pretrained(
        root / "tok")
    rng = np.random.default_rng(0)
    for c in range(4):
        (root / "data" / f"class{c}").mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(root / "data" / f"class{c}" / f"{i}.png")
    runs = {}
    for kind, preset in (("tokens", "gpt-tiny"), ("latents", "dit-tiny")):
        build_cache(CacheConfig(tokenizer=str(root / "tok"), data=str(root / "data"), out=str(root / kind), kind=kind,
                                workers=0, progress=False, device=device))
        run = root / preset
        train_generator(generator_config(preset, str(root / kind), str(run), ["max_steps=1", "batch_size=4",
                                                                             f"device={device}"]), progress=False)
        runs[preset] = str(run)
    return runs


def _worker(args) -> dict:
    """One measurement in this process: prints its result as JSON."""
    import torch
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    if args.worker == "sample":
        from vqgan_lc.generate.sample import SampleConfig, sample_run
        extra = json.loads(args.extra)
        report = sample_run(SampleConfig(run=args.run, out=args.out, classes=(0,), per_class=args.n,
                                         batch_size=args.batch, device=args.device, progress=False, **extra))
        count, busy = report["num_samples"], report["seconds"]  # the sampling loop, loading excluded
    else:
        from vqgan_lc.evaluate.generation import GenEvalConfig, evaluate_samples
        report = evaluate_samples(GenEvalConfig(samples=args.run, reference=args.reference, out=args.out, fid="off",
                                                batch_size=args.batch, workers=0, device=args.device, progress=False,
                                                fd_image_size=64, cache_dir=args.cache_dir))
        count, busy = report["num_samples"], None
    seconds = time.perf_counter() - started
    busy = busy or seconds
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"count": count, "seconds_total": seconds, "seconds_measured": busy, "per_second": count / busy,
            "peak_rss_mb": peak_kb / 1024}


def _run_worker(kind: str, args, **kw) -> dict:
    command = [sys.executable, __file__, "--worker", kind, "--device", args.device, "--threads", str(args.threads)]
    for key, value in kw.items():
        command += [f"--{key.replace('_', '-')}", str(value)]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if done.returncode != 0:
        raise RuntimeError(f"{kind} worker failed: {done.stderr.strip().splitlines()[-1] if done.stderr else ''}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(args) -> dict:
    batches = BATCHES[:2] if args.quick else BATCHES
    per_batch = 1 if args.quick else args.samples_per_batch
    result: dict = {"device": args.device, "threads": args.threads, "tokenizer": "vqgan-lc-tiny (64 px, 8x8 tokens, "
                    "16,384 entries)", "dit_sampler": f"ddim {args.dit_steps} steps, guidance 4",
                    "gpt_sampler": "top-k 10%, temperature 1, no guidance", "sample": {}, "eval_gen": {}}
    with tempfile.TemporaryDirectory(prefix="vqgan-lc-bench-") as folder:
        root = Path(folder)
        runs = _setup(root, args.device)
        settings = {"gpt-tiny": {}, "dit-tiny": {"method": "ddim", "steps": args.dit_steps, "cfg_scale": 4.0}}
        for preset, run in runs.items():
            rows = {}
            for batch in batches:
                out = root / "samples" / f"{preset}-{batch}"
                rows[str(batch)] = _run_worker("sample", args, run=run, out=out, n=batch * per_batch, batch=batch,
                                               extra=json.dumps(settings[preset]))
            result["sample"][preset] = rows
        samples = root / "samples" / f"gpt-tiny-{batches[-1]}"
        # a first evaluation trains and caches the class-consistency classifier, so that the
        # timed ones below measure evaluation alone
        _run_worker("eval", args, run=samples, reference=root / "data", out=root / "eval" / "warm", batch=32,
                    cache_dir=root / "cache")
        for batch in batches:
            result["eval_gen"][str(batch)] = _run_worker("eval", args, run=samples, reference=root / "data",
                                                         out=root / "eval" / str(batch), batch=batch,
                                                         cache_dir=root / "cache")
        small = args.memory_samples // (2 if args.quick else 1)
        one = _run_worker("sample", args, run=runs["gpt-tiny"], out=root / "mem1", n=small, batch=32,
                          extra=json.dumps({"npz": True}))
        ten = _run_worker("sample", args, run=runs["gpt-tiny"], out=root / "mem10", n=10 * small, batch=32,
                          extra=json.dumps({"npz": True}))
        result.update({"memory_samples_1x": small, "peak_rss_mb_1x": one["peak_rss_mb"],
                       "peak_rss_mb_10x": ten["peak_rss_mb"],
                       "peak_memory_ratio_10x": ten["peak_rss_mb"] / one["peak_rss_mb"],
                       "peak_memory_ratio_10x_target": 1.1})
    return result


def _table(result: dict) -> str:
    lines = [f"device {result['device']}, {result['threads']} thread(s); {result['tokenizer']}"]
    for preset, rows in result["sample"].items():
        lines.append(f"sample {preset}: " + ", ".join(f"batch {b}: {r['per_second']:.1f} samples/s "
                                                        f"({r['peak_rss_mb']:.0f} MB)" for b, r in rows.items()))
    lines.append("eval-gen: " + ", ".join(f"batch {b}: {r['per_second']:.1f} images/s" for b, r in result["eval_gen"].items()))
    lines.append(f"peak RSS {result['memory_samples_1x']} samples {result['peak_rss_mb_1x']:.0f} MB, 10x "
                 f"{result['peak_rss_mb_10x']:.0f} MB: peak_memory_ratio_10x {result['peak_memory_ratio_10x']:.3f} "
                 f"(target <= {result['peak_memory_ratio_10x_target']})")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="two batch sizes, one batch each, half the memory samples")
    p.add_argument("--samples-per-batch", type=int, default=2)
    p.add_argument("--dit-steps", type=int, default=10)
    p.add_argument("--memory-samples", type=int, default=64)
    for hidden in ("worker", "run", "out", "n", "batch", "extra", "reference", "cache-dir"):
        p.add_argument(f"--{hidden}", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        args.n = int(args.n) if args.n is not None else None
        args.batch = int(args.batch)
        print(json.dumps(_worker(args)))
        return
    from vqgan_lc.distributed import resolve_device
    args.device = str(resolve_device(args.device))
    result = measure(args)
    print(json.dumps(result, indent=2) if args.json else _table(result))


if __name__ == "__main__":
    main()
