"""`vqgan-lc demo`: the whole method on bundled real images, offline (8.5 min on 2 CPU cores).

    vqgan-lc demo --out runs/demo                       # codebook + VQGAN-LC vs VQGAN on bundled photos
    vqgan-lc demo --generate gpt --out runs/demo-gpt    # class-conditional generation on MNIST digits
"""
from __future__ import annotations

from . import common

GENERATORS = ("gpt", "dit", "sit", "ldm")


def register(sub) -> None:
    p = sub.add_parser("demo", help="run the method end to end on bundled real images (tokenizers, or --generate)")
    p.add_argument("--out", help="output folder (default runs/demo, or runs/demo-<generators>)")
    p.add_argument("--generate", type=common.comma_names(GENERATORS, "generators"), metavar="GEN[,GEN]",
                   help="class-conditional generation on MNIST digits with gpt, dit, sit and/or ldm (comma-separated)")
    p.add_argument("--tokenizers", type=common.comma_names(("lc", "vq"), "tokenizers"), default=("lc", "vq"),
                   metavar="lc[,vq]",
                   help="with --generate: the tokenizers to generate on (default lc,vq: VQGAN-LC and the VQGAN baseline)")
    p.add_argument("--quick", action="store_true", help="a reduced run for smoke tests (measured on 2 shared CPU "
                   "cores: 40 s; with --generate gpt 3 min, most of it scoring the samples)")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.generate:
        from ..generate.demo import GenerationDemoConfig, run_generation_demo
        config = GenerationDemoConfig.quick(args.generate) if args.quick else GenerationDemoConfig(generators=args.generate)
        config.out_dir = args.out or f"runs/demo-{'-'.join(args.generate)}"
        config.tokenizers = args.tokenizers
        common.writable_out(config.out_dir)
        run_generation_demo(config)
        return 0
    from ..demo import DemoConfig, run_demo
    config = DemoConfig.quick() if args.quick else DemoConfig()
    config.out_dir = args.out or "runs/demo"
    common.writable_out(config.out_dir)
    run_demo(config)
    return 0
