import json
import math

from fastmaml.engine.run_dir import EVAL, write_eval


def test_write_eval_keeps_number_lists_on_one_line_and_round_trips(tmp_path):
    report = {
        "experiment": "demo",
        "tasks": 3,
        "metrics": {"maml": {"accuracy": {"mean": [0.2, 0.96], "ci95": [0.01, 1e-05],
                                          "per_task": [[0.2, 0.4, -1.5e-07], [1.0, 1, 0.8]]}}},
        "labels": ["a", "b"],  # a list of strings stays as json.dumps indents it
        "odd": [float("nan"), 1.0],
    }
    (tmp_path / EVAL).write_text("old report")
    write_eval(tmp_path, report)
    text = (tmp_path / EVAL).read_text()
    assert '"mean": [0.2, 0.96],' in text
    assert '"per_task": [\n' in text and "[0.2, 0.4, -1.5e-07]," in text and "[1.0, 1, 0.8]\n" in text
    assert '"labels": [\n' in text
    loaded = json.loads(text)
    assert math.isnan(loaded.pop("odd")[0])
    report.pop("odd")
    assert loaded == report
    assert sorted(p.name for p in tmp_path.iterdir()) == [EVAL]  # the temporary file was renamed


def test_write_eval_is_far_smaller_than_one_number_per_line(tmp_path):
    per_task = [[round(0.01 * ((i * 7 + s) % 100), 2) for i in range(600)] for s in range(11)]
    report = {"metrics": {"maml": {"accuracy": {"mean": [0.5] * 11, "per_task": per_task}}}}
    write_eval(tmp_path, report)
    assert len((tmp_path / EVAL).read_text()) < 0.5 * len(json.dumps(report, indent=2))


def test_write_eval_through_a_symbolic_link_replaces_the_file_it_links_to(tmp_path):
    kept = tmp_path / "reports"
    kept.mkdir()
    run = tmp_path / "run"
    run.mkdir()
    (run / EVAL).symlink_to(kept / "run.eval.json")
    write_eval(run, {"tasks": 3, "steps": 1})
    assert (run / EVAL).is_symlink() and json.loads((kept / "run.eval.json").read_text())["tasks"] == 3
    assert sorted(p.name for p in kept.iterdir()) == ["run.eval.json"]  # no temporary file left


def test_state_problem_accepts_what_runs_wrote_and_names_what_they_did_not():
    from fastmaml.engine.run_dir import state_problem

    meta = {"experiment": "sinusoid", "config": {}, "step": 4, "elapsed_s": 0.5, "metrics": [{"step": 4}],
            "best": {"step": 2, "metric": "val_mse", "value": 0.3}}
    assert state_problem(meta, "sinusoid") is None
    # a version before 2026-12-07 could keep a NaN validation as the best: such a run still resumes
    assert state_problem({**meta, "best": {**meta["best"], "value": float("nan")}}, "sinusoid") is None
    assert state_problem({**meta, "best": None}, "sinusoid") is None
    assert state_problem({**meta, "step": True}, "sinusoid") == "step = true, not an iteration count"
    assert state_problem({**meta, "elapsed_s": float("inf")}, "sinusoid") == "elapsed_s = Infinity, not a time in seconds"
    assert state_problem(meta, "table") == 'it holds a "sinusoid" run, this one is "table"'
