"""EMA statistics are all-reduced: two ranks with different data keep one identical codebook,
equal to a single process that saw both ranks' data."""
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vqgan_lc.quantize import QuantizerConfig, build_quantizer

CFG = dict(kind="ema", codebook_size=16, dim=3, ema_decay=0.8)


def _data(rank):
    return torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(100 + rank))


def _worker(rank, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.manual_seed(0)
    q = build_quantizer(QuantizerConfig(**CFG)).train()
    for _ in range(3):
        q(_data(rank))
    torch.save(q.embed, os.path.join(out, f"embed{rank}.pt"))
    dist.destroy_process_group()


def test_ema_codebook_identical_across_ranks_and_equal_to_pooled_update(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_worker, args=(port, str(tmp_path)), nprocs=2, start_method="spawn")
    e0, e1 = (torch.load(tmp_path / f"embed{r}.pt") for r in range(2))
    assert torch.equal(e0, e1)
    # one process updating on both ranks' latents at once (same searches, since codebooks agree)
    torch.manual_seed(0)
    q = build_quantizer(QuantizerConfig(**CFG)).train()
    for _ in range(3):
        z = [q.normalize(_data(r).permute(0, 2, 3, 1).reshape(-1, 3)) for r in range(2)]
        idx = [q.search(x) for x in z]
        q.update_codebook(torch.cat(z), torch.cat(idx))
    torch.testing.assert_close(e0, q.embed, rtol=1e-5, atol=1e-6)
