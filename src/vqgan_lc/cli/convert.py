"""`vqgan-lc convert`: the paper's released checkpoints as model folders of this package."""
from __future__ import annotations

from . import common

KINDS = ("reference-gpt", "reference-dit", "reference-sit", "reference-ldm")


def register(sub) -> None:
    p = sub.add_parser("convert", help="convert a released GPT-LC / DiT-LC / SiT-LC / LDM-LC checkpoint into a "
                       "folder (generator/, tokenizer/, process.json with the reference sampling protocol)")
    p.add_argument("kind", choices=KINDS, help="which released generator the file holds")
    p.add_argument("checkpoint", help="the released .pth file")
    p.add_argument("--out", required=True, help="new folder (nothing in it is overwritten)")
    p.add_argument("--tokenizer", help="tokenizer folder or the released VQGAN-LC .pth; replaces one the checkpoint "
                   "carries (DiT-LC and SiT-LC carry none)")
    p.add_argument("--config", help="ldm: the reference yaml (ldm-lc/configs/imagenet-f16|f8-vqgan-lc-100K.yaml); "
                   "without it the architecture is read from the weights")
    p.add_argument("--num-heads", type=common.positive_int, help="attention heads (not in the weights; default: the "
                   "reference's, 16 for GPT-LC and for DiT/SiT-XL)")
    p.set_defaults(func=convert)


def convert(args) -> int:
    from ..generate.reference import convert_reference

    common.writable_out(args.out, "output folder")
    process = convert_reference(args.kind.split("-", 1)[1], args.checkpoint, args.out, tokenizer=args.tokenizer,
                                config=args.config, num_heads=args.num_heads)
    sampling = process["sampling"]
    print(f"{args.kind} -> {args.out}/generator ({process['source']['weights'].split(' ')[0]} weights)"
          f"{', tokenizer/' if process['tokenizer'] else ' (no tokenizer: pass --tokenizer to decode)'}; "
          f"reference protocol in {args.out}/process.json: {sampling['sampler']}"
          f"{'' if sampling['steps'] is None else ' ' + str(sampling['steps'])} steps, "
          f"guidance {sampling['guidance_scale']}")
    return 0
