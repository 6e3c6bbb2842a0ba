"""inner-steps: each N trains and scores; a meta-update costs more with more inner steps."""

import json

from fastmaml.studies import run_study


def test_quick_study(tmp_path):
    results = run_study("inner-steps", tmp_path, quick=True)["results"]
    assert list(results) == ["1", "2", "3", "5"]
    for r in results.values():
        assert r["mse_n"] < r["mse_0"]  # adapting with the N steps it was trained for helps
        assert len(r["curve"]) == 11
    # about 3x on a quiet 2-core machine (2.3 vs 6.9 ms); the fastest of 5 rounds each, so that a busy
    # machine does not erase it (with 2 rounds, beside two RL runs, once 1.42x)
    assert results["5"]["ms_per_iteration"] > 1.5 * results["1"]["ms_per_iteration"]
    assert (tmp_path / "inner-steps.png").is_file() and (tmp_path / "inner-steps.json").is_file()
    headlines = json.loads((tmp_path / "inner-steps.json").read_text())["headlines"]  # what --seeds summarises
    assert headlines["N=3 minus the N=1 run, MSE after 3 steps, paired"] == results["3"]["paired_vs_n1"]["3"][0]
    assert headlines["N=5: time per iteration / N=1's"] > 1.5
