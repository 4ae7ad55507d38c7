"""GPT-LC: a minGPT checkpoint in the reference layout converts to our GPT with equal logits,
and samples as the reference's eval script does (class token first, temperature 1, no top-k filter)."""
import json

import pytest
import torch
import torch.nn.functional as F

from reference_layouts import (mingpt_logits, mingpt_state, reference_tokenizer_state, tokenizer_config)
from vqgan_lc.generate.gpt import GPT
from vqgan_lc.generate.reference import (convert_reference, gpt_from_reference_state, reference_protocol,
                                         sample_reference)
from vqgan_lc.pretrained import load_pretrained

N, C, WIDTH, HEADS, LAYERS, TOKENS = 40, 5, 32, 4, 2, 16


@pytest.fixture(scope="module")
def reference():
    return mingpt_state(N + C, TOKENS + 1, LAYERS, WIDTH)


def test_logits_equal_the_reference_forward(reference):
    model = gpt_from_reference_state(reference, N, n_head=HEADS)
    g = torch.Generator().manual_seed(1)
    labels = torch.tensor([0, 3, 4])
    tokens = torch.randint(0, N, (3, TOKENS - 1), generator=g)
    ours = model.logits(tokens, labels)                                   # (3, TOKENS, N)
    ids = torch.cat([labels[:, None] + N, tokens], dim=1)                 # the reference's class token first
    expected = mingpt_logits(reference, ids, HEADS)[..., :N]             # it samples among image ids only
    assert ours.shape == expected.shape
    assert torch.allclose(ours, expected, atol=1e-5, rtol=0), (ours - expected).abs().max()
    assert model.config.num_classes == C and model.config.positions == "learned" and model.config.norm == "layernorm"


def test_reference_protocol_sampling_equals_the_reference_loop(reference):
    model = gpt_from_reference_state(reference, N, n_head=HEADS)
    labels = torch.tensor([1, 2])
    ours = sample_reference(model, "gpt", labels, generator=torch.Generator().manual_seed(7))
    # eval_generation.py -> VQGANTransformer.sample: the whole prefix recomputed every step,
    # logits[:, -1, :N] / temperature, top-k over all N ids (no filter), softmax, multinomial.
    g = torch.Generator().manual_seed(7)
    x = labels[:, None] + N
    for _ in range(TOKENS):
        logits = mingpt_logits(reference, x, HEADS)[:, -1, :N] / 1.0
        x = torch.cat([x, torch.multinomial(F.softmax(logits, dim=-1), 1, generator=g)], dim=1)
    assert torch.equal(ours, x[:, 1:])


def test_protocol_record_names_both_top_k_settings():
    protocol = reference_protocol("gpt")
    assert protocol["top_k"] == 100_000 and protocol["guidance_scale"] == 1.0 and protocol["temperature"] == 1.0
    assert protocol["sampler_options"]["top_k"] == 0           # "off": every image id, as top-k 100,000 of 100,000
    text = " ".join(protocol["notes"])
    assert "24.6" in text and "15.4" in text and "10,000" in text


def test_convert_checkpoint_with_its_tokenizer(tmp_path, reference):
    tok_config = tokenizer_config(resolution=16, codebook_size=N)           # f4 -> 4x4 = TOKENS tokens
    checkpoint = {**{"transformer." + k: v for k, v in reference.items()},
                  **{"vqgan." + k: v for k, v in reference_tokenizer_state(tok_config).items()}}
    path = tmp_path / "gpt-lc-100K-f16.pth"
    torch.save(checkpoint, path)
    process = convert_reference("gpt", path, tmp_path / "out", num_heads=HEADS)
    generator, tokenizer = load_pretrained(tmp_path / "out/generator"), load_pretrained(tmp_path / "out/tokenizer")
    assert isinstance(generator, GPT) and tokenizer.num_codes == N
    assert tokenizer.config.autoencoder.resolution == 16
    assert torch.equal(tokenizer.state_dict()["quantizer.codebook"], checkpoint["vqgan.tok_embeddings.weight"])
    saved = json.loads((tmp_path / "out/process.json").read_text())
    assert saved == json.loads(json.dumps(process)) and saved["sampling"]["sampler"] == "ar"
    import hashlib
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert saved["source"]["sha256"] == digest
    card = (tmp_path / "out/generator/README.md").read_text()
    assert digest in card and "gpt-lc-100K-f16.pth" in card
