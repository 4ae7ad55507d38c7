"""Usage counts equal a brute-force count; statistics match hand computations; DDP sums."""
from __future__ import annotations

import math
import socket
from collections import Counter

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vqgan_lc.quantize.usage import UsageAccumulator, code_counts, usage_stats


def test_code_counts_equal_a_brute_force_count():
    gen = torch.Generator().manual_seed(0)
    indices = torch.randint(0, 50, (4, 7, 9), generator=gen)
    counts = code_counts(indices, 60)
    expected = Counter(indices.flatten().tolist())
    assert counts.dtype == torch.int64 and counts.shape == (60,)
    assert counts.tolist() == [expected.get(code, 0) for code in range(60)]


def test_code_counts_accepts_int32_and_empty_input():
    assert code_counts(torch.tensor([2, 2, 0], dtype=torch.int32), 4).tolist() == [1, 0, 2, 0]
    assert code_counts(torch.empty(0, dtype=torch.int64), 3).tolist() == [0, 0, 0]


@pytest.mark.parametrize(
    "indices,codebook_size,message",
    [
        (torch.tensor([0, 5]), 5, r"\[0, 5\), got index 5"),
        (torch.tensor([-1, 2]), 5, "negative index"),
        (torch.tensor([0.0, 1.0]), 5, "integer tensor"),
        (torch.tensor([0, 1]), 0, "codebook_size must be >= 1"),
    ],
)
def test_code_counts_rejects_bad_input_in_one_line(indices, codebook_size, message):
    with pytest.raises(ValueError, match=message) as info:
        code_counts(indices, codebook_size)
    assert "\n" not in str(info.value)


def test_usage_stats_on_hand_made_counts():
    half_used = usage_stats(torch.tensor([2, 2, 0, 0]))
    assert half_used == pytest.approx({
        "utilization": 0.5, "perplexity": 2.0, "normalized_entropy": 0.5,
        "num_tokens": 4, "num_used": 2, "codebook_size": 4, "top1_share": 0.5,
    })
    uniform = usage_stats(torch.full((8,), 3))
    assert uniform["utilization"] == 1.0
    assert uniform["perplexity"] == pytest.approx(8.0)
    assert uniform["normalized_entropy"] == pytest.approx(1.0)
    skewed = usage_stats(torch.tensor([1, 1, 2, 0]))  # p = 1/4, 1/4, 1/2
    entropy = 1.5 * math.log(2)
    assert skewed["perplexity"] == pytest.approx(math.exp(entropy))
    assert skewed["normalized_entropy"] == pytest.approx(entropy / math.log(4))
    assert skewed["num_tokens"] == 4 and skewed["num_used"] == 3
    assert skewed["top1_share"] == 0.5  # the single most used entry (1% of 4 rounds up to one) holds 2 of 4
    skewed_200 = usage_stats(torch.tensor([50, 50] + [1] * 198))  # 1% of 200 entries = the top 2: 100 of 298
    assert skewed_200["top1_share"] == pytest.approx(100 / 298)


def test_usage_stats_edge_cases():
    nothing = usage_stats(torch.zeros(5, dtype=torch.int64))
    assert nothing["utilization"] == 0 and nothing["perplexity"] == 0 and nothing["num_tokens"] == 0
    single = usage_stats(torch.tensor([7]))
    assert single["utilization"] == 1.0 and single["perplexity"] == pytest.approx(1.0)
    assert single["normalized_entropy"] == 0.0
    with pytest.raises(ValueError, match="non-negative"):
        usage_stats(torch.tensor([1, -1]))
    with pytest.raises(ValueError, match="1-D"):
        usage_stats(torch.ones(2, 2))


def test_accumulator_sums_batches_and_resets():
    acc = UsageAccumulator(10)
    acc.update(torch.tensor([[1, 2], [2, 3]]))
    acc.update(torch.tensor([3, 3, 9]))
    assert acc.counts.tolist() == [0, 1, 2, 3, 0, 0, 0, 0, 0, 1]
    stats = acc.stats()
    assert stats["num_tokens"] == 7 and stats["num_used"] == 4 and stats["utilization"] == 0.4
    acc.all_reduce()  # no process group: nothing changes
    assert acc.counts.sum() == 7
    acc.reset()
    assert acc.counts.sum() == 0 and acc.counts.dtype == torch.int64


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ddp_worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        acc = UsageAccumulator(6)
        acc.update(torch.tensor([0, 1, 1]) if rank == 0 else torch.tensor([[1, 5], [5, 5]]))
        acc.all_reduce()
        torch.save(acc.counts, f"{out_dir}/counts_{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_accumulator_all_reduce_sums_across_two_gloo_processes(tmp_path):
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    expected = [1, 3, 0, 0, 0, 3]  # rank 0: 0,1,1 ; rank 1: 1,5,5,5
    for rank in range(2):
        assert torch.load(tmp_path / f"counts_{rank}.pt").tolist() == expected


def test_all_reduce_is_one_collective_when_a_group_exists(monkeypatch):
    calls = []
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_backend", lambda: "gloo")
    monkeypatch.setattr(dist, "all_reduce", lambda tensor, op=None: calls.append((tensor, op)))
    acc = UsageAccumulator(4)
    acc.update(torch.tensor([1, 1, 3]))
    acc.all_reduce()
    assert len(calls) == 1 and calls[0][0] is acc.counts and calls[0][1] == dist.ReduceOp.SUM
