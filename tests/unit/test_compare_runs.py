"""fastmaml compare (fastmaml.engine.compare, and benchmarks/rl_compare_runs.py on top of it): runs
evaluated alike merge into one table and paired differences; runs evaluated differently are refused."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fastmaml.cli import main
from fastmaml.engine import compare
from fastmaml.errors import ConfigError

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "rl_compare_runs.py"


def write_eval(run: Path, methods: dict, seed: int = 7, step: int = 100, metric: str = "return", **extra) -> Path:
    run.mkdir(parents=True)
    metrics = {m: {metric: {"mean": [v, v + 1], "ci95": [0.5, 0.5]}} for m, v in methods.items()}
    report = {"experiment": "rl cheetah-dir", "checkpoint": "checkpoint", "step": step, "tasks": 4, "steps": 1,
              "seed": seed, "trajectories": 2, "metrics": metrics, **extra}
    (run / "eval.json").write_text(json.dumps(report))
    return run


def add_per_task(run: Path, per_task: dict, metric: str = "return") -> None:
    report = json.loads((run / "eval.json").read_text())
    for method, values in report["metrics"].items():
        values[metric]["per_task"] = per_task[method]
    (run / "eval.json").write_text(json.dumps(report))


def test_merge_shows_a_method_once_when_runs_agree_and_once_per_run_when_they_differ(tmp_path):
    a = write_eval(tmp_path / "a", {"maml": 1.0, "random": 2.0})
    b = write_eval(tmp_path / "b", {"pretrained": 3.0, "random": 2.0, "oracle": 4.0}, step=50)
    report = compare.merge([a, b])
    assert list(report["metrics"]) == ["maml", "random", "pretrained", "oracle"]  # the same random row: once
    assert report["runs"]["random"] == f"{a} (iteration 100)"
    assert report["runs"]["pretrained"] == f"{b} (iteration 50)"
    table = compare.table(report)
    assert "| pretrained |" in table and "3.0000 ± 0.5000 | 4.0000 ± 0.5000 |" in table
    # runs meta-tested at different iterations are compared, and the header says so (it did not)
    assert "the runs were meta-tested at different iterations (50, 100)" in compare.summary(report)

    c = write_eval(tmp_path / "c", {"maml": 1.5, "random": 2.0})
    report = compare.merge([a, c])
    assert list(report["metrics"]) == ["maml [a]", "maml [c]", "random"]
    assert "different iterations" not in compare.summary(report)
    assert report["metrics"]["maml [c]"]["return"]["mean"] == [1.5, 2.5]


def test_runs_evaluated_differently_or_not_at_all_are_refused(tmp_path):
    a = write_eval(tmp_path / "a", {"maml": 1.0})
    b = write_eval(tmp_path / "b", {"oracle": 1.0}, seed=8)
    with pytest.raises(ConfigError, match="seed=8"):
        compare.merge([a, b])
    # the original's step budget against K trajectories per task: other samples, not paired
    steps = write_eval(tmp_path / "steps", {"maml": 1.0}, sampling="steps", budget=400)
    with pytest.raises(ConfigError, match="has sampling='trajectories', .*'steps': .* the same --set sampling="):
        compare.merge([steps, a])
    with pytest.raises(ConfigError, match="is not a fastmaml run folder"):  # was: "run `fastmaml eval` first"
        compare.merge([a, tmp_path])
    with pytest.raises(ConfigError, match="nope does not exist; name the folders of trained runs"):
        compare.merge([a, tmp_path / "nope"])
    (tmp_path / "trained").mkdir()
    (tmp_path / "trained" / "config.json").write_text(json.dumps({"experiment": "sinusoid", "config": {}}))
    with pytest.raises(ConfigError, match="no eval.json; run `fastmaml eval"):
        compare.merge([a, tmp_path / "trained"])
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "eval.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not a readable eval report"):
        compare.merge([a, tmp_path / "broken"])


def test_runs_meta_tested_on_different_tasks_are_refused(tmp_path):
    """The same eval seed draws other tasks when what draws them differs (a sinusoid's amplitude range,
    a table's CSV, an image run's tree): before, compare paired them "over the same tasks"."""
    tasks = {"shots": 10, "eval_queries": 100, "amplitude": [0.1, 5.0]}
    a = write_eval(tmp_path / "a", {"maml": 1.0}, task_set=tasks)
    b = write_eval(tmp_path / "b", {"maml": 2.0}, task_set={**tasks, "amplitude": [0.1, 0.5]})
    with pytest.raises(ConfigError, match=r"b and .*a were meta-tested on different tasks \(amplitude \[0.1, 0.5\] "
                                          r"against \[0.1, 5.0\]\)"):
        compare.merge([a, b])
    same = write_eval(tmp_path / "same", {"maml": 3.0}, task_set=dict(tasks))
    older = write_eval(tmp_path / "older", {"maml": 4.0})  # a report written before task_set: not checked
    assert list(compare.merge([a, same, older])["metrics"]) == ["maml [a]", "maml [same]", "maml [older]"]
    # seed groups: each place (one training seed) is checked against the first group's run at that place
    runs = [[write_eval(tmp_path / f"{g}{i}", {"maml": 1.0 + i}, seed=i, task_set={**tasks, "seed": i})
             for i in range(2)] for g in ("x", "y")]
    compare.merge_seeds(runs)  # a table's held-out tasks follow the training seed: alike at each place
    runs[1][1] = write_eval(tmp_path / "z1", {"maml": 2.0}, seed=1, task_set={**tasks, "seed": 1, "shots": 5})
    with pytest.raises(ConfigError, match="z1 and .*x1 were meta-tested on different tasks"):
        compare.merge_seeds(runs)


def test_paired_differences_are_taken_task_by_task(tmp_path):
    a = write_eval(tmp_path / "a", {"maml": 1.0})
    b = write_eval(tmp_path / "b", {"pretrained": 0.0, "oracle": 0.0})
    assert "no paired differences" in compare.paired(compare.merge([a, b]))  # eval.json from before per_task

    per_task = {"maml": [[1, 2, 3, 4], [5, 6, 7, 8]], "pretrained": [[0, 2, 2, 4], [5, 5, 5, 5]],
                "oracle": [[9, 9, 9, 9], [9, 9, 9, 9]]}
    add_per_task(a, per_task)
    add_per_task(b, per_task)
    lines = compare.paired(compare.merge([a, b])).splitlines()
    assert "return: maml minus each other row, paired over the same 4 tasks:" in lines
    # differences [1, 0, 1, 0] and [0, 1, 2, 3]: means 0.5 and 1.5, 1.96 std / 2 = 0.57 and 1.27
    assert "| maml - pretrained | +0.5000 ± 0.5658 | +1.5000 ± 1.2652 |" in lines
    assert "| maml - oracle | -6.5000 ± 1.2652 | -2.5000 ± 1.2652 |" in lines


def test_cli_compares_two_supervised_runs_of_the_same_method(tmp_path, capsys):
    extra = {"experiment": "omniglot-5way-1shot"}
    a = write_eval(tmp_path / "so", {"maml": 0.9}, metric="accuracy", **extra)
    b = write_eval(tmp_path / "fo", {"maml": 0.8}, metric="accuracy", **extra)
    add_per_task(a, {"maml": [[0.2, 0.2, 0.4, 0.2], [1.0, 0.8, 1.0, 1.0]]}, "accuracy")
    add_per_task(b, {"maml": [[0.2, 0.2, 0.2, 0.2], [0.8, 0.8, 1.0, 0.6]]}, "accuracy")
    figure = tmp_path / "figs" / "compare.png"
    assert main(["compare", str(a), str(b), "--figure", str(figure)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("omniglot-5way-1shot: 4 meta-test tasks, seed 7, 2 trajectories")
    assert "| maml [so] - maml [fo] | +0.0500 ± 0.0980 | +0.1500 ± 0.1877 |" in out
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    assert main(["compare", str(a), str(tmp_path / "missing")]) == 2
    captured = capsys.readouterr()
    assert "missing does not exist; name the folders of trained runs" in captured.err
    assert "Traceback" not in captured.err
    assert main(["compare", str(a), "--figure", str(tmp_path / "x.jpg")]) == 2
    capsys.readouterr()
    (tmp_path / "afile").write_text("")  # a file where the figure's folder should be: before, a traceback
    assert main(["compare", str(a), "--figure", str(tmp_path / "afile" / "x.png")]) == 2
    err = capsys.readouterr().err
    assert f"cannot write --figure {tmp_path / 'afile' / 'x.png'}" in err and len(err.strip().splitlines()) == 1


def test_the_rl_script_is_the_cli_command(tmp_path):
    a = write_eval(tmp_path / "a", {"maml": 1.0})
    b = write_eval(tmp_path / "b", {"oracle": 4.0})
    done = subprocess.run([sys.executable, str(SCRIPT), str(a), str(b)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert "| oracle | " in done.stdout and "4.0000 ± 0.5000" in done.stdout


def test_iteration_compares_the_runs_snapshot_reports(tmp_path, capsys):
    """--iteration N reads each run's snapshots/iteration_N.eval.json (fastmaml eval RUN --iteration
    N), not its eval.json, and says which command makes a missing one."""
    a = write_eval(tmp_path / "a", {"maml": 1.0})
    b = write_eval(tmp_path / "b", {"maml": 1.5})
    for run, value in ((a, 7.0), (b, 8.0)):
        (run / "snapshots").mkdir()
        report = json.loads((run / "eval.json").read_text())
        report["step"] = 5000
        report["metrics"]["maml"]["return"]["mean"] = [value, value]
        (run / "snapshots" / "iteration_005000.eval.json").write_text(json.dumps(report))
    report = compare.merge([a, b], iteration=5000)
    assert report["metrics"]["maml [a]"]["return"]["mean"] == [7.0, 7.0]
    assert report["runs"]["maml [b]"] == f"{b} (iteration 5000)"
    assert compare.merge([a, b])["metrics"]["maml [a]"]["return"]["mean"] == [1.0, 2.0]  # without: eval.json
    with pytest.raises(ConfigError, match=r"has no snapshots/iteration_000100.eval.json; run `fastmaml eval .* "
                                          r"--iteration 100` first"):
        compare.merge([a, b], iteration=100)
    assert main(["compare", str(a), str(b), "--iteration", "5000"]) == 0
    assert "(iteration 5000)" in capsys.readouterr().out


def test_many_steps_show_a_bounded_set_of_columns_at_the_steps_they_name(tmp_path):
    runs = []
    for name, offset in (("a", 0.0), ("b", 1.0)):
        run = tmp_path / name
        run.mkdir()
        per_task = [[offset + k, offset + k + 2] for k in range(101)]  # step k's tasks: offset + k, offset + k + 2
        metrics = {"maml": {"mse": {"mean": [offset + k / 100 for k in range(101)], "ci95": [0.5] * 101,
                                    "per_task": per_task}}}
        (run / "eval.json").write_text(json.dumps({"experiment": "sinusoid", "checkpoint": "checkpoint", "step": 9,
                                                   "tasks": 2, "steps": 100, "seed": 7, "metrics": metrics}))
        runs.append(run)
    text = compare.summary(compare.merge(runs))
    assert text.splitlines()[0].endswith("; 12 of the 101 step columns shown (each run's eval.json has every step)")
    header = next(line for line in text.splitlines() if line.startswith("| method | run |"))
    steps = [int(cell.split()[0]) for cell in header.strip("| ").split(" | ")[2:]]
    assert steps == compare.shown_steps(100, compare.MAX_STEP_COLUMNS) and steps[0] == 0 and steps[-1] == 100
    row = next(line for line in text.splitlines() if line.startswith("| maml [a] |"))
    assert row.endswith(" | ".join(f"{k / 100:.4f} ± 0.5000" for k in steps) + " |")  # each column its own step
    assert "| maml [a] - maml [b] | " + " | ".join(["-1.0000 ± 0.0000"] * 12) + " |" in text


def test_settings_over_seeds_are_compared_seed_by_seed(tmp_path, capsys):
    # MAML is ahead of first order by 5, 7 and 9 at the three seeds after one step; random is shared
    runs = {}
    for seed, (so, fo) in enumerate(((10.0, 5.0), (20.0, 13.0), (30.0, 21.0))):
        runs[("so", seed)] = write_eval(tmp_path / f"nav-seed{seed}", {"maml": so, "random": -50.0}, seed=seed)
        runs[("fo", seed)] = write_eval(tmp_path / f"nav-fo-seed{seed}", {"maml": fo, "random": -50.0}, seed=seed)
    groups = [[runs[(s, i)] for i in range(3)] for s in ("so", "fo")]
    report = compare.merge_seeds(groups)
    assert list(report["metrics"]) == ["maml [nav-seed{0,1,2}]", "random", "maml [nav-fo-seed{0,1,2}]"]
    so = report["metrics"]["maml [nav-seed{0,1,2}]"]["return"]
    assert so["per_seed"] == [[10.0, 11.0], [20.0, 21.0], [30.0, 31.0]]
    assert so["mean"] == pytest.approx([20.0, 21.0]) and so["ci95"][1] == pytest.approx(4.303 * 10 / 3**0.5, rel=1e-4)
    diff = report["differences"]["return"]["maml [nav-fo-seed{0,1,2}]"]
    assert [row[1] for row in diff["per_seed"]] == [5.0, 7.0, 9.0]
    # seed by seed the difference is 7 ± 4.97; the two rows' own intervals over seeds (± 24.8) overlap
    assert diff["mean"][1] == pytest.approx(7.0) and diff["ci95"][1] == pytest.approx(4.303 * 2 / 3**0.5, rel=1e-4)

    figure = tmp_path / "seeds.png"
    assert main(["compare", ",".join(map(str, groups[0])), ",".join(map(str, groups[1])), "--figure",
                 str(figure)]) == 0
    out = capsys.readouterr().out
    assert "3 training seeds per row" in out and "each training seed's runs on that seed's meta-test tasks" in out
    row = ("| maml [nav-seed{0,1,2}] - maml [nav-fo-seed{0,1,2}] | +7.000 ± 4.969 | +7.000 ± 4.969 "
           "| +5.000, +7.000, +9.000 |")
    assert row in out
    assert figure.read_bytes()[:4] == b"\x89PNG"
    # the per-seed column after a chosen number of steps (the paper's headline is often after one)
    assert main(["compare", ",".join(map(str, groups[0])), ",".join(map(str, groups[1])), "--per-seed-step", "0"]) == 0
    out = capsys.readouterr().out
    assert "each seed's difference after 0 steps" in out
    assert "| +7.000 ± 4.969 | +7.000 ± 4.969 | +5.000, +7.000, +9.000 |" in out
    assert main(["compare", ",".join(map(str, groups[0])), ",".join(map(str, groups[1])), "--per-seed-step", "2"]) == 2
    assert "--per-seed-step 2: the runs were meta-tested with 0 to 1 steps" in capsys.readouterr().err
    assert main(["compare", str(groups[0][0]), str(groups[1][0]), "--per-seed-step", "1"]) == 2
    assert "give comma-separated groups" in capsys.readouterr().err
    diff["per_seed"] = [[1.0, 5.0], [2.0, 7.0], [3.0, 9.0]]  # differing step columns: the chosen one is shown
    assert "| +1.000, +2.000, +3.000 |" in compare.seeds_summary(report, 0)
    assert "| +5.000, +7.000, +9.000 |" in compare.seeds_summary(report)


def test_seed_groups_must_match(tmp_path, capsys):
    a = [write_eval(tmp_path / f"a{i}", {"maml": 1.0}, seed=i) for i in range(3)]
    b = [write_eval(tmp_path / f"b{i}", {"maml": 2.0}, seed=i) for i in range(2)]
    with pytest.raises(ConfigError, match=r"the same number of runs \(two or more\).*got groups of 3, 2"):
        compare.merge_seeds([a, b])
    c = [write_eval(tmp_path / f"c{i}", {"pretrained": 2.0} if i == 1 else {"maml": 2.0}, seed=i) for i in range(3)]
    with pytest.raises(ConfigError, match=r"c1's eval reports \{'pretrained': \['return'\]\}, .*c0's \{'maml'"):
        compare.merge_seeds([a, c])
    d = [write_eval(tmp_path / f"d{i}", {"maml": 2.0}, seed=i, tasks=8 if i == 2 else 4) for i in range(3)]
    with pytest.raises(ConfigError, match="d2's eval has tasks=8"):
        compare.merge_seeds([a, d])
    assert main(["compare", f"{a[0]},{a[1]}", str(b[0])]) == 2  # a lone run beside seed groups
    assert "same number" in capsys.readouterr().err


def test_seed_groups_in_different_seed_orders_are_refused(tmp_path):
    a = [write_eval(tmp_path / f"a{i}", {"maml": 1.0 + i}) for i in range(2)]
    b = [write_eval(tmp_path / f"b{i}", {"maml": 2.0 + i}) for i in range(2)]
    for run, seed in ((a[0], 0), (a[1], 1), (b[0], 1), (b[1], 0)):  # b listed as seed 1, seed 0
        (run / "config.json").write_text(json.dumps({"experiment": "rl", "config": {"seed": seed}}))
    with pytest.raises(ConfigError, match=r"place 1 of their groups were trained at different seeds .*a0 seed 0, .*b0 "
                                          r"seed 1.*same seed order"):
        compare.merge_seeds([a, b])
    assert compare.merge_seeds([a, b[::-1]])["seeds"] == 2


def test_seed_groups_are_checked_before_they_are_paired(tmp_path, capsys):
    def runs(setting, seeds=(0, 1), **extra):
        return [write_eval(tmp_path / setting / f"seed{s}", {"maml": 10.0 * len(setting) + s}, seed=7, **extra)
                for s in seeds]

    so, fo = runs("so"), runs("first")
    report = compare.merge_seeds([so, fo])  # alike folder names: the rows are told apart by their paths
    assert list(report["metrics"]) == [f"maml [{tmp_path}/so/seed{{0,1}}]", f"maml [{tmp_path}/first/seed{{0,1}}]"]
    with pytest.raises(ConfigError, match="is named twice"):
        compare.merge_seeds([so, [fo[0], so[1]]])
    with pytest.raises(ConfigError, match="is named twice"):
        compare.merge_seeds([so, so])
    b = runs("b")
    for run, seed in zip(b, (3, 3)):
        (run / "config.json").write_text(json.dumps({"experiment": "rl", "config": {"seed": seed}}))
    with pytest.raises(ConfigError, match="a group holds two runs of one training seed"):
        compare.merge_seeds([so, b])
    other_tasks = [so[0], write_eval(tmp_path / "c" / "seed1", {"maml": 3.0}, seed=99)]
    with pytest.raises(ConfigError, match=r"place 2 of their groups were meta-tested on different tasks"):
        compare.merge_seeds([[fo[0], so[1]][:1] + [fo[1]], other_tasks])
    extra = write_eval(tmp_path / "d" / "seed1", {"maml": 3.0, "oracle": 1.0})
    with pytest.raises(ConfigError, match="seed1's eval reports"):  # found in either order
        compare.merge_seeds([[fo[0], extra], so])
    with pytest.raises(ConfigError, match="seed0's eval reports"):
        compare.merge_seeds([[extra, fo[0]], so])
    late = write_eval(tmp_path / "e" / "seed1", {"maml": 3.0}, step=300)
    assert compare.merge_seeds([[fo[0], late], so])["iterations"] == [100, 300]
    assert "meta-tested at different iterations (100, 300)" in compare.seeds_summary(
        compare.merge_seeds([[fo[0], late], so]))

    comma = write_eval(tmp_path / "lr=0.1,steps=5", {"maml": 1.0})  # a folder with a comma is one run
    plain = write_eval(tmp_path / "plain", {"maml": 2.0})
    assert main(["compare", str(comma), str(plain)]) == 0
    assert "maml [lr=0.1,steps=5]" in capsys.readouterr().out
