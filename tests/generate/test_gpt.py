"""Class-conditional GPT: cached decoding equals recomputation, CFG follows its formula, filters
keep the right tokens, the chunked loss equals F.cross_entropy, augmentation happens at its
rates only in training, and save/load round-trips."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vqgan_lc.generate.gpt import GPT, GPT_PRESETS, GPTConfig, chunked_cross_entropy, gpt_config
from vqgan_lc.generate.sampling import cfg_logits, sample_next, top_k_filter, top_p_filter
from vqgan_lc.pretrained import load_pretrained

N, C, L = 48, 5, 12


def tiny(**overrides) -> GPT:
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=N, num_classes=C, block_size=L, n_layer=2, n_head=2, n_embd=32, **overrides)
    return GPT(config).eval()


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- KV cache

@pytest.mark.parametrize("positions", ["rope", "learned"])
def test_cached_logits_equal_full_recomputation_at_every_step(positions):
    model = tiny(positions=positions)
    tokens = torch.randint(0, N, (3, L), generator=seeded(1))
    labels = torch.tensor([0, 4, C])                       # includes the null class
    full = model.logits(tokens[:, :-1], labels)            # (3, L, N)
    ids = model.sequence_ids(tokens[:, :-1], labels)       # (3, L)
    cache = model.new_cache(3)
    # A 3-id prefill, then single steps, then a 2-id step after a cached prefix (explicit mask path).
    pieces = [(0, 3)] + [(p, p + 1) for p in range(3, 8)] + [(8, 10), (10, 12)]
    for start, stop in pieces:
        step = model.head(model.hidden_states(ids[:, start:stop], cache=cache, start=start)).float()
        torch.testing.assert_close(step, full[:, start:stop], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("positions", ["rope", "learned"])
@pytest.mark.parametrize("cfg_scale,top_p", [(1.0, None), (3.0, 0.9)])
def test_generate_with_cache_equals_without(positions, cfg_scale, top_p):
    model = tiny(positions=positions)
    labels = torch.tensor([1, 3, 3, C])
    kwargs = dict(top_k=20, top_p=top_p, cfg_scale=cfg_scale)
    cached = model.generate(labels, use_cache=True, generator=seeded(7), **kwargs)
    uncached = model.generate(labels, use_cache=False, generator=seeded(7), **kwargs)
    assert torch.equal(cached, uncached)


def test_kv_cache_and_block_size_limits_are_enforced():
    model = tiny()
    with pytest.raises(ValueError, match="KV cache holds 1 rows"):
        model.hidden_states(torch.zeros(2, 1, dtype=torch.long), cache=model.new_cache(1), start=0)
    with pytest.raises(ValueError, match="block_size"):
        model.hidden_states(torch.zeros(1, 2, dtype=torch.long), cache=model.new_cache(1), start=L - 1)


# ----------------------------------------------------------------------------- generation and CFG

def manual_sampling(model: GPT, labels: torch.Tensor, scale: float | None, top_k: int, seed: int) -> torch.Tensor:
    """Reference loop on the full-recomputation `logits()` path, guided by hand when `scale` is set."""
    gen, out = seeded(seed), torch.zeros(len(labels), 0, dtype=torch.long)
    for _ in range(L):
        logits = model.logits(out, labels)[:, -1]
        if scale is not None:
            uncond = model.logits(out, torch.full_like(labels, C))[:, -1]
            logits = uncond + scale * (logits - uncond)
        out = torch.cat([out, sample_next(logits, 1.0, top_k, None, gen)[:, None]], dim=1)
    return out


def test_cfg_scale_one_is_conditional_sampling():
    model = tiny()
    labels = torch.tensor([0, 2, 4])
    ours = model.generate(labels, top_k=10, cfg_scale=1.0, generator=seeded(3))
    assert torch.equal(ours, manual_sampling(model, labels, None, 10, seed=3))


def test_cfg_mixes_logits_as_the_formula_says():
    cond, uncond = torch.randn(2, 4, 9, generator=seeded(0))
    torch.testing.assert_close(cfg_logits(cond, uncond, 1.0), cond)
    torch.testing.assert_close(cfg_logits(cond, uncond, 0.0), uncond)
    torch.testing.assert_close(cfg_logits(cond, uncond, 2.5), uncond + 2.5 * (cond - uncond))
    model = tiny()
    labels = torch.tensor([0, 2, 4, 1])
    guided = model.generate(labels, top_k=10, cfg_scale=2.5, generator=seeded(3))
    assert torch.equal(guided, manual_sampling(model, labels, 2.5, 10, seed=3))
    # Guidance must move the distribution: different draws from the same seed.
    assert not torch.equal(guided, model.generate(labels, top_k=10, cfg_scale=1.0, generator=seeded(3)))


def test_generate_is_reproducible_and_in_range():
    model = tiny()
    labels = torch.arange(C + 1)
    a = model.generate(labels, generator=seeded(11), cfg_scale=2.0)
    b = model.generate(labels, generator=seeded(11), cfg_scale=2.0)
    assert a.dtype == torch.int64 and a.shape == (C + 1, L)
    assert torch.equal(a, b)
    assert int(a.min()) >= 0 and int(a.max()) < N
    split = model.generate(labels, generator=seeded(11), batch_size=4)
    assert split.shape == (C + 1, L) and int(split.max()) < N


def test_generate_leaves_training_mode_and_rejects_bad_arguments():
    model = tiny().train()
    model.generate(torch.tensor([0]), generator=seeded(0))
    assert model.training
    for kwargs in [dict(top_k=N + 1), dict(top_p=0.0), dict(temperature=-1.0), dict(batch_size=0)]:
        with pytest.raises(ValueError) as err:
            model.generate(torch.tensor([0]), **kwargs)
        assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="null class"):
        model.generate(torch.tensor([C + 1]))


# ----------------------------------------------------------------------------- filters

def test_top_k_keeps_exactly_k_even_with_ties():
    logits = torch.tensor([[1.0, 3.0, 3.0, 3.0, 0.5, 2.0], [5.0, 4.0, 3.0, 2.0, 1.0, 0.0]])
    kept = torch.isfinite(top_k_filter(logits, 2))
    assert kept.sum(dim=1).tolist() == [2, 2]
    assert kept[1].tolist() == [True, True, False, False, False, False]
    assert kept[0, [1, 2, 3]].sum() == 2                   # two of the three tied 3.0s
    assert torch.equal(top_k_filter(logits, 0), logits) and torch.equal(top_k_filter(logits, 6), logits)


@pytest.mark.parametrize("p,expected", [(0.3, {3}), (0.5, {3}), (0.8, {3, 0}), (0.81, {3, 0, 2}), (0.99, {0, 1, 2, 3})])
def test_top_p_keeps_the_smallest_set_reaching_p(p, expected):
    probs = torch.tensor([0.3, 0.05, 0.15, 0.5])           # sorted: 0.5 (id 3), 0.3, 0.15, 0.05
    filtered = top_p_filter(probs.log()[None], p)[0]
    assert set(torch.isfinite(filtered).nonzero().flatten().tolist()) == expected
    kept = torch.isfinite(filtered)
    torch.testing.assert_close(filtered[kept], probs.log()[kept])


def test_sampling_respects_filters_and_greedy():
    logits = torch.randn(64, 30, generator=seeded(2))
    assert torch.equal(sample_next(logits, 0.0), logits.argmax(1))
    assert torch.equal(sample_next(logits, 1.0, top_k=1, generator=seeded(0)), logits.argmax(1))
    drawn = sample_next(logits, 1.0, top_k=3, generator=seeded(0))
    allowed = logits.topk(3, dim=1).indices
    assert (drawn[:, None] == allowed).any(dim=1).all()


def test_sampling_frequencies_follow_the_filtered_distribution():
    probs = torch.tensor([0.05, 0.5, 0.15, 0.3])
    logits = probs.log().expand(40000, -1)
    counts = torch.bincount(sample_next(logits, 1.0, top_k=3, generator=seeded(1)), minlength=4) / 40000
    torch.testing.assert_close(counts, torch.tensor([0.0, 0.5, 0.15, 0.3]) / 0.95, atol=0.01, rtol=0)
    counts = torch.bincount(sample_next(logits, 1.0, top_k=3, top_p=0.7, generator=seeded(2)), minlength=4) / 40000
    torch.testing.assert_close(counts, torch.tensor([0.0, 0.5, 0.0, 0.3]) / 0.8, atol=0.01, rtol=0)


# ----------------------------------------------------------------------------- chunked loss

@pytest.mark.parametrize("chunk", [1, 4, 7, 30, 64])
def test_chunked_loss_and_gradients_equal_cross_entropy(chunk):
    gen = seeded(5)
    hidden = torch.randn(30, 16, generator=gen, dtype=torch.float64).float().requires_grad_()
    weight = torch.randn(50, 16, generator=gen).requires_grad_()
    targets = torch.randint(0, 50, (30,), generator=gen)
    ours = chunked_cross_entropy(hidden, weight, targets, chunk)
    g_hidden, g_weight = torch.autograd.grad(3.0 * ours, (hidden, weight))
    reference = F.cross_entropy(hidden @ weight.T, targets)
    r_hidden, r_weight = torch.autograd.grad(3.0 * reference, (hidden, weight))
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_hidden, r_hidden, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(g_weight, r_weight, rtol=1e-4, atol=1e-6)


def test_chunked_loss_runs_in_fp32_under_bf16_autocast():
    gen = seeded(6)
    hidden = torch.randn(20, 16, generator=gen).bfloat16().requires_grad_()
    weight = torch.randn(40, 16, generator=gen).requires_grad_()
    targets = torch.randint(0, 40, (20,), generator=gen)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = chunked_cross_entropy(hidden, weight, targets, 6)
    loss.backward()
    assert loss.dtype == torch.float32
    assert hidden.grad.dtype == torch.bfloat16 and weight.grad.dtype == torch.float32
    reference = F.cross_entropy(hidden.detach().float() @ weight.detach().T, targets)
    torch.testing.assert_close(loss.detach(), reference, rtol=1e-6, atol=1e-6)


def test_chunked_loss_rejects_bad_shapes():
    with pytest.raises(ValueError, match="targets"):
        chunked_cross_entropy(torch.randn(4, 3), torch.randn(5, 3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="hidden"):
        chunked_cross_entropy(torch.randn(4, 3), torch.randn(5, 2), torch.zeros(4, dtype=torch.long))


def test_training_loss_in_eval_mode_is_plain_cross_entropy_and_trains():
    model = tiny(loss_chunk=5)
    tokens = torch.randint(0, N, (3, L), generator=seeded(2))
    labels = torch.tensor([0, 1, 2])
    loss, logs = model.training_loss(tokens, labels)
    reference = F.cross_entropy(model.logits(tokens[:, :-1], labels).reshape(-1, N), tokens.reshape(-1))
    torch.testing.assert_close(loss, reference, rtol=1e-5, atol=1e-5)
    assert logs["corrupted_fraction"] == 0.0 and logs["null_label_fraction"] == 0.0
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


# ----------------------------------------------------------------------------- augmentation

def test_class_dropout_and_token_corruption_rates_in_train_mode_only():
    model = tiny(class_dropout=0.1, token_corruption=0.2).train()
    tokens = torch.randint(0, N, (400, 100), generator=seeded(0))
    labels = torch.randint(0, C, (20000,), generator=seeded(1))
    new_tokens, _ = model.prepare_inputs(tokens, labels[:400], seeded(2))
    _, new_labels = model.prepare_inputs(tokens[:1].expand(20000, -1), labels, seeded(3))
    changed = (new_tokens != tokens).float().mean().item()
    # A replacement draws the original id again with probability 1/N.
    assert abs(changed - 0.2 * (1 - 1 / N)) < 0.005
    assert set(new_tokens.unique().tolist()) <= set(range(N))
    nulled = new_labels == C
    assert abs(nulled.float().mean().item() - 0.1) < 0.007
    assert torch.equal(new_labels[~nulled], labels[~nulled])
    _, logs = model.training_loss(tokens[:50, :L], labels[:50], generator=seeded(4))
    assert logs["corrupted_fraction"] > 0 and 0 <= logs["null_label_fraction"] <= 1
    model.eval()
    same_tokens, same_labels = model.prepare_inputs(tokens, labels[:400], seeded(2))
    assert torch.equal(same_tokens, tokens) and torch.equal(same_labels, labels[:400])


# ----------------------------------------------------------------------------- save/load, config

@pytest.mark.parametrize("positions", ["rope", "learned"])
def test_save_and_load_round_trip(tmp_path, positions):
    model = tiny(positions=positions, norm="layernorm", bias=True)
    tokens, labels = torch.randint(0, N, (2, L - 1), generator=seeded(0)), torch.tensor([1, C])
    expected = model.logits(tokens, labels)
    model.save_pretrained(tmp_path / "gpt")
    for loaded in (GPT.from_pretrained(tmp_path / "gpt"), load_pretrained(tmp_path / "gpt")):
        assert isinstance(loaded, GPT) and loaded.config == model.config
        assert torch.equal(loaded.logits(tokens, labels), expected)
        assert torch.equal(loaded.generate(labels, generator=seeded(1)), model.generate(labels, generator=seeded(1)))


@pytest.mark.parametrize("overrides,match", [
    (dict(n_embd=30, n_head=4), "multiple of n_head"),
    (dict(n_embd=12, n_head=4), "even head size"),
    (dict(vocab_size=0), "vocab_size"),
    (dict(block_size=-1), "block_size"),
    (dict(positions="alibi"), "positions"),
    (dict(norm="batch"), "norm"),
    (dict(class_dropout=1.0), "class_dropout"),
    (dict(token_corruption=-0.1), "token_corruption"),
    (dict(dropout=1.5), "dropout"),
    (dict(loss_chunk=0), "loss_chunk"),
])
def test_config_errors_are_one_line(overrides, match):
    base = dict(vocab_size=N, num_classes=C, block_size=L, n_layer=1, n_head=2, n_embd=16)
    with pytest.raises(ValueError, match=match) as err:
        GPTConfig(**{**base, **overrides}).validate()
    assert "\n" not in str(err.value)


def test_presets_and_gpt_config():
    paper = gpt_config("gpt-404m", vocab_size=100000, num_classes=1000, block_size=256)
    assert (paper.n_layer, paper.n_head, paper.n_embd) == (24, 16, 1024)
    tiny_cfg = gpt_config("gpt-tiny", vocab_size=N, num_classes=C, block_size=L, positions="learned")
    assert tiny_cfg.positions == "learned" and set(GPT_PRESETS) >= {"gpt-tiny", "gpt-small", "gpt-base", "gpt-404m"}
    with pytest.raises(ValueError, match="available: gpt-tiny") as err:
        gpt_config("gpt-huge", vocab_size=N, num_classes=C, block_size=L)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="unknown GPTConfig field"):
        gpt_config("gpt-tiny", vocab_size=N, num_classes=C, block_size=L, n_layers=3)
    assert GPTConfig.from_dict(tiny_cfg.to_dict()) == tiny_cfg
    assert GPTConfig().override(["positions=learned", "token_corruption=0.1"]).validate().positions == "learned"
    assert math.isclose(GPTConfig().token_corruption, 0.2) and GPTConfig().class_dropout == 0.1
