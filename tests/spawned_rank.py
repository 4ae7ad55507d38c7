"""The entry point of each process `run_ranks` spawns (tests/conftest.py).

It lives in its own module because a spawned process finds it by module name: a function
defined in a conftest.py would be looked up as `conftest._rank_main`, and with conftest files in
several test folders that name can point at another folder's conftest.
"""
import os

import torch


def rank_main(rank: int, world: int, port: int, worker, args) -> None:
    """One spawned rank: the torchrun environment, one thread, `worker(rank, *args)`, then cleanup."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    try:
        worker(rank, *args)
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
