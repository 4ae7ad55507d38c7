"""The shared config rules: NaN and infinity are refused for every number, once, by `validate()`;
saved settings are compared key by key."""
import math

import pytest

from vqgan_lc.config import differing_keys
from vqgan_lc.generate.sample import SampleConfig
from vqgan_lc.tokenizer.training import TokenizerTrainConfig


@pytest.mark.parametrize("override, key", [
    ("lr=nan", "lr"), ("min_lr=-inf", "min_lr"), ("grad_clip=inf", "grad_clip"), ("ema_decay=nan", "ema_decay"),
    ("betas=0.5,nan", "betas"), ("loss.disc_weight=inf", "loss.disc_weight"),
    ("model.quantizer.beta=nan", "model.quantizer.beta"), ("warmup_epochs=inf", "warmup_epochs"),
])
def test_nan_and_inf_in_any_float_setting_are_refused_naming_the_key(override, key):
    config = TokenizerTrainConfig().override([override])
    with pytest.raises(ValueError, match=rf"^{key} must be a finite number") as refused:
        config.validate()
    assert "\n" not in str(refused.value)


def test_every_config_class_gets_the_rule_without_its_own_check():
    # the checks below compare with `<` and `>`, which NaN passes: the rule lives in validate()
    with pytest.raises(ValueError, match="cfg_scale must be a finite number"):
        SampleConfig(run="r", out="o", cfg_scale=math.nan).validate()
    with pytest.raises(ValueError, match="temperature must be a finite number"):
        SampleConfig(run="r", out="o", temperature=math.inf).validate()
    with pytest.raises(ValueError, match="top_p must be a finite number"):  # an optional float too
        SampleConfig(run="r", out="o", top_p=math.nan).validate()
    TokenizerTrainConfig().override(["lr=1e-3", "max_steps=none"]).validate()  # finite values pass


def test_a_class_attribute_is_not_an_override_key():
    with pytest.raises(ValueError, match="unknown field 'bookkeeping_fields'"):
        TokenizerTrainConfig().override(["bookkeeping_fields=lr"])


def test_differing_keys_are_dotted_and_read_as_json():
    saved = {"lr": 1e-3, "betas": [0.5, 0.9], "model": {"quantizer": {"dim": 8}}}
    now = {"lr": 1e-3, "betas": (0.5, 0.9), "model": {"quantizer": {"dim": 16}}, "seed": 0}
    assert differing_keys(saved, now) == ["model.quantizer.dim", "seed"]
