"""benchmarks/fo_vs_so_gradient.py: the first-order meta-gradient against the exact one at a run's weights."""

import importlib.util
from pathlib import Path

import pytest

from fastmaml.cli import main

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "fo_vs_so_gradient.py"
spec = importlib.util.spec_from_file_location("fo_vs_so_gradient", SCRIPT)
probe_module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(probe_module)


def test_first_order_meets_second_order_as_the_inner_step_vanishes_and_not_for_a_big_one(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "sinusoid", "--iterations", "20", "--out", str(run), "--no-progress",
                 "--set", "log_every=10", "--set", "checkpoint_every=10"]) == 0
    tiny = probe_module.probe(run, batches=2, overrides=["inner_lr=1e-7"])
    assert tiny["step"] == 20 and tiny["inner_lr"] == 1e-7 and len(tiny["batches"]) == 2
    assert tiny["mean"]["cosine"] == pytest.approx(1.0, abs=1e-5)
    assert tiny["mean"]["norm_ratio"] == pytest.approx(1.0, abs=1e-5)
    big = probe_module.probe(run, batches=2, overrides=["inner_lr=1.0"])
    assert big["mean"]["cosine"] < 0.99  # the Hessian term (I - αH) matters at α = 1
    assert big["batches"][0]["output_scale_before_adaptation"] == tiny["batches"][0]["output_scale_before_adaptation"]
    fresh = probe_module.probe(run, batches=1, init=True, overrides=["inner_lr=1.0"])
    assert fresh["step"] == 0 and fresh["mean"] != big["mean"]
    assert fresh["mean"] == probe_module.probe(run, batches=1, init=True, overrides=["inner_lr=1.0"])["mean"]
