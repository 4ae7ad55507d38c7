"""The one torch.distributed module every stage uses (codebook, tokenizer, generators, evaluation).

Runs launched by `torchrun` set WORLD_SIZE / RANK / LOCAL_RANK; `init()` joins the process
group (gloo on CPU, NCCL on GPU) and pins this process's GPU. Without torchrun everything
here degrades to a single process: `rank()` is 0, collectives are no-ops.

NCCL only reduces CUDA tensors and gloo only CPU ones, so `all_reduce` moves a tensor to the
backend's device for the collective and back: callers never need to know which backend runs.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

DEFAULT_TIMEOUT_MINUTES = 30


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits: its rank among world_size processes and its compute device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str = "auto") -> torch.device:
    """"auto" -> this process's GPU (LOCAL_RANK under torchrun) when CUDA is available, else the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device {name!r} is not a device name; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but this torch has no CUDA device; use --device cpu")
    return device


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def init(device: str = "auto", timeout_minutes: float = DEFAULT_TIMEOUT_MINUTES) -> DistEnv:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); a single process otherwise.

    Safe to call more than once (a second call reuses the group)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device)
    if dev.type == "cuda":
        if dev.index is None:
            dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    if world > 1 and not is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(minutes=timeout_minutes))
    return DistEnv(rank(), world_size(), local, dev)


def backend_device() -> torch.device:
    """The device a collective's tensors must live on: the current GPU for NCCL, else the CPU."""
    if is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """Reduce `tensor` over every process, in place (op: sum | max | min); a no-op alone."""
    if not is_initialized():
        return tensor
    ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}
    if op not in ops:
        raise ValueError(f"all_reduce op must be one of {sorted(ops)}, got {op!r}")
    device = backend_device()
    if tensor.device == device:
        dist.all_reduce(tensor, op=ops[op])
    else:
        moved = tensor.to(device)
        dist.all_reduce(moved, op=ops[op])
        tensor.copy_(moved.to(tensor.device))
    return tensor


def all_reduce_mean(values: dict[str, float]) -> dict[str, float]:
    """Average a dict of scalars over processes with a single collective."""
    if not is_initialized() or not values:
        return values
    keys = sorted(values)
    packed = all_reduce(torch.tensor([float(values[k]) for k in keys], dtype=torch.float64))
    return dict(zip(keys, (packed / world_size()).tolist()))


def all_true(flag: bool) -> bool:
    """True on every process only if `flag` is true on every process (also a synchronisation point)."""
    return bool(all_reduce(torch.tensor([int(flag)]), op="min").item())


def slice_of(n: int, rank_: int | None = None, world: int | None = None) -> tuple[int, int]:
    """The contiguous share [lo, hi) of n items that a rank works on (rank order = item order)."""
    rank_ = rank() if rank_ is None else rank_
    world = world_size() if world is None else world
    return n * rank_ // world, n * (rank_ + 1) // world


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def cleanup() -> None:
    if is_initialized():
        dist.destroy_process_group()


def all_reduce_gradients(params) -> None:
    """Average the gradients of `params` over processes with one flat collective (for modules
    trained outside DDP, such as the tokenizer's discriminator)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not is_initialized() or not grads:
        return
    flat = all_reduce(torch.cat([g.flatten() for g in grads])) / world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()
