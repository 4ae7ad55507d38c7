import pytest
import torch

from vqgan_lc.quantize import QuantizerConfig, build_quantizer


def _cfg(kind, **kw):
    base = dict(kind=kind, codebook_size=50, dim=4)
    if kind == "lc":
        base["codebook_dim"] = 12
    base.update(kw)
    return QuantizerConfig(**base)


def _brute_indices(z, entries):
    flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
    return torch.cdist(flat.double(), entries.double()).argmin(dim=1).view(z.shape[0], *z.shape[2:])


@pytest.mark.parametrize("kind", ["lc", "vq", "fc", "ema"])
def test_indices_are_nearest_entries_and_quantized_matches(kind):
    torch.manual_seed(0)
    q = build_quantizer(_cfg(kind))
    z = torch.randn(2, 4, 3, 5)
    out = q.eval()(z)
    entries = q.latent_codebook().detach()
    assert out.indices.shape == (2, 3, 5)
    assert torch.equal(out.indices, _brute_indices(z, entries))
    expected = entries[out.indices].permute(0, 3, 1, 2)
    torch.testing.assert_close(out.quantized, expected)
    torch.testing.assert_close(q.indices_to_latents(out.indices), expected)
    assert out.counts.sum() == 30 and out.counts.dtype == torch.int64
    assert torch.equal(out.counts, torch.bincount(out.indices.flatten(), minlength=50))


def test_lc_gradients_reach_projector_not_codebook_and_straight_through():
    torch.manual_seed(0)
    q = build_quantizer(_cfg("lc")).train()
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    out = q(z)
    (out.quantized.square().sum() + out.loss).backward()
    assert q.projector.weight.grad is not None and q.projector.weight.grad.abs().sum() > 0
    assert not q.codebook.requires_grad  # frozen buffer
    assert z.grad is not None and z.grad.abs().sum() > 0


def test_lc_loss_weights():
    torch.manual_seed(0)
    q = build_quantizer(_cfg("lc", alpha=1.0, beta=0.33)).train()
    z = torch.randn(1, 4, 2, 2)
    out = q(z)
    zq = q.latent_codebook().detach()[out.indices.flatten()]
    mse = (z.permute(0, 2, 3, 1).reshape(-1, 4) - zq).square().mean()
    torch.testing.assert_close(out.loss, 1.33 * mse)


def test_lc_projector_init_and_mlp():
    q = build_quantizer(QuantizerConfig(kind="lc", codebook_size=10, dim=8, codebook_dim=2000))
    std = q.projector.weight.std().item()
    assert abs(std - 8 ** -0.5) < 0.02  # N(0, D'^-0.5)
    mlp = build_quantizer(_cfg("lc", projector="mlp"))
    assert mlp.latent_codebook().shape == (50, 4)
    assert mlp.projector[0].out_features == 256


def test_lc_ablations():
    frozen = build_quantizer(_cfg("lc", projector="none", codebook_dim=4))
    assert sum(p.numel() for p in frozen.parameters()) == 0
    trainable = build_quantizer(_cfg("lc", train_codebook=True)).train()
    out = trainable(torch.randn(1, 4, 2, 2))
    (out.quantized.sum() + out.loss).backward()
    assert trainable.codebook.grad is not None


@pytest.mark.parametrize("bad, msg", [
    (dict(kind="lc", projector="none", codebook_dim=7, dim=4), "codebook_dim == dim"),
    (dict(kind="xx"), "unknown"),
    (dict(kind="vq", projector="mlp"), "kind='lc' only"),
    (dict(kind="lc", l2_normalize=True), "l2_normalize"),
    (dict(kind="ema", ema_decay=1.5), "ema_decay"),
])
def test_incompatible_options_rejected(bad, msg):
    with pytest.raises(ValueError, match=msg):
        build_quantizer(QuantizerConfig(**bad))


def test_wrong_codebook_and_input_shapes():
    with pytest.raises(ValueError, match=r"\(N, C\) matrix"):
        build_quantizer(_cfg("lc"), torch.randn(50, 11, 2))
    q = build_quantizer(_cfg("lc"))
    with pytest.raises(ValueError, match=r"\(B, 4, H, W\)"):
        q(torch.randn(2, 5, 3, 3))
    with pytest.raises(ValueError, match="lie in"):
        q.indices_to_latents(torch.tensor([[[50]]]))


def test_fc_l2_normalised_codes_are_unit_vectors():
    torch.manual_seed(0)
    q = build_quantizer(_cfg("fc", l2_normalize=True)).eval()
    out = q(torch.randn(2, 4, 3, 3))
    norms = out.quantized.norm(dim=1)
    torch.testing.assert_close(norms, torch.ones_like(norms))


def test_ema_moves_used_entries_towards_assigned_means():
    torch.manual_seed(0)
    q = build_quantizer(_cfg("ema", ema_decay=0.5)).train()
    z = torch.randn(1, 4, 4, 4)
    before = q.embed.clone()
    out = q(z)
    used = out.counts.nonzero().flatten()
    unused = (out.counts == 0).nonzero().flatten()
    assert not torch.allclose(q.embed[used], before[used])
    torch.testing.assert_close(q.embed[unused], before[unused], rtol=1e-3, atol=1e-3)
    assert not any(p.requires_grad for p in q.parameters())
    flat = z.permute(0, 2, 3, 1).reshape(-1, 4)
    i = int(used[0])
    mean = flat[out.indices.flatten() == i].mean(0)
    # after many identical updates an entry converges to the mean of what it is assigned
    for _ in range(40):
        q.update_codebook(flat, out.indices.flatten())
    torch.testing.assert_close(q.embed[i], mean, rtol=1e-2, atol=1e-2)


def test_eval_cache_is_invalidated_by_train_and_load():
    q = build_quantizer(_cfg("lc")).eval()
    first = q.search_codebook()[0]
    assert q.search_codebook()[0] is first  # cached in eval mode
    q.train()
    with torch.no_grad():
        q.projector.weight.mul_(2)
    q.eval()
    torch.testing.assert_close(q.search_codebook()[0], q.latent_codebook().detach())
    q.load_codebook(torch.zeros(50, 12))
    torch.testing.assert_close(q.search_codebook()[0], q.projector.bias.detach().expand(50, 4))


def test_lc_codebook_standardized_unless_disabled():
    raw = torch.randn(50, 12) * 40 + 7
    q = build_quantizer(_cfg("lc"), raw)
    torch.testing.assert_close(q.codebook.mean(0), torch.zeros(12), atol=1e-5, rtol=0)
    assert q.codebook.square().sum(1).mean().sqrt().item() == pytest.approx(1.0, rel=1e-5)
    kept = build_quantizer(_cfg("lc", standardize_codebook=False), raw)
    assert torch.equal(kept.codebook, raw)


def test_the_quantizer_takes_a_tensor_and_names_the_reader_of_codebook_files(tmp_path):
    """Reading codebook files belongs to codebook/ (above the quantizer): a path is refused in one line."""
    with pytest.raises(TypeError, match=r"load_codebook\(path\)\.vectors"):
        build_quantizer(_cfg("lc"), str(tmp_path / "cb.safetensors"))


def test_a_given_codebook_decides_its_size_and_width_on_a_copy_of_the_config(caplog):
    """The codebook's (N, C) sets codebook_size / codebook_dim, the log says so, and the config
    the caller passed in (say, the one a training config holds) keeps its values."""
    cfg = _cfg("lc", codebook_size=49)
    with caplog.at_level("INFO"):
        q = build_quantizer(cfg, torch.randn(40, 10))
    assert (q.config.codebook_size, q.config.codebook_dim) == (40, 10) == tuple(q.codebook.shape)
    assert "sets codebook_size=40, codebook_dim=10 (the config said 49 x 12)" in caplog.text
    assert (cfg.codebook_size, cfg.codebook_dim) == (49, 12) and q.config is not cfg
    same = _cfg("lc", codebook_size=40, codebook_dim=10)
    assert build_quantizer(same, torch.randn(40, 10)).config is same  # nothing to adopt: no copy


@pytest.mark.parametrize("kind, weight", [("lc", 1.33), ("vq", 1.33), ("fc", 1.33), ("ema", 1.0)])
def test_loss_value_is_the_same_in_train_and_eval(kind, weight):
    torch.manual_seed(0)
    q = build_quantizer(_cfg(kind, alpha=1.0, beta=0.33))
    z = torch.randn(2, 4, 3, 3)
    with torch.no_grad():
        evaluated = q.eval()(z)  # before training: EMA's training step moves the codebook
    trained = q.train()(z.clone().requires_grad_())
    assert torch.equal(trained.indices, evaluated.indices)
    torch.testing.assert_close(trained.loss.detach(), evaluated.loss)
    # (alpha + beta) x MSE for the gradient-based quantizers, alpha x MSE for EMA (documented)
    zq = evaluated.quantized.permute(0, 2, 3, 1).reshape(-1, 4)
    z_flat = q.normalize(z.permute(0, 2, 3, 1).reshape(-1, 4))
    torch.testing.assert_close(evaluated.loss, weight * (z_flat - zq).square().mean())


def test_lc_loss_gradients_unchanged_and_frozen_codebook_value_consistent():
    torch.manual_seed(0)
    q = build_quantizer(_cfg("lc", alpha=1.0, beta=0.33)).train()
    z = torch.randn(1, 4, 2, 2, requires_grad=True)
    out = q(z)
    out.loss.backward()
    zq = q.latent_codebook()[out.indices.flatten()]
    z_flat = z.permute(0, 2, 3, 1).reshape(-1, 4)
    # z gets only the commitment gradient, the projector only the codebook one
    torch.testing.assert_close(z.grad.permute(0, 2, 3, 1).reshape(-1, 4),
                               2 * (z_flat - zq).detach() / z_flat.numel())
    expected = torch.autograd.grad(0.33 * (zq - z_flat.detach()).square().mean(), q.projector.weight)[0]
    torch.testing.assert_close(q.projector.weight.grad, expected)
    # a frozen LC codebook without projector: no gradient path to the entries, same value
    frozen = build_quantizer(_cfg("lc", projector="none", codebook_dim=4, alpha=1.0, beta=0.33)).train()
    z = torch.randn(1, 4, 2, 2, requires_grad=True)
    out = frozen(z)
    zq = frozen.latent_codebook()[out.indices.flatten()]
    z_flat = z.permute(0, 2, 3, 1).reshape(-1, 4)
    torch.testing.assert_close(out.loss, 1.33 * (z_flat - zq).square().mean())
    out.loss.backward()
    torch.testing.assert_close(z.grad.permute(0, 2, 3, 1).reshape(-1, 4), 2 * (z_flat - zq).detach() / z_flat.numel())


@pytest.mark.parametrize("kind", ["lc", "vq"])
def test_output_unpacks_as_quantized_indices_loss(kind):
    from vqgan_lc.quantize import QuantizerOutput

    torch.manual_seed(0)
    q = build_quantizer(_cfg(kind)).eval()
    z = torch.randn(2, 4, 3, 5)
    out = q(z)
    quantized, indices, loss = out  # vector-quantize-pytorch's order; counts stays an attribute
    assert quantized is out.quantized and indices is out.indices and loss is out.loss
    assert len(out) == 3 and out[1] is out.indices and out[-1] is out.loss
    assert [t.shape for t in out[:2]] == [(2, 4, 3, 5), (2, 3, 5)]
    assert out.counts.shape == (50,) and int(out.counts.sum()) == 2 * 3 * 5
    with pytest.raises(ValueError):
        a, b, c, d = out  # four names do not unpack: counts is not in the tuple
    # keyword and positional construction still work as before
    again = QuantizerOutput(quantized=quantized, indices=indices, loss=loss, counts=out.counts)
    assert tuple(again) == (quantized, indices, loss) and again.counts is out.counts


def test_indices_to_latents_still_checks_the_range_eagerly():
    q = build_quantizer(_cfg("lc")).eval()
    with pytest.raises(ValueError, match=r"\[0, 50\)"):
        q.indices_to_latents(torch.full((1, 2, 2), 50))
    with pytest.raises(ValueError, match=r"\[0, 50\)"):
        q.indices_to_latents(torch.full((1, 2, 2), -1))
    assert q.indices_to_latents(torch.full((1, 2, 2), 49)).shape == (1, 4, 2, 2)


# --- rotation trick ------------------------------------------------------------------------------

def test_rotate_onto_returns_the_target_and_rotates_the_gradient():
    from vqgan_lc.quantize.base import rotate_onto

    torch.manual_seed(0)
    z = torch.randn(64, 6, dtype=torch.float64, requires_grad=True)
    target = torch.randn(64, 6, dtype=torch.float64)
    out = rotate_onto(z, target)
    torch.testing.assert_close(out, target)  # forward: the entries themselves
    grad = torch.randn(64, 6, dtype=torch.float64)
    out.backward(grad)
    # d out / d z = scale * R with R orthogonal: z receives scale * R^T grad, so its norm is
    # scale * |grad| (straight-through would copy grad unchanged), and R maps z's direction to the target's
    scale = target.norm(dim=1) / z.detach().norm(dim=1)
    torch.testing.assert_close(z.grad.norm(dim=1), scale * grad.norm(dim=1))
    u, t = z.detach() / z.detach().norm(dim=1, keepdim=True), target / target.norm(dim=1, keepdim=True)
    # R^T maps t back to u: the gradient along the target's direction arrives along z's
    back = torch.autograd.grad(rotate_onto(z, target), z, grad_outputs=t)[0]
    torch.testing.assert_close(back, scale[:, None] * u)
    assert not torch.allclose(z.grad, grad)


def test_rotate_onto_handles_zero_and_opposite_vectors():
    from vqgan_lc.quantize.base import rotate_onto

    z = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [2.0, 1.0, 0.0]], requires_grad=True)
    target = torch.tensor([[1.0, 2.0, 3.0], [-3.0, 0.0, 0.0], [4.0, 2.0, 0.0]])
    out = rotate_onto(z, target)
    torch.testing.assert_close(out, target)
    out.sum().backward()
    assert torch.isfinite(z.grad).all()
    torch.testing.assert_close(z.grad[0], torch.ones(3))  # zero length: straight-through


@pytest.mark.parametrize("kind", ["lc", "vq", "fc", "ema-restart", "l2", "simvq"])
def test_rotation_gradient_keeps_forward_values_and_changes_what_z_receives(kind):
    torch.manual_seed(0)
    ref = build_quantizer(_cfg(kind)).train()
    rot = build_quantizer(_cfg(kind, gradient="rotation")).train()
    rot.load_state_dict(ref.state_dict())
    z = torch.randn(2, 4, 3, 3)
    grads, outs = [], []
    for q in (ref, rot):
        zz = z.clone().requires_grad_(True)
        out = q(zz)
        out.quantized.square().sum().backward()
        grads.append(zz.grad)
        outs.append(out)
    assert torch.equal(outs[0].indices, outs[1].indices)
    torch.testing.assert_close(outs[0].quantized, outs[1].quantized)
    torch.testing.assert_close(outs[0].loss, outs[1].loss)
    assert not torch.allclose(grads[0], grads[1])
    # without autograd both return the entries as they are, bit for bit (EMA restarts moved
    # the codebooks at random during the step: compare from one state)
    rot.load_state_dict(ref.state_dict())
    with torch.no_grad():
        assert torch.equal(ref.eval()(z).quantized, rot.eval()(z).quantized)


def test_unknown_gradient_is_refused():
    with pytest.raises(ValueError, match="gradient 'rotate' unknown"):
        QuantizerConfig(kind="vq", gradient="rotate").validate()
