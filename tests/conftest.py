"""Test-suite settings: one intra-op thread per test process.

The suite runs as two pytest-xdist workers on two cores; letting each also spawn a thread per
core oversubscribes the CPU and slows small kernels down by an order of magnitude.
"""
import torch

torch.set_num_threads(1)


import os  # noqa: E402
import socket  # noqa: E402

import pytest  # noqa: E402


def _rank_main(rank: int, world: int, port: int, worker, args) -> None:
    """One spawned rank: the torchrun environment, one thread, `worker(rank, *args)`, then cleanup."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    try:
        worker(rank, *args)
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


@pytest.fixture
def run_ranks():
    """`run_ranks(worker, *args, world=2)`: run a module-level `worker(rank, *args)` in `world` spawned
    processes joined by gloo on a free local port, and check every one exited cleanly."""
    import torch.multiprocessing as mp

    def run(worker, *args, world: int = 2) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        ctx = mp.get_context("spawn")
        procs = [ctx.Process(target=_rank_main, args=(r, world, port, worker, args)) for r in range(world)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=300)
            assert p.exitcode == 0
    return run


def save_tiny_tokenizer(folder, codebook_size: int = 16):
    """A random 32 px LC tokenizer (f4, D'=4): the smallest that encodes and decodes like a real one."""
    from vqgan_lc.quantize import QuantizerConfig
    from vqgan_lc.tokenizer.config import AutoencoderConfig, TokenizerConfig
    from vqgan_lc.tokenizer.model import VQModel

    torch.manual_seed(0)
    ae = AutoencoderConfig(resolution=32, ch=8, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(),
                           z_channels=8, norm_groups=4)
    quantizer = QuantizerConfig(kind="lc", codebook_size=codebook_size, dim=4, codebook_dim=8)
    VQModel(TokenizerConfig(ae, quantizer)).save_pretrained(folder)
    return folder


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
