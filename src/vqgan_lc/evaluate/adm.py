"""The generation metrics of the ADM evaluation suite, from streamed features: FID, sFID, IS, precision, recall.

The suite (guided-diffusion's `evaluations/evaluator.py`) is what DiT, SiT, LlamaGen, VAR and
most tokenizer papers report. It computes, from one Inception pass per image:
- FID: Frechet distance of the 2048-d pool features (sample vs reference mean / covariance);
- sFID: the same on the 2,023 spatial features (`mixed_6/conv`, 7 channels x 17 x 17);
- Inception Score: softmax of the 1008 logits; the samples, in their order, cut into
  consecutive splits of 5,000 (10 splits for 50,000 samples); per split exp(mean KL(p(y|x) ||
  p(y))); the mean over splits;
- improved precision / recall (Kynkaanniemi et al. 2019) with k = 3 on pool features: each
  set's manifold is the union of balls around its points whose radius is the distance to the
  point's 3rd nearest neighbour in its own set; precision = share of samples inside the
  reference manifold, recall = share of reference points inside the sample manifold.

Here nothing holds all features at once except what precision / recall need (the pool
features, 8 KB an image): moments are running sums (`RunningMoments`), the Inception Score
keeps per-split sums, and distances are computed in row x column blocks (`block` rows at a
time), so 50,000 x 50,000 distances never exist together. Under torch.distributed every sum
merges exactly across ranks, and the blocks of precision / recall are split over the ranks.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from vqgan_lc import distributed
from vqgan_lc.backbones.inception import FEATURE_DIM, NUM_LOGITS
from vqgan_lc.evaluate.frechet import RunningMoments, frechet_distance

IS_SPLIT_SIZE = 5000  # the suite's split size: 10 splits of 50,000 samples
PR_NEIGHBOURS = 3  # k of the k-NN radii, as the suite
PR_BLOCK = 10000  # rows (and columns) of one distance block, as the suite: 400 MB of float32


class InceptionScoreSums:
    """Per-split sums of the Inception Score: n, sum of p(y|x), and sum of sum_y p log p.

    A split's KL term is mean_x sum_y p log p - sum_y pbar log pbar with pbar the split's mean
    of p(y|x): exactly the suite's mean_x sum_y p (log p - log pbar), from sums that add up
    across batches and ranks. Samples fall in split `index // split_size` of their position
    in the sample order, whichever rank scored them.
    """

    def __init__(self, num_samples: int, split_size: int = IS_SPLIT_SIZE, num_classes: int = NUM_LOGITS,
                 device: torch.device | str = "cpu"):
        if num_samples < 1 or split_size < 1:
            raise ValueError(f"InceptionScoreSums: need num_samples >= 1 and split_size >= 1, got {num_samples}, {split_size}")
        self.split_size = split_size
        splits = math.ceil(num_samples / split_size)
        self.count = torch.zeros(splits, dtype=torch.float64, device=device)
        self.prob_sum = torch.zeros(splits, num_classes, dtype=torch.float64, device=device)
        self.plogp_sum = torch.zeros(splits, dtype=torch.float64, device=device)

    def update(self, logits: torch.Tensor, positions: torch.Tensor) -> None:
        """`logits` (B, classes) of the samples at `positions` (B,) in the sample order."""
        split = (positions.to(self.count.device) // self.split_size).long()
        if int(split.max()) >= self.count.numel():
            raise ValueError(f"InceptionScoreSums: sample position {int(positions.max())} beyond the "
                             f"{self.count.numel() * self.split_size} announced")
        p = torch.softmax(logits.detach().to(self.count.device, torch.float64), dim=1)
        self.count.index_add_(0, split, torch.ones_like(split, dtype=torch.float64))
        self.prob_sum.index_add_(0, split, p)
        self.plogp_sum.index_add_(0, split, torch.special.xlogy(p, p).sum(1))

    def all_reduce(self) -> None:
        for t in (self.count, self.prob_sum, self.plogp_sum):
            distributed.all_reduce(t)

    def splits(self) -> list[float]:
        """Each non-empty split's exp(KL)."""
        scores = []
        for n, prob, plogp in zip(self.count.tolist(), self.prob_sum, self.plogp_sum.tolist()):
            if n > 0:
                mean = prob / n
                scores.append(math.exp(plogp / n - float(torch.special.xlogy(mean, mean).sum())))
        return scores

    def score(self) -> float:
        scores = self.splits()
        if not scores:
            raise RuntimeError("InceptionScoreSums.score: no samples seen")
        return float(np.mean(scores))

    def state_dict(self) -> dict:
        return {"split_size": self.split_size, "count": self.count, "prob_sum": self.prob_sum, "plogp_sum": self.plogp_sum}

    def load_state_dict(self, state: dict) -> None:
        if state["split_size"] != self.split_size or state["count"].shape != self.count.shape:
            raise ValueError("InceptionScoreSums: the saved sums come from another sample count or split size")
        for key in ("count", "prob_sum", "plogp_sum"):
            getattr(self, key).copy_(state[key])


# ----------------------------------------------------------------------------- precision / recall


def _squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(n, d), (m, d) -> (n, m) squared Euclidean distances, clamped at 0, as the suite computes them."""
    return (a.square().sum(1, keepdim=True) - 2 * a @ b.T + b.square().sum(1)[None]).clamp_min_(0)


def _my_rows(n: int) -> tuple[int, int]:
    return distributed.slice_of(n)


def manifold_radii(features: torch.Tensor, k: int = PR_NEIGHBOURS, block: int = PR_BLOCK) -> torch.Tensor:
    """(N,) squared distance of every point to its k-th nearest neighbour in `features` (itself,
    at distance 0, is the 0-th), from blocks of at most block x block distances. Under
    torch.distributed each rank does its share of the rows and the result is summed."""
    n = features.shape[0]
    if n <= k:
        raise ValueError(f"precision / recall need more than k = {k} feature vectors per set, got {n}")
    radii = torch.zeros(n, dtype=torch.float32, device=features.device)
    lo, hi = _my_rows(n)
    for r0 in range(lo, hi, block):
        rows = features[r0:min(r0 + block, hi)]
        nearest = None  # the k + 1 smallest distances of each row seen so far
        for c0 in range(0, n, block):
            d = _squared_distances(rows, features[c0:c0 + block])
            if nearest is not None:
                d = torch.cat([nearest, d], dim=1)
            nearest = torch.topk(d, min(k + 1, d.shape[1]), dim=1, largest=False).values
        radii[r0:r0 + rows.shape[0]] = nearest[:, k]
    return distributed.all_reduce(radii)


def precision_recall(reference: torch.Tensor, samples: torch.Tensor, k: int = PR_NEIGHBOURS,
                     block: int = PR_BLOCK) -> tuple[float, float]:
    """Improved precision and recall of `samples` against `reference` (both (N, D) pool features).

    precision: share of samples within the k-NN ball of some reference point; recall: share
    of reference points within the k-NN ball of some sample (a point on a ball's surface is
    inside, as in the suite)."""
    reference, samples = reference.float(), samples.to(reference.device, torch.float32)
    ref_radii = manifold_radii(reference, k, block)
    sample_radii = manifold_radii(samples, k, block)
    ref_inside = torch.zeros(reference.shape[0], dtype=torch.int32, device=reference.device)
    sample_inside = torch.zeros(samples.shape[0], dtype=torch.int32, device=reference.device)
    lo, hi = _my_rows(reference.shape[0])
    for r0 in range(lo, hi, block):
        r1 = min(r0 + block, hi)
        for c0 in range(0, samples.shape[0], block):
            c1 = min(c0 + block, samples.shape[0])
            d = _squared_distances(reference[r0:r1], samples[c0:c1])
            ref_inside[r0:r1] |= (d <= sample_radii[None, c0:c1]).any(1).int()
            sample_inside[c0:c1] |= (d <= ref_radii[r0:r1, None]).any(0).int()
    distributed.all_reduce(ref_inside, op="max")
    distributed.all_reduce(sample_inside, op="max")
    return float(sample_inside.double().mean()), float(ref_inside.double().mean())


# ----------------------------------------------------------------------------- one side's features


class SideFeatures:
    """What eval-gen keeps of one side (samples or reference) while its images stream by.

    `moments`: running mean / covariance per feature ("lite0"; with Inception also "pool" and
    "spatial"); `inception_score`: per-split IS sums (samples side); `pool`: the pool features
    of the images at `keep` (sorted positions in the side's order; all of them for samples,
    a seeded subset of a large reference) for precision / recall. Every part merges exactly
    over ranks (`all_reduce`) and saves / loads for a resumable `eval-gen stats`.
    """

    def __init__(self, dims: dict[str, int], *, keep: np.ndarray | None = None, num_items: int | None = None,
                 inception_score: bool = False, device: torch.device | str = "cpu"):
        self.moments = {name: RunningMoments(dim, device) for name, dim in dims.items() if name != "logits"}
        self.inception_score = (InceptionScoreSums(num_items, num_classes=dims.get("logits", NUM_LOGITS), device=device)
                                if inception_score else None)
        self.keep = None if keep is None else np.asarray(keep, dtype=np.int64)
        self.pool = self.filled = None
        if self.keep is not None:
            self.pool = torch.zeros(len(self.keep), dims.get("pool", FEATURE_DIM), dtype=torch.float32, device=device)
            self.filled = torch.zeros(len(self.keep), dtype=torch.int32, device=device)

    def update(self, features: dict[str, torch.Tensor], positions: torch.Tensor) -> None:
        """`features`: {"lite0", "pool", "spatial", "logits"} of the images at `positions` (their
        index in the side's order)."""
        for name, moments in self.moments.items():
            moments.update(features[name])
        if self.inception_score is not None:
            self.inception_score.update(features["logits"], positions)
        if self.keep is not None:
            where = np.searchsorted(self.keep, positions.cpu().numpy())
            where = np.minimum(where, len(self.keep) - 1)
            hit = self.keep[where] == positions.cpu().numpy()
            if hit.any():
                rows = torch.from_numpy(where[hit]).to(self.pool.device)
                self.pool[rows] = features["pool"][torch.from_numpy(hit).to(features["pool"].device)].float().to(self.pool.device)
                self.filled[rows] = 1

    def all_reduce(self) -> None:
        for moments in self.moments.values():
            moments.all_reduce()
        if self.inception_score is not None:
            self.inception_score.all_reduce()
        if self.keep is not None:  # each kept row was filled on exactly one rank: the sum is that row
            distributed.all_reduce(self.pool)
            distributed.all_reduce(self.filled)

    def kept_pool(self) -> torch.Tensor | None:
        """The kept pool features of readable images (unreadable ones never filled their row)."""
        return None if self.keep is None else self.pool[self.filled.bool()]

    def state_dict(self) -> dict:
        state = {f"moments.{name}": {"num": m.num, "sum": m.sum, "outer": m.outer} for name, m in self.moments.items()}
        if self.inception_score is not None:
            state["inception_score"] = self.inception_score.state_dict()
        if self.keep is not None:
            state.update(keep=torch.from_numpy(self.keep), pool=self.pool, filled=self.filled)
        return state

    def load_state_dict(self, state: dict) -> None:
        for name, m in self.moments.items():
            saved = state[f"moments.{name}"]
            for key in ("num", "sum", "outer"):
                getattr(m, key).copy_(saved[key])
        if self.inception_score is not None:
            self.inception_score.load_state_dict(state["inception_score"])
        if self.keep is not None:
            if not np.array_equal(state["keep"].numpy(), self.keep):
                raise ValueError("SideFeatures: the saved state keeps other images' pool features")
            self.pool.copy_(state["pool"])
            self.filled.copy_(state["filled"])


def feature_dims(nets: dict) -> dict[str, int]:
    """{"lite0": 1280, "pool": 2048, "spatial": 2023} for the feature networks in use."""
    dims = {"lite0": nets["lite0"].dim}
    if "inception" in nets:
        dims.update(nets["inception"].feature_dims)
    return dims


def frechet(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray], method: str = "sqrtm") -> float:
    """Frechet distance of two (mean, covariance) pairs; the suite's order: samples first."""
    return frechet_distance(a[0], a[1], b[0], b[1], method=method)
