"""The generation demo's report: what snapping costs, with its sign, beside the snapped numbers."""
from vqgan_lc.generate.demo import _markdown, _snap_cost


def _scores(fd, cc, scale=4.0):
    return {"fd_lite0": fd, "class_consistency": cc, "guidance_scale": scale, "utilization": 0.5, "num_used": 12}


def test_snap_cost_is_positive_when_snapping_makes_samples_worse():
    cost = _snap_cost(_scores(30.0, 0.70), _scores(25.0, 0.80))  # snapped worse on both counts
    assert cost["snap_cost_fd_lite0"] == 5.0 and abs(cost["snap_cost_class_consistency"] - 0.10) < 1e-12
    better = _snap_cost(_scores(20.0, 0.90), _scores(25.0, 0.80))
    assert better["snap_cost_fd_lite0"] == -5.0 and better["snap_cost_class_consistency"] < 0
    assert _snap_cost(_scores(20.0, None), _scores(25.0, 0.8))["snap_cost_class_consistency"] is None


def test_markdown_puts_the_unsnapped_row_beside_the_snapped_one():
    dit = {"guided": _scores(30.0, 0.7), "unguided": _scores(40.0, 0.5, 1.0), "guided_nosnap": _scores(25.0, 0.8)}
    dit.update(_snap_cost(dit["guided"], dit["guided_nosnap"]))
    gpt = {"guided": _scores(10.0, 0.9, 3.0), "unguided": _scores(12.0, 0.6, 1.0)}
    text = _markdown({"runs": {"gpt-lc": gpt, "dit-lc": dit}, "seconds": 1.0})
    rows = [line for line in text.splitlines() if line.startswith("| dit-lc")]
    assert [r.split(" | ")[1] for r in rows] == ["4.0", "4.0, latents not snapped", "1.0"]
    assert "| 25.00 |" in rows[1] and "80.0%" in rows[1]
    assert "dit-lc +5.00 FD-lite0, +10.0 points of class consistency" in text
    assert "gpt-lc +" not in text and sum(line.startswith("| gpt-lc") for line in text.splitlines()) == 2
