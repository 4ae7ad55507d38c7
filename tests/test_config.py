"""Config helpers: renamed fields keep working with a warning; one way to list differences."""
from dataclasses import dataclass, field

import pytest

from vqgan_lc.config import Config, config_differences, renamed


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
