"""--seeds: a study once per training seed, its headline numbers summarised over the seeds."""

import json
import math

import pytest
import torch

from fastmaml.cli import main
from fastmaml.engine.evaluate import mean_ci95_t
from fastmaml.errors import CheckpointError, ConfigError
from fastmaml.studies import run_seeds, run_study


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
    assert summary["seeds_wall_s"] == [json.loads((tmp_path / f"seed-{s}" / "linear.json").read_text())["wall_s"]
                                       for s in (0, 1, 2)]
    # a seed that diverged (NaN): no mean over the seeds, the count said, and the JSON stays strict JSON
    path = tmp_path / "seed-2" / "linear.json"
    diverged = json.loads(path.read_text())
    diverged["headlines"]["wide: measured θ"] = float("nan")
    path.write_text(json.dumps(diverged))
    summary = run_seeds("linear", tmp_path, [0, 1, 2], quick=True)
    row = next(r for r in summary["headlines"] if r["name"] == "wide: measured θ")
    assert row["mean"] is None and row["ci95"] is None and row["not_finite"] == 1 and row["values"][2] == "nan"
    assert "not finite at 1 of 3" in (tmp_path / "linear.seeds.txt").read_text(encoding="utf-8")
    json.loads((tmp_path / "linear.seeds.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
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
    with pytest.raises(ConfigError, match=r"seed-1/linear.json reports other numbers than .*seed-0/linear.json"):
        run_seeds("linear", tmp_path, [0, 1], quick=True)
    for broken in ("{}", json.dumps({**summary, "headlines": {"x": None}})):
        path.write_text(broken)
        with pytest.raises(ConfigError, match="is not a finished study"):
            run_seeds("linear", tmp_path, [0, 1], quick=True)


def test_every_finished_seed_is_checked_before_one_trains(tmp_path, monkeypatch):
    run_seeds("linear", tmp_path, [0, 1], quick=True)
    path = tmp_path / "seed-1" / "linear.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "options": {"data": "elsewhere"}}))
    trained = []
    monkeypatch.setattr("fastmaml.studies.run_study", lambda *a, **k: trained.append(k["seed"]))
    with pytest.raises(ConfigError, match=r"seed-1/linear.json was run with the options \{'data': 'elsewhere'\}"):
        run_seeds("linear", tmp_path, [2, 1], quick=True)
    assert trained == []  # seed 2 did not train first


def test_t_quantiles_beyond_the_table():
    from fastmaml.engine.evaluate import t975

    assert t975(2) == 4.303 and t975(30) == 2.042
    # exact values: t(31) 2.0395, t(40) 2.0211, t(60) 2.0003, t(120) 1.9799; the normal's 1.96 in the limit
    for df, exact in ((31, 2.0395), (40, 2.0211), (60, 2.0003), (120, 1.9799)):
        assert t975(df) == pytest.approx(exact, abs=2e-4)
    assert t975(10**6) == pytest.approx(1.96, abs=1e-4)


def test_a_stopped_study_says_so_and_a_rerun_names_its_folder_before_training(tmp_path, monkeypatch, capsys):
    """A study stopped by SIGTERM printed the run's own "continue with: fastmaml train --resume RUN",
    which finished that run alone; run again, the study then failed on that run's folder only when it
    was due (with --seeds: one folder at a time, and after other seeds had trained)."""
    from fastmaml.errors import TrainingStopped
    from fastmaml.studies import linear

    def stopped_in_its_second_run(out, budget, seed=0, **options):
        (out / "linear" / "setting-0").mkdir(parents=True)
        (out / "linear" / "setting-0" / "config.json").write_text("{}")
        raise TrainingStopped(f"stopped by SIGTERM at iteration 3, with a checkpoint there in {out}/linear/setting-1; "
                              f"continue with: fastmaml train --resume {out}/linear/setting-1", 15)

    monkeypatch.setattr(linear, "run", stopped_in_its_second_run)
    assert main(["study", "linear", "--quick", "--out", str(tmp_path / "one")]) == 143
    err = capsys.readouterr().err.strip()
    assert err == f"fastmaml: study linear stopped by SIGTERM; a study is not resumed: delete {tmp_path}/one/linear " \
                  "and run it again"
    monkeypatch.undo()
    assert main(["study", "linear", "--quick", "--out", str(tmp_path / "one")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{tmp_path}/one/linear holds the runs of a study that stopped before it finished" in err
    # --seeds: seed 0 finished, seed 1 stopped; seed 2 must not train before seed 1's folder is named
    run_study("linear", tmp_path / "seeds" / "seed-0", quick=True, seed=0)
    (tmp_path / "seeds" / "seed-1" / "linear" / "setting-0").mkdir(parents=True)
    trained = []
    monkeypatch.setattr("fastmaml.studies.run_study", lambda *a, **k: trained.append(k["seed"]))
    with pytest.raises(CheckpointError, match="seed-1/linear holds the runs of a study that stopped"):
        run_seeds("linear", tmp_path / "seeds", [0, 2, 1], quick=True)
    assert trained == []


def test_the_recorded_study_reports_are_strict_json():
    """docs/studies held bare NaN and Infinity tokens (written before strict_json), which jq's and
    JavaScript's parsers refuse; NAME.json promises the strings "nan", "inf", "-inf" instead."""
    from pathlib import Path

    def refuse(token):
        raise ValueError(f"bare {token}")

    recorded = sorted((Path(__file__).parents[3] / "docs" / "studies").rglob("*.json"))
    assert len(recorded) >= 30  # six studies at five seeds, and their summaries
    for path in recorded:
        json.loads(path.read_text(), parse_constant=refuse)
