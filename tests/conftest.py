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
