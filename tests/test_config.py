"""The shared config rules: NaN and infinity are refused for every number, once, by `validate()`;
saved settings are compared key by key; renamed fields keep working with a warning."""
import math
from dataclasses import dataclass, field

import pytest

from vqgan_lc.config import Config, config_differences, renamed

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


def test_differences_are_dotted_and_read_as_json():
    saved = {"lr": 1e-3, "betas": [0.5, 0.9], "model": {"quantizer": {"dim": 8}}}
    now = {"lr": 1e-3, "betas": (0.5, 0.9), "model": {"quantizer": {"dim": 16}}, "seed": 0}
    assert config_differences(saved, now) == ["model.quantizer.dim", "seed"]


@dataclass
class Inner(Config):
    width: int = 8
    sizes: tuple[int, ...] = (1, 2)


@dataclass
class Outer(Config):
    renamed_fields = {"num_codes": "codebook_size"}
    codebook_size: int = 16
    inner: Inner = field(default_factory=Inner)
    out_dir: str = "runs/x"


def test_a_renamed_field_is_read_written_built_loaded_and_overridden_under_its_old_name():
    with pytest.warns(DeprecationWarning, match="num_codes is deprecated; use codebook_size"):
        config = Outer(num_codes=4)
    assert config.codebook_size == 4 and "num_codes" not in config.to_dict()
    with pytest.warns(DeprecationWarning):
        assert config.num_codes == 4
    with pytest.warns(DeprecationWarning):
        config.num_codes = 5
    assert config.codebook_size == 5
    with pytest.warns(DeprecationWarning):
        assert Outer.from_dict({"num_codes": 6}).codebook_size == 6  # a config saved before the rename
    with pytest.warns(DeprecationWarning):
        assert Outer().override(["num_codes=7"]).codebook_size == 7
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        config.nope  # noqa: B018


def test_renamed_property_forwards_with_a_warning():
    class Counter:
        codebook_size = 3
        num_codes = renamed("codebook_size", "num_codes")

    counter = Counter()
    with pytest.warns(DeprecationWarning):
        assert counter.num_codes == 3


def test_config_differences_name_dotted_keys_and_skip_ignored_ones():
    old = Outer()
    new = Outer(codebook_size=32, inner=Inner(width=4), out_dir="elsewhere")
    assert config_differences(old, new) == ["codebook_size", "inner.width", "out_dir"]
    assert config_differences(old.to_dict(), new, ignore=("out_dir", "inner")) == ["codebook_size"]
    saved = {"codebook_size": 16, "inner": {"width": 8, "sizes": [1, 2]}, "out_dir": "runs/x"}  # as JSON gives it back
    assert config_differences(saved, old) == []
    assert config_differences({"inner": {"width": 8}}, {"inner": {"width": 8, "extra": 1}}) == ["inner.extra"]


def test_read_saved_fills_fields_added_since_and_keeps_what_it_cannot_read():
    saved = {"codebook_size": 32, "inner": {"sizes": [1, 2]}}  # written before out_dir and inner.width existed
    assert Outer.read_saved(saved) == Outer(codebook_size=32).to_dict()
    assert config_differences(Outer.read_saved(saved), Outer(codebook_size=32)) == []
    foreign = {"codebook_size": 32, "layers": 4}  # another family's fields: compared as it is
    assert Outer.read_saved(foreign) is foreign


def test_describe_fields_lists_the_defaults_a_parent_gives_its_nested_configs():
    # the study trains the tiny preset's autoencoder: its --help must not print AutoencoderConfig()'s 256 px
    from vqgan_lc.study import StudyConfig

    rows = {key: default for key, _, default in StudyConfig.describe_fields()}
    assert rows["autoencoder.resolution"] == StudyConfig().autoencoder.resolution == 64
    assert rows["loss.disc_start"] == StudyConfig().loss.disc_start
