"""meta-sgd: Meta-SGD learns its per-weight α away from the initial value; MAML has none."""

import json

import pytest

from fastmaml.studies import run_study, strict_json


def test_quick_study(tmp_path):
    summary = run_study("meta-sgd", tmp_path, quick=True)
    results = summary["results"]
    assert set(results) == {"k5-maml", "k5-meta-sgd", "k10-maml", "k10-meta-sgd"}
    for key, r in results.items():
        if not r["meta_sgd"]:
            assert "alpha" not in r
            continue
        stats = r["alpha"]
        assert set(stats) == {"net.0.weight", "net.0.bias", "net.2.weight", "net.2.bias", "net.4.weight", "net.4.bias"}
        for name, s in stats.items():
            assert max(abs(s["min"] - 0.01), abs(s["max"] - 0.01)) > 1e-3, (key, name, s)
        assert stats["net.2.weight"]["std"] > 1e-3 and stats["net.2.weight"]["numel"] == 1600
        assert r["mse_1"] < r["mse_0"]
    headlines = summary["headlines"]
    assert headlines["K=10: Meta-SGD MSE after 1 step"] == results["k10-meta-sgd"]["mse_1"]
    steps = results["k5-maml"]["maml_steps_to_meta_sgd_1"]
    assert headlines["K=5: MAML steps to Meta-SGD's one-step MSE"] == (float("inf") if steps is None else steps)
    # NAME.json is strict JSON: a diverged number (Meta-SGD's MSE after 10 steps at this budget) was a bare
    # NaN token, which jq and JavaScript refuse; it is now the string "nan", which float() reads back
    text = (tmp_path / "meta-sgd.json").read_text()
    strict = json.loads(text, parse_constant=lambda token: pytest.fail(f"{token} in meta-sgd.json"))
    assert strict["headlines"].keys() == headlines.keys()
    assert [float(v) for v in strict["headlines"].values()] == pytest.approx(list(headlines.values()), nan_ok=True)


def test_strict_json_writes_non_finite_numbers_as_strings_the_seeds_summary_reads():
    value = {"a": [1.0, float("nan")], "b": (float("inf"), -float("inf")), "c": {"d": 2, "e": "x"}}
    assert strict_json(value) == {"a": [1.0, "nan"], "b": ["inf", "-inf"], "c": {"d": 2, "e": "x"}}
    assert [float(v) for v in strict_json(value)["b"]] == [float("inf"), -float("inf")]
