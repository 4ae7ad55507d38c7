"""Every generator reports the device and dtype its weights live on (`PretrainedModel.device/.dtype`)."""
import pytest
import torch

from vqgan_lc.generate.dit import DiT, dit_config
from vqgan_lc.generate.gpt import GPT, gpt_config
from vqgan_lc.generate.unet import UNet, unet_config


def _gpt():
    return GPT(gpt_config("gpt-tiny", vocab_size=32, num_classes=3, block_size=16, n_layer=1)), \
        lambda dtype: (torch.randint(0, 32, (2, 15)), torch.tensor([0, 2]))


def _dit():
    return DiT(dit_config("dit-tiny", in_channels=4, input_size=8, num_classes=3, depth=1)), \
        lambda dtype: (torch.randn(2, 4, 8, 8, dtype=dtype), torch.tensor([3.0, 500.0], dtype=dtype),
                       torch.tensor([0, 2]))


def _unet():
    return UNet(unet_config("ldm-tiny", in_channels=4, input_size=8, num_classes=3)), \
        lambda dtype: (torch.randn(2, 4, 8, 8, dtype=dtype), torch.tensor([3.0, 500.0], dtype=dtype),
                       torch.tensor([0, 2]))


@pytest.mark.parametrize("build", [_gpt, _dit, _unet], ids=["gpt", "dit", "ldm"])
def test_generators_report_device_and_dtype_after_to(build):
    torch.manual_seed(0)
    model, inputs = build()
    assert model.dtype == torch.float32 and model.device == torch.device("cpu")
    model = model.to(torch.float64).eval()
    assert model.dtype == torch.float64 and model.device.type == "cpu"
    assert all(p.dtype == torch.float64 for p in model.parameters())
    with torch.no_grad():
        out = model(*inputs(model.dtype))
    assert out.dtype == torch.float64
