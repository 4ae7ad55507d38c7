"""`vqgan-lc demo --generate ...` in its reduced mode (about 10 s): the report a user is promised."""
import json

import pytest

from vqgan_lc.cli import main

ENTRY_FIELDS = {"class_consistency", "fd_lite0", "utilization", "num_used", "num_tokens", "num_samples",
                "guidance_scale", "samples"}


def test_quick_diffusion_demo_on_lc_only_writes_guided_unguided_and_unsnapped_runs(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--generate", "dit", "--tokenizers", "lc", "--quick", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert set(report["runs"]) == {"dit-lc"}  # --tokenizers lc: no VQGAN baseline trained
    assert not (out / "tokenizers" / "vqgan").exists()
    entry = report["runs"]["dit-lc"]
    for mode in ("guided", "unguided", "guided_nosnap"):
        assert ENTRY_FIELDS <= set(entry[mode]), mode
    assert entry["guided_nosnap"]["same_latents_as_snapped"] is True
    assert entry["snap_cost_fd_lite0"] == pytest.approx(entry["guided"]["fd_lite0"] - entry["guided_nosnap"]["fd_lite0"])
    guided = out / "samples" / "dit-lc"
    assert sorted(p.name for p in guided.iterdir() if p.is_dir() and p.name.isdigit()) == [str(d) for d in range(10)]


def test_unknown_tokenizer_is_refused_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["demo", "--generate", "dit", "--tokenizers", "lc,fc", "--out", str(tmp_path / "x")])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "choose tokenizers from lc,vq" in err and "\n" not in err
