"""--seeds: a study once per training seed, its headline numbers summarised over the seeds."""

import json
import math

import pytest
import torch

from fastmaml.cli import main
from fastmaml.errors import ConfigError
from fastmaml.studies import run_seeds, run_study
from fastmaml.engine.evaluate import mean_ci95_t


def test_the_interval_over_seeds_uses_students_t():
    mean, ci = mean_ci95_t(torch.tensor([[1.0, 5.0], [2.0, 5.0], [3.0, 5.0]]))
    assert mean.tolist() == pytest.approx([2.0, 5.0])
    assert ci.tolist() == pytest.approx([4.303 / math.sqrt(3), 0.0], rel=1e-4)  # t(2) = 4.303, not the normal's 1.96
    assert mean_ci95_t(torch.tensor([0.5]))[0].item() == 0.5 and math.isnan(mean_ci95_t(torch.tensor([0.5]))[1])
    mean, ci = mean_ci95_t(torch.tensor([1.0, float("inf")]))
    assert not math.isfinite(mean) and math.isnan(ci)  # a diverged seed is not averaged away
    assert mean_ci95_t(torch.randn(40, generator=torch.Generator().manual_seed(0)))[1] > 0


def test_seeds_train_differently_and_are_summarised(tmp_path, capsys):
    assert main(["study", "linear", "--quick", "--seeds", "0,1", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "mean ± 95% CI" in printed and "training seed 1 (2 of 2)" in printed
    runs = [json.loads((tmp_path / f"seed-{s}" / "linear.json").read_text()) for s in (0, 1)]
    assert [r["seed"] for r in runs] == [0, 1]
    assert runs[0]["results"]["wide"]["measured"] != runs[1]["results"]["wide"]["measured"]  # the seed reaches training
    summary = json.loads((tmp_path / "linear.seeds.json").read_text())
    assert summary["seeds"] == [0, 1] and summary["quick"]
    row = next(r for r in summary["headlines"] if r["name"] == "wide: measured θ")
    values = [r["results"]["wide"]["measured"] for r in runs]
    assert row["values"] == values and row["mean"] == pytest.approx(sum(values) / 2)
    assert row["ci95"] == pytest.approx(12.706 * abs(values[0] - values[1]) / 2, rel=1e-4)
    assert (tmp_path / "linear.seeds.txt").read_text(encoding="utf-8").startswith("study linear over 2 training seeds")

    # more seeds later: the finished ones are read, not trained again
    before = (tmp_path / "seed-0" / "linear.json").stat().st_mtime_ns
    summary = run_seeds("linear", tmp_path, [0, 1, 2], quick=True)
    assert (tmp_path / "seed-0" / "linear.json").stat().st_mtime_ns == before
    assert [len(r["values"]) for r in summary["headlines"]] == [3] * len(summary["headlines"])
    # a finished seed of another budget is not mixed in
    with pytest.raises(ConfigError, match="holds a --quick run at seed 0, not a run at seed 0"):
        run_seeds("linear", tmp_path, [0, 1])


def test_single_seed_and_bad_seed_lists(tmp_path, capsys):
    run = run_study("linear", tmp_path / "one", quick=True, seed=3)
    assert run["seed"] == 3 and "training seed 3" in run["text"]
    assert main(["study", "linear", "--quick", "--seeds", "1", "--out", str(tmp_path)]) == 2
    assert "two or more different seeds" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["study", "linear", "--seeds", "0,x"])
    assert exit_.value.code == 2 and "comma-separated integers" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="has no option --data"):  # before any seed trains
        run_seeds("linear", tmp_path / "x", [0, 1], quick=True, data="somewhere")
    assert not (tmp_path / "x").exists()


def test_a_seed_run_by_another_version_is_named(tmp_path):
    run_seeds("linear", tmp_path, [0, 1], quick=True)
    path = tmp_path / "seed-1" / "linear.json"
    summary = json.loads(path.read_text())
    summary["headlines"]["a number an older version reported"] = 1.0
    path.write_text(json.dumps(summary))
    with pytest.raises(ConfigError, match=r"seed-1/linear.json reports other numbers than seed 0's"):
        run_seeds("linear", tmp_path, [0, 1], quick=True)
    path.write_text("{}")
    with pytest.raises(ConfigError, match="is not a finished study"):
        run_seeds("linear", tmp_path, [0, 1], quick=True)
