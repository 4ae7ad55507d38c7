"""`vqgan-lc plot`: a run's training curves as a PNG, from the metrics.jsonl every run writes.

    vqgan-lc plot RUN [--out FILE.png] [--keys loss,lr]
"""
from __future__ import annotations


def _keys(text: str) -> tuple[str, ...]:
    return tuple(k.strip() for k in text.split(",") if k.strip())


def register(sub) -> None:
    p = sub.add_parser("plot", help="draw a training run's logged curves (losses, lr, utilization, ...) into a PNG")
    p.add_argument("run", help="run folder of `vqgan-lc train` or `train-gen` (or its metrics.jsonl)")
    p.add_argument("--out", help="PNG file to write (default: RUN/metrics.png)")
    p.add_argument("--keys", type=_keys, metavar="KEY[,KEY]",
                   help="values to draw, e.g. loss,lr or total,grad_norm (a group name draws all its members); "
                        "default: every logged value")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..train.plot import plot_metrics

    out = plot_metrics(args.run, args.out, args.keys)
    print(f"curves of {args.run} -> {out}")
    return 0
