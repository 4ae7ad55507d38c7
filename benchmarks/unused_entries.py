"""Which entries a trained tokenizer leaves unused, and where they lie in the latent space.

    python benchmarks/unused_entries.py runs/study/runs/lc-1024/tokenizer [--crops 4096] [--json]

Encodes a window of the study's held-out crops (and as many training-region crops) and, for
the latent codebook the decoder sees, splits the entries into used and unused on the
held-out window and reports for each group: the share inside the latents' 99% ellipsoid
(Mahalanobis distance under the latents' mean and covariance), the median distance to the
nearest latent, and the median distance to the nearest other entry (how crowded the entry
is). Unused entries outside the ellipsoid mean the codebook is wider than the latent cloud;
unused entries inside it but close to other entries mean the codebook is crowded where the
latents are: two different causes with two different fixes. docs/utilization.md reads these.
"""
from __future__ import annotations

import argparse
import json

import torch

from vqgan_lc.data.demo import DemoCrops
from vqgan_lc.quantize.search import nearest_codes
from vqgan_lc.quantize.usage import code_counts, usage_stats
from vqgan_lc.tokenizer.model import VQModel
from utilization_dynamics import latents_of, mean_and_cov

CHUNK = 4096  # rows of a distance block: bounded memory whatever the codebook size


@torch.no_grad()
def nearest_distance(queries: torch.Tensor, points: torch.Tensor, exclude_self: bool = False) -> torch.Tensor:
    """Distance from every query to its nearest point, in blocks (optionally ignoring the query
    itself when queries and points are the same rows)."""
    out = torch.empty(len(queries), dtype=torch.float64)
    for q0 in range(0, len(queries), CHUNK):
        block = torch.cdist(queries[q0:q0 + CHUNK].double(), points.double())
        if exclude_self:
            block[torch.arange(block.shape[0]), torch.arange(q0, q0 + block.shape[0])] = float("inf")
        out[q0:q0 + CHUNK] = block.min(dim=1).values
    return out


@torch.no_grad()
def describe(entries: torch.Tensor, z: torch.Tensor, chi2_99: float) -> dict:
    indices, _ = nearest_codes(z, entries)
    counts = code_counts(indices, len(entries))
    usage = usage_stats(counts)
    mu, cov = mean_and_cov(z)
    offset = entries.double() - mu
    inside = (offset * torch.linalg.solve(cov, offset.T).T).sum(1) < chi2_99
    to_latent = nearest_distance(entries, z)
    to_entry = nearest_distance(entries, entries, exclude_self=True)
    groups = {}
    for name, mask in (("used", counts > 0), ("unused", counts == 0)):
        if mask.any():
            groups[name] = {"entries": int(mask.sum()), "inside_latent_99": round(float(inside[mask].double().mean()), 4),
                            "median_distance_to_nearest_latent": round(float(to_latent[mask].median()), 4),
                            "median_distance_to_nearest_entry": round(float(to_entry[mask].median()), 4)}
    return {"tokens": len(z), "tokens_per_entry": round(len(z) / len(entries), 2),
            "utilization": round(usage["utilization"], 4), "perplexity": round(usage["perplexity"], 1),
            "top1_share": round(usage["top1_share"], 4), "latent_total_variance": round(float(cov.trace()), 4),
            "codebook_total_variance": round(float(mean_and_cov(entries)[1].trace()), 4), **groups}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("tokenizer", help="a trained tokenizer folder (e.g. a study's runs/<name>/tokenizer)")
    parser.add_argument("--crops", type=int, default=4096, help="crops per window (64 tokens each at 64 px)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from scipy.stats import chi2

    model = VQModel.from_pretrained(args.tokenizer).eval()
    entries = model.quantizer.search_codebook()[0]
    size = model.config.autoencoder.resolution
    report = {"tokenizer": args.tokenizer, "codebook_size": len(entries), "dim": entries.shape[1]}
    for split in ("eval", "train"):  # the study's held-out window (seed 0), then training-region crops
        crops = DemoCrops(size, args.crops, split=split, seed=0, train=False)
        z = model.quantizer.normalize(latents_of(model, crops))
        report[split] = describe(entries, z, float(chi2.ppf(0.99, entries.shape[1])))
    print(json.dumps(report, indent=1 if args.json else None))


if __name__ == "__main__":
    main()
