"""benchmarks/rl_compare_runs.py: runs evaluated alike merge into one table and paired differences;
runs evaluated differently are refused."""

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[3] / "benchmarks" / "rl_compare_runs.py"
spec = importlib.util.spec_from_file_location("rl_compare_runs", SCRIPT)
compare = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compare)


def write_eval(run: Path, methods: dict, seed: int = 7, step: int = 100) -> Path:
    run.mkdir()
    metrics = {m: {"return": {"mean": [v, v + 1], "ci95": [0.5, 0.5]}} for m, v in methods.items()}
    report = {"experiment": "rl cheetah-dir", "checkpoint": "checkpoint", "step": step, "tasks": 4, "steps": 1,
              "seed": seed, "trajectories": 2, "metrics": metrics}
    (run / "eval.json").write_text(json.dumps(report))
    return run


def test_merge_takes_each_method_from_the_first_run_that_has_it(tmp_path):
    a = write_eval(tmp_path / "a", {"maml": 1.0, "random": 2.0})
    b = write_eval(tmp_path / "b", {"pretrained": 3.0, "random": 9.0, "oracle": 4.0}, step=50)
    report = compare.merge([a, b])
    assert list(report["metrics"]) == ["maml", "random", "pretrained", "oracle"]
    assert report["metrics"]["random"]["return"]["mean"] == [2.0, 3.0]
    assert report["runs"]["pretrained"] == f"{b} (iteration 50)"
    table = compare.table(report)
    assert "| pretrained |" in table and "3.00 ± 0.50 | 4.00 ± 0.50 |" in table


def test_runs_evaluated_differently_are_refused(tmp_path):
    a = write_eval(tmp_path / "a", {"maml": 1.0})
    b = write_eval(tmp_path / "b", {"oracle": 1.0}, seed=8)
    with pytest.raises(SystemExit, match="seed=8"):
        compare.merge([a, b])
    with pytest.raises(SystemExit, match="no eval.json"):
        compare.merge([a, tmp_path])


def test_paired_differences_are_taken_task_by_task(tmp_path):
    a = write_eval(tmp_path / "a", {"maml": 1.0})
    b = write_eval(tmp_path / "b", {"pretrained": 0.0, "oracle": 0.0})
    assert "no paired differences" in compare.paired(compare.merge([a, b]))  # eval.json from before per_task

    per_task = {"maml": [[1, 2, 3, 4], [5, 6, 7, 8]], "pretrained": [[0, 2, 2, 4], [5, 5, 5, 5]],
                "oracle": [[9, 9, 9, 9], [9, 9, 9, 9]]}
    for run in (a, b):
        report = json.loads((run / "eval.json").read_text())
        for method, values in report["metrics"].items():
            values["return"]["per_task"] = per_task[method]
        (run / "eval.json").write_text(json.dumps(report))
    lines = compare.paired(compare.merge([a, b])).splitlines()
    assert "maml minus each method, paired over the same 4 tasks:" in lines
    # differences [1, 0, 1, 0] and [0, 1, 2, 3]: means 0.5 and 1.5, 1.96 std / 2 = 0.57 and 1.27
    assert "| maml - pretrained | +0.50 ± 0.57 | +1.50 ± 1.27 |" in lines
    assert "| maml - oracle | -6.50 ± 1.27 | -2.50 ± 1.27 |" in lines
