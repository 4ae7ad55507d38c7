"""A stand-in for the FID Inception network (whose weights the tests do not have)."""
import torch


class TinyInception(torch.nn.Module):
    """Colour statistics of 8-bit images as "pool" (12-d) and "spatial" (27-d) features, and 5
    "logits": cheap, deterministic, and different for different images."""

    dim = 12
    feature_dims = {"pool": 12, "spatial": 27, "logits": 5}

    def __init__(self, weights=None, resize="tf1"):
        super().__init__()

    def features(self, images255):
        x = images255.float() / 127.5 - 1
        pool = torch.nn.functional.adaptive_avg_pool2d(x, 2).flatten(1) * torch.linspace(0.5, 1.5, 12)
        spatial = torch.nn.functional.adaptive_avg_pool2d(x, 3).flatten(1)
        return {"pool": pool, "spatial": spatial, "logits": 4 * pool[:, :5]}
