"""`vqgan-lc demo`: the whole method on bundled real images, offline, in minutes on a CPU."""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("demo", help="build a codebook, train VQGAN-LC and VQGAN on bundled photos, compare")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--quick", action="store_true", help="a reduced run (well under a minute) for smoke tests")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..demo import DemoConfig, run_demo
    from .common import writable_out

    config = DemoConfig.quick() if args.quick else DemoConfig()
    config.out_dir = args.out
    writable_out(args.out)
    run_demo(config)
    return 0
