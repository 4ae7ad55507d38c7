"""Test-suite settings: one intra-op thread per test process.

The suite runs as two pytest-xdist workers on two cores; letting each also spawn a thread per
core oversubscribes the CPU and slows small kernels down by an order of magnitude.
"""
import torch

torch.set_num_threads(1)


import os  # noqa: E402
import socket  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture
def run_ranks():
    """`run_ranks(worker, *args, world=2)`: run a module-level `worker(rank, *args)` in `world` spawned
    processes joined by gloo on a free local port, and check every one exited cleanly."""
    import torch.multiprocessing as mp
    from spawned_rank import rank_main

    def run(worker, *args, world: int = 2) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        ctx = mp.get_context("spawn")
        procs = [ctx.Process(target=rank_main, args=(r, world, port, worker, args)) for r in range(world)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=300)
            assert p.exitcode == 0
    return run


def build_tiny_tokenizer(folder=None, *, resolution: int = 32, ch_mult: tuple[int, ...] = (1, 2, 2),
                         codebook_size: int = 32, codebook_dim: int = 16, seed: int = 0):
    """A seeded, untrained LC tokenizer small enough for any test (8 channels, one block per level,
    D'=4), saved with `save_pretrained` into `folder` when one is given."""
    from vqgan_lc.quantize import QuantizerConfig
    from vqgan_lc.tokenizer.config import AutoencoderConfig, TokenizerConfig
    from vqgan_lc.tokenizer.model import VQModel

    torch.manual_seed(seed)
    ae = AutoencoderConfig(resolution=resolution, ch=8, ch_mult=ch_mult, num_res_blocks=1, attn_resolutions=(),
                           z_channels=8, norm_groups=4)
    model = VQModel(TokenizerConfig(ae, QuantizerConfig(kind="lc", codebook_size=codebook_size, dim=4,
                                                        codebook_dim=codebook_dim)))
    if folder is not None:
        model.save_pretrained(folder)
    return model


def save_tiny_tokenizer(folder, codebook_size: int = 16):
    """A random 32 px LC tokenizer (f4, D'=4) saved into `folder`; returns the folder."""
    build_tiny_tokenizer(folder, codebook_size=codebook_size, codebook_dim=8)
    return folder


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """`tiny_tokenizer(folder=None, resolution=32, ch_mult=(1, 2, 2), codebook_size=32, codebook_dim=16)`:
    `build_tiny_tokenizer` as a fixture."""
    return build_tiny_tokenizer


@pytest.fixture(scope="session")
def tiny_generator_run(tmp_path_factory):
    """A tiny tokenizer, photos in two named class folders, their latent cache, a 2-step dit run
    (with its EMA) and 2 samples from it: one of every folder kind the library writes for generation."""
    import numpy as np
    from PIL import Image

    from vqgan_lc.cli import main

    root = tmp_path_factory.mktemp("tiny-generation")
    save_tiny_tokenizer(root / "tokenizer")
    rng = np.random.default_rng(0)
    for name in ("cat", "dog"):
        (root / "images" / name).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / "images" / name / f"{i}.png")
    assert main(["cache", "latents", str(root / "tokenizer"), "--data", str(root / "images"), "--out",
                 str(root / "latents"), "--workers", "0"]) == 0
    assert main(["train-gen", "dit-tiny", "--cache", str(root / "latents"), "--out", str(root / "run"), "--set",
                 "model.depth=1", "model.hidden_size=16", "model.num_heads=2", "max_steps=2", "batch_size=2",
                 "device=cpu"]) == 0
    assert main(["sample", str(root / "run"), "--out", str(root / "samples"), "--per-class", "1", "--method", "ddim",
                 "--steps", "2", "--device", "cpu"]) == 0
    return root


@pytest.fixture(scope="session")
def mounted_tmpfs():
    """`with mounted_tmpfs(folder, "ro,size=64k"):` a tmpfs mounted on `folder` for the block (a
    read-only or a tiny file system: what even root cannot write); the test is skipped where
    mounting is not permitted."""
    import contextlib
    import subprocess

    @contextlib.contextmanager
    def mount(folder, options: str):
        try:
            done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
        except OSError as err:  # no mount program
            pytest.skip(f"cannot mount here: {err}")
        if done.returncode != 0:
            pytest.skip(f"mounting a tmpfs ({options}) is not permitted here: {done.stderr.decode().strip()}")
        try:
            yield folder
        finally:
            subprocess.run(["umount", str(folder)], check=False)
    return mount


@pytest.fixture(scope="session")
def write_images():
    """`write_images(folder, classes=("a", "b"), per_class=3, size=(32, 32), seed=0)`: random RGB PNGs
    in one sub-folder per class (size is (height, width)); returns the folder."""
    def write(folder, classes=("a", "b"), per_class: int = 3, size=(32, 32), seed: int = 0):
        import numpy as np
        from PIL import Image

        rng = np.random.default_rng(seed)
        for name in classes:
            os.makedirs(os.path.join(folder, name), exist_ok=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(os.path.join(folder, name, f"{i}.png"))
        return folder
    return write
