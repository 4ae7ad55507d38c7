"""The ADM suite's metrics from small random features, each checked against a numpy re-derivation."""
import numpy as np
import pytest
import scipy.linalg
import torch

from vqgan_lc.evaluate.adm import (
    IS_SPLIT_SIZE,
    InceptionScoreSums,
    SideFeatures,
    frechet,
    manifold_radii,
    precision_recall,
)
from vqgan_lc.evaluate.frechet import RunningMoments


def _moments(x: np.ndarray) -> RunningMoments:
    m = RunningMoments(x.shape[1])
    for chunk in np.array_split(x, 3):  # streamed in uneven batches
        m.update(torch.from_numpy(chunk))
    return m


def _numpy_fd(a: np.ndarray, b: np.ndarray) -> float:
    """The suite's FIDStatistics.frechet_distance on np.mean / np.cov, written out."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float((mu1 - mu2) @ (mu1 - mu2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def test_frechet_of_a_set_with_itself_is_zero_and_sfid_matches_numpy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 21))  # a stand-in for the 2,023-d spatial features
    y = rng.normal(loc=0.3, scale=1.2, size=(90, 21))
    mx, my = _moments(x), _moments(y)
    as_pair = lambda m: (m.mean.numpy(), m.covariance.numpy())  # noqa: E731
    assert abs(frechet(as_pair(mx), as_pair(mx))) < 1e-8
    assert frechet(as_pair(my), as_pair(mx)) == pytest.approx(_numpy_fd(y, x), rel=1e-6)


def _numpy_inception_score(logits: np.ndarray, split: int) -> tuple[float, list[float]]:
    """The suite's compute_inception_score: softmax, consecutive splits, mean of exp(KL)."""
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    scores = []
    for i in range(0, len(p), split):
        part = p[i:i + split]
        kl = part * (np.log(part) - np.log(part.mean(0, keepdims=True)))
        scores.append(float(np.exp(kl.sum(1).mean())))
    return float(np.mean(scores)), scores


def test_inception_score_of_uniform_logits_is_one():
    sums = InceptionScoreSums(12, split_size=5, num_classes=7)
    sums.update(torch.zeros(12, 7), torch.arange(12))
    assert sums.score() == pytest.approx(1.0, abs=1e-12)
    assert len(sums.splits()) == 3


def test_inception_score_splits_follow_the_sample_order_and_match_numpy():
    rng = np.random.default_rng(1)
    logits = rng.normal(scale=3.0, size=(23, 11))
    expected, expected_splits = _numpy_inception_score(logits, split=5)
    sums = InceptionScoreSums(23, split_size=5, num_classes=11)
    order = rng.permutation(23)  # batches arrive in any order (ranks, workers): positions decide the split
    for chunk in np.array_split(order, 4):
        sums.update(torch.from_numpy(logits[chunk]).float(), torch.from_numpy(chunk))
    assert sums.splits() == pytest.approx(expected_splits, rel=1e-5)
    assert sums.score() == pytest.approx(expected, rel=1e-5)
    assert InceptionScoreSums(50_000).count.numel() == 10 and IS_SPLIT_SIZE == 5000  # the suite: 10 splits at 50k


def _numpy_precision_recall(ref: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Kynkaanniemi et al. with full distance matrices: k-th neighbour radii (self at index 0)."""
    def sq(a, b):
        return ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
    ref_radii = np.sort(sq(ref, ref), axis=1)[:, k]
    fake_radii = np.sort(sq(fake, fake), axis=1)[:, k]
    d = sq(ref, fake)
    precision = (d <= ref_radii[:, None]).any(0).mean()
    recall = (d <= fake_radii[None, :]).any(1).mean()
    return float(precision), float(recall)


def test_precision_recall_identical_disjoint_and_against_numpy():
    rng = np.random.default_rng(2)
    ref = rng.normal(size=(40, 6)).astype(np.float32)
    same = precision_recall(torch.from_numpy(ref), torch.from_numpy(ref.copy()), block=7)
    assert same == (1.0, 1.0)
    far = precision_recall(torch.from_numpy(ref), torch.from_numpy(ref + 100.0), block=7)
    assert far == (0.0, 0.0)
    fake = (rng.normal(size=(33, 6)) + 1.0).astype(np.float32)  # overlapping but shifted
    got = precision_recall(torch.from_numpy(ref), torch.from_numpy(fake), block=7)
    expected = _numpy_precision_recall(ref.astype(np.float64), fake.astype(np.float64))
    assert got == pytest.approx(expected, abs=1e-12)
    assert 0 < got[0] < 1 and 0 < got[1] < 1
    # the block size changes the memory, never the result
    assert precision_recall(torch.from_numpy(ref), torch.from_numpy(fake), block=1000) == got


def test_manifold_radii_are_the_kth_neighbour_in_blocks():
    x = torch.tensor([[0.0], [1.0], [3.0], [6.0], [10.0]])
    # squared distances from 0: 0, 1, 9, 36, 100 -> the 3rd neighbour (self excluded) is at 36;
    # from 3: 0, 4, 9, 9, 49 -> 9 (equal distances count twice, as in the suite)
    assert manifold_radii(x, k=3, block=2).tolist() == [36.0, 25.0, 9.0, 25.0, 81.0]
    with pytest.raises(ValueError, match="more than k = 3"):
        manifold_radii(x[:3], k=3)


def test_side_features_keep_subset_and_state_round_trip():
    rng = np.random.default_rng(3)
    dims = {"lite0": 4, "pool": 5, "spatial": 3, "logits": 6}
    keep = np.array([1, 4, 7])
    side = SideFeatures(dims, keep=keep, num_items=9, inception_score=True)
    feats = {name: torch.from_numpy(rng.normal(size=(9, d))).float() for name, d in dims.items()}
    for chunk in (slice(0, 4), slice(4, 9)):
        side.update({k: v[chunk] for k, v in feats.items()}, torch.arange(9)[chunk])
    assert torch.equal(side.kept_pool(), feats["pool"][keep])
    assert set(side.moments) == {"lite0", "pool", "spatial"}  # logits feed the Inception Score only
    copy = SideFeatures(dims, keep=keep, num_items=9, inception_score=True)
    copy.load_state_dict(side.state_dict())
    assert torch.equal(copy.moments["spatial"].outer, side.moments["spatial"].outer)
    assert copy.inception_score.score() == side.inception_score.score()
    with pytest.raises(ValueError, match="other images"):
        SideFeatures(dims, keep=np.array([0, 1, 2]), num_items=9, inception_score=True).load_state_dict(side.state_dict())
