"""The field's baselines behind the common interface: EMA with data start and dead-code restarts,
LlamaGen's l2-normalised codes, SimVQ."""
import pytest
import torch

from vqgan_lc.quantize import QuantizerConfig, build_quantizer
from vqgan_lc.quantize.ema_restart import RestartEMAQuantizer
from vqgan_lc.quantize.l2norm import L2NormQuantizer
from vqgan_lc.quantize.simvq import SimVQQuantizer

BASELINES = ["ema-restart", "l2", "simvq"]


def _q(kind, **kw):
    return build_quantizer(QuantizerConfig(**{"kind": kind, "codebook_size": 40, "dim": 4, **kw}))


def _flat(z):
    return z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])


@pytest.mark.parametrize("kind,cls", [("ema-restart", RestartEMAQuantizer), ("l2", L2NormQuantizer),
                                      ("simvq", SimVQQuantizer)])
def test_shapes_and_indices_are_the_nearest_searched_entries(kind, cls):
    torch.manual_seed(0)
    q = _q(kind)
    assert isinstance(q, cls)
    z = torch.randn(2, 4, 3, 5)
    out = q.eval()(z)
    assert out.quantized.shape == z.shape and out.indices.shape == (2, 3, 5) and out.counts.sum() == 30
    entries = q.normalize(q.latent_codebook().detach())
    brute = torch.cdist(q.normalize(_flat(z)).double(), entries.double()).argmin(dim=1)
    assert torch.equal(out.indices.flatten(), brute)
    torch.testing.assert_close(out.quantized, entries[out.indices].permute(0, 3, 1, 2))


def test_l2_codes_and_latents_are_unit_vectors_and_gradients_reach_codebook_and_encoder():
    torch.manual_seed(0)
    q = _q("l2").train()
    assert torch.allclose(q.embedding.weight.norm(dim=1), torch.ones(40))  # starts on the sphere
    z = (3 * torch.randn(2, 4, 3, 3)).requires_grad_()
    out = q(z)
    assert torch.allclose(out.quantized.detach().norm(dim=1), torch.ones(2, 3, 3), atol=1e-5)
    (out.quantized.square().sum() * 0 + out.quantized.sum() + out.loss).backward()
    assert q.embedding.weight.grad.abs().sum() > 0 and z.grad.abs().sum() > 0


def test_simvq_codebook_frozen_and_only_the_linear_map_learns():
    torch.manual_seed(0)
    q = _q("simvq", codebook_size=4000, dim=8).train()
    assert [n for n, p in q.named_parameters()] == ["projector.weight", "projector.bias"]
    assert "codebook" in dict(q.named_buffers())
    assert abs(q.codebook.std().item() - 8 ** -0.5) < 0.01  # N(0, D'^-1)
    before = q.codebook.clone()
    opt = torch.optim.SGD(q.parameters(), lr=0.5)
    z = torch.randn(2, 8, 4, 4, requires_grad=True)
    out = q(z)
    (out.quantized.sum() + out.loss).backward()
    assert q.projector.weight.grad.abs().sum() > 0 and z.grad.abs().sum() > 0
    weight = q.projector.weight.detach().clone()
    opt.step()
    assert torch.equal(q.codebook, before) and not torch.equal(q.projector.weight, weight)


def test_ema_restart_starts_from_the_first_batch_latents():
    torch.manual_seed(0)
    q = _q("ema-restart", codebook_size=20).train()
    z = torch.randn(1, 4, 4, 8) * 0.01 + 5.0  # latents far from the N(0, I) placeholder
    q(z)
    assert bool(q.initialized)
    rows = _flat(z)
    # every entry is a distinct one of the batch's latents (20 <= 32 latents: no jitter)
    gaps = (q.embed[:, None] - rows[None]).abs().amax(dim=-1)
    assert (gaps.min(dim=1).values == 0).all() and torch.unique(q.embed, dim=0).shape[0] == 20
    assert torch.equal(q.embed, q.embed_avg) and torch.equal(q.cluster_size, torch.ones(20))
    # the plain EMA keeps its Gaussian start far from these latents
    plain = _q("ema", codebook_size=20).train()
    plain(z)
    assert plain.embed.norm(dim=1).mean() < 3


def test_ema_restart_reseeds_dead_entries_from_current_latents():
    torch.manual_seed(0)
    q = _q("ema-restart", codebook_size=20, ema_decay=0.5, restart_threshold=0.3).train()
    q(torch.randn(1, 4, 4, 8))  # seeding step
    # next batches sit in a small region: most entries are never chosen and decay below 0.3
    target = torch.zeros(1, 4, 4, 8)
    target[:, 0] = 10.0
    for _ in range(3):
        q(target + 0.01 * torch.randn_like(target))
    assert q.restarts > 0
    near = (q.embed - torch.tensor([10.0, 0, 0, 0])).norm(dim=1) < 1
    assert near.sum() >= 15  # dead entries now sit on the current latents
    off = _q("ema-restart", codebook_size=20, ema_decay=0.5, restart_threshold=0.0).train()
    off(torch.randn(1, 4, 4, 8))
    for _ in range(3):
        off(target)
    assert off.restarts == 0


def test_ema_restart_jitters_copies_when_the_batch_is_smaller_than_the_codebook():
    torch.manual_seed(0)
    q = _q("ema-restart", codebook_size=64).train()
    q(torch.randn(1, 4, 2, 2))  # 4 latents for 64 entries
    assert torch.unique(q.embed, dim=0).shape[0] == 64


def _restart_worker(rank, out):
    import torch.distributed as dist
    dist.init_process_group("gloo")
    torch.manual_seed(1000 + rank)  # different random streams: only the broadcast can make them agree
    q = _q("ema-restart", codebook_size=32, ema_decay=0.5, restart_threshold=0.4).train()
    for step in range(4):
        q(torch.randn(1, 4, 2, 4, generator=torch.Generator().manual_seed(10 * step + rank)) + rank)
    torch.save({"embed": q.embed, "restarts": q.restarts}, f"{out}/rank{rank}.pt")


def test_ema_restart_is_identical_on_every_rank(run_ranks, tmp_path):
    run_ranks(_restart_worker, str(tmp_path))
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    assert r0["restarts"] > 0 and r0["restarts"] == r1["restarts"]
    assert torch.equal(r0["embed"], r1["embed"])


@pytest.mark.parametrize("kind", BASELINES)
def test_save_load_round_trip(tmp_path, kind):
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).parents[1] / "tokenizer"))
    from test_tokenizer_model import tiny_config
    from vqgan_lc.tokenizer.model import VQModel

    torch.manual_seed(0)
    model = VQModel(tiny_config(kind)).train()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    model(x)  # one training step's codebook update (seeds the ema-restart entries)
    model.eval()
    model.save_pretrained(tmp_path / "ckpt")
    loaded = VQModel.from_pretrained(tmp_path / "ckpt")
    assert loaded.quantizer.config.kind == kind
    with torch.no_grad():
        assert torch.equal(model(x).reconstruction, loaded(x).reconstruction)
        assert torch.equal(model.encode(x).indices, loaded.encode(x).indices)
    if kind == "ema-restart":
        assert bool(loaded.quantizer.initialized)


@pytest.mark.parametrize("bad,msg", [(dict(kind="ema-restart", restart_threshold=-1.0), "restart_threshold"),
                                     (dict(kind="simvq", projector="mlp"), "kind='lc' only")])
def test_bad_settings_rejected(bad, msg):
    with pytest.raises(ValueError, match=msg):
        QuantizerConfig(**bad).validate()
