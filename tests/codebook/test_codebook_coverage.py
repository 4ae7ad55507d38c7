"""The feature-space ceiling: backbone features assigned straight to the codebook's entries."""
import pytest
import torch
from torch import nn

from vqgan_lc.codebook.coverage import feature_ceiling


class PatchMean(nn.Module):
    """A stand-in backbone: the mean colour of each 8x8 patch (3 channels, stride 8)."""

    def forward(self, images):
        return nn.functional.avg_pool2d(images, 8)


def _solid_images(colours):
    # one 16x16 image per colour: 2x2 patches, all with that colour
    return torch.stack([torch.tensor(c, dtype=torch.float32).view(3, 1, 1).expand(3, 16, 16) for c in colours])


def test_ceiling_counts_entries_the_features_reach_and_skew():
    colours = [(-0.5, 0.0, 0.5), (0.5, 0.5, -0.5), (0.0, -0.5, 0.0)]
    reached = torch.tensor(colours)
    unreachable = torch.full((5, 3), 9.0) + torch.arange(5.0).view(5, 1)  # far from every patch colour
    codebook = torch.cat([reached, unreachable])
    images = _solid_images(colours + [colours[0]] * 3)  # colour 0 four times: 16 of its 24 vectors
    stats = feature_ceiling(codebook, images, PatchMean(), pool=None, batch_size=2)
    assert stats["num_tokens"] == 6 * 4
    assert stats["num_used"] == 3 and stats["utilization"] == pytest.approx(3 / 8)
    assert stats["top1_share"] == pytest.approx(16 / 24)  # 1% of 8 entries rounds up to the top one


def test_ceiling_refuses_a_codebook_of_another_width():
    with pytest.raises(ValueError, match="3-d features but the codebook has 4-d entries"):
        feature_ceiling(torch.zeros(4, 4), _solid_images([(0.0, 0.0, 0.0)]), PatchMean(), pool=None)
