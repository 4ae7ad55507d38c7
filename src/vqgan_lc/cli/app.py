"""`vqgan-lc app`: a local web page with the codebook atlas, token maps and sampling.

    vqgan-lc app TOKENIZER [--data DIR] [--generator RUN] [--codebook FILE] [--port 7860]
"""
from __future__ import annotations

from . import common


def register(sub) -> None:
    p = sub.add_parser("app", help="serve a local web page: tokenize images, browse the codebook's entries and "
                       "their exemplar patches, sample a generator", parents=[common.parent(common.device)])
    p.add_argument("tokenizer", help="tokenizer folder (from `vqgan-lc train`)")
    p.add_argument("--data", help="evaluation images (folder, .txt list or demo:eval:N) to pick from and count usage over")
    p.add_argument("--generator", help="generator run folder (from `vqgan-lc train-gen`) for the Generate view")
    p.add_argument("--codebook", help="the tokenizer's codebook file (default: the one its training run names)")
    p.add_argument("--max-images", type=common.positive_int, default=2000,
                   help="count usage over at most this many images of --data")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port (0: any free port)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..app import AppState, serve
    from ..distributed import resolve_device

    state = AppState(args.tokenizer, codebook=args.codebook, data=args.data, generator=args.generator,
                     device=str(resolve_device(args.device)), max_images=args.max_images)
    server = serve(state, args.host, args.port)
    print(f"vqgan-lc app: serving {args.tokenizer} on {server.url} (Ctrl+C stops it)", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0
