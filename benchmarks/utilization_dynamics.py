"""How the LC tokenizer's latent cloud and projected codebook move during a short CPU run.

    python benchmarks/utilization_dynamics.py --codebook runs/demo/codebook.safetensors
    python benchmarks/utilization_dynamics.py --codebook ... --quantizer-lr-scale 10
    python benchmarks/utilization_dynamics.py --codebook ... --projector-init moments [--refit-projector]

Trains `vqgan-lc-tiny` with the demo's losses on the demo photos and, every `--every` steps,
measures over fixed training-region and held-out crops: utilization, the share of tokens on
the 1% most used entries, the total variance of the latents and of the projected codebook,
and the share of projected entries inside the latents' 99% ellipsoid. docs/utilization.md
reads these numbers. Prints one JSON line per measurement (`--json` for one document).
"""
from __future__ import annotations

import argparse
import json
import math

import torch
from einops import rearrange
from torch.utils.data import DataLoader

from vqgan_lc.data import collate_skip_corrupt
from vqgan_lc.data.demo import DemoCrops
from vqgan_lc.quantize.search import nearest_codes
from vqgan_lc.quantize.usage import code_counts, usage_stats
from vqgan_lc.tokenizer.losses import LossConfig, TokenizerLoss
from vqgan_lc.tokenizer.model import VQModel

CHI2_99_8D = 20.09  # chi-square 99% point, 8 degrees of freedom (D' of the tiny preset)


def latents_of(model: VQModel, crops) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([rearrange(model.encode_latents(b["image"]), "b d h w -> (b h w) d")
                          for b in DataLoader(crops, batch_size=128, collate_fn=collate_skip_corrupt)])


def mean_and_cov(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.double()
    return x.mean(0), torch.cov(x.T)


@torch.no_grad()
def match_projector_to(model: VQModel, z: torch.Tensor) -> None:
    """Set the linear projector so the projected codebook has z's mean and covariance: the
    codebook's top-D' principal directions, whitened, then mapped by z's Cholesky factor."""
    q = model.quantizer
    codebook = q.codebook.double()
    centre = codebook.mean(0)
    _, s, vh = torch.linalg.svd(codebook - centre, full_matrices=False)
    d = q.config.dim
    whiten = vh[:d].T / (s[:d] / math.sqrt(codebook.shape[0] - 1))
    mu, cov = mean_and_cov(z)
    weight = whiten @ torch.linalg.cholesky(cov + 1e-6 * torch.eye(d, dtype=cov.dtype)).T
    q.projector.weight.copy_(weight.T.float())
    q.projector.bias.copy_((mu - centre @ weight).float())


@torch.no_grad()
def cloud_stats(model: VQModel, z: torch.Tensor) -> dict:
    entries = model.quantizer.latent_codebook()
    indices, _ = nearest_codes(z, entries)
    usage = usage_stats(code_counts(indices, entries.shape[0]))
    mu, cov = mean_and_cov(z)
    offset = entries.double() - mu
    mahalanobis = (offset * torch.linalg.solve(cov, offset.T).T).sum(1)
    return {"utilization": round(usage["utilization"], 4), "top1_share": round(usage["top1_share"], 4),
            "latent_total_variance": round(float(cov.trace()), 4),
            "codebook_total_variance": round(float(mean_and_cov(entries)[1].trace()), 4),
            "entries_inside_latent_99": round(float((mahalanobis < CHI2_99_8D).double().mean()), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--codebook", required=True, help="a 112-d Lite0 codebook file (make demo writes one)")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--quantizer-lr-scale", type=float, default=1.0)
    parser.add_argument("--projector-init", choices=("random", "moments"), default="random")
    parser.add_argument("--refit-projector", action="store_true", help="match the projector to every batch (diagnostic)")
    parser.add_argument("--window-crops", type=int, default=512, help="fixed crops per measurement window")
    parser.add_argument("--final-tokens-per-entry", type=int, default=0, help="a last measurement at this window")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = VQModel.from_preset("vqgan-lc-tiny", args.codebook)
    loss = TokenizerLoss(LossConfig(disc_start=10**9))
    windows = {split: DemoCrops(64, args.window_crops, split=split, seed=123, train=False)
               for split in ("train", "eval")}
    if args.projector_init == "moments":
        match_projector_to(model, latents_of(model, windows["train"]))
    projector = list(model.quantizer.projector.parameters())
    chosen = {id(p) for p in projector}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in chosen]
    optimizer = torch.optim.Adam([{"params": rest}, {"params": projector, "lr": args.lr * args.quantizer_lr_scale}],
                                 lr=args.lr, betas=(0.5, 0.9))
    rows = []

    def measure(step: int, crops: dict, l1: float | None = None) -> None:
        model.eval()
        row = {"step": step, "tokens_per_entry": round(len(crops["train"]) * 64 / model.num_codes, 2), "l1": l1}
        for split, data in crops.items():
            row[split] = cloud_stats(model, latents_of(model, data))
        model.train()
        rows.append(row)
        if not args.json:
            print(json.dumps(row), flush=True)

    measure(0, windows)
    data, step, epoch, l1 = DemoCrops(64, 2048, split="train", seed=0), 0, 0, None
    while step < args.steps:
        data.set_epoch(epoch)
        order = torch.Generator().manual_seed(epoch)
        epoch += 1
        for batch in DataLoader(data, batch_size=16, shuffle=True, generator=order, drop_last=True,
                                collate_fn=collate_skip_corrupt):
            if args.refit_projector:
                with torch.no_grad():
                    batch_latents = rearrange(model.encode_latents(batch["image"]), "b d h w -> (b h w) d")
                match_projector_to(model, batch_latents)
            out = model(batch["image"])
            total, logs = loss.generator_loss(batch["image"], out.reconstruction, out.quantizer.loss, step=step,
                                              last_layer=model.last_layer)
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
            step, l1 = step + 1, round(float(logs["rec"]), 4)
            if step % args.every == 0 or step == args.steps:
                measure(step, windows, l1)
            if step >= args.steps:
                break
    if args.final_tokens_per_entry:
        n = -(-args.final_tokens_per_entry * model.num_codes // 64)
        measure(step, {"train": DemoCrops(64, n, split="train", seed=7, train=False),
                       "eval": DemoCrops(64, n, split="eval", seed=0, train=False)}, l1)
    if args.json:
        print(json.dumps({"args": vars(args), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
