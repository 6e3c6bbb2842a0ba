"""The table preset end to end through the CLI: train, eval (MAML vs pretrained vs scratch), adapt, bad CSVs."""

import csv
import hashlib
import itertools
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from fastmaml.cli import main


def write_tasks(path, tasks=30, rows=15, seed=0, header=("shop", "size", "kind", "price")):
    """Task s: price = slope_s * size + offset_s + (2 if kind == 'new' else 0): tasks differ, rows share a form."""
    rng = random.Random(seed)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for s in range(tasks):
            slope, offset = rng.uniform(-3, 3), rng.uniform(-3, 3)
            for _ in range(rows):
                size, kind = rng.uniform(-2, 2), rng.choice(["new", "used"])
                writer.writerow([f"shop{s}", f"{size:.4f}", kind, f"{slope * size + offset + 2 * (kind == 'new'):.4f}"])
    return path


FAST = ["--iterations", "400", "--set", "outer_lr=0.005", "--set", "log_every=100", "--no-progress"]


@pytest.fixture(scope="module")
def table_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("table")
    data = write_tasks(root / "shops.csv")
    run = root / "run"
    args = ["train", "table", "--csv", str(data), "--task-column", "shop", "--target", "price",
            "--features", "size,kind", "--shots", "5", "--out", str(run), *FAST]
    assert main(args) == 0
    return root, run


def test_train_saves_the_table_config(table_run):
    root, run = table_run
    config = json.loads((run / "config.json").read_text())
    assert config["experiment"] == "table"
    assert config["config"]["csv"] == str(root / "shops.csv") and config["config"]["features"] == ["size", "kind"]
    assert (run / "checkpoint.safetensors").is_file()


def test_eval_compares_maml_pretrained_and_scratch(table_run, capsys):
    _, run = table_run
    assert main(["eval", str(run), "--tasks", "60", "--steps", "10", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    methods = report["metrics"]
    assert set(methods) == {"maml", "pretrained", "scratch"}
    maml = methods["maml"]["mse"]["mean"]
    assert maml[10] < 0.7 * maml[0]  # adapting to 5 rows of a held-out task helps
    assert maml[10] < methods["scratch"]["mse"]["mean"][10]
    assert main(["eval", str(run), "--tasks", "5", "--split", "val"]) == 2  # trained without val_fraction
    assert "this run has no val tasks" in capsys.readouterr().err
    # the header says how few held-out tasks the meta-test tasks come from (a narrow CI misled a user)
    assert main(["eval", str(run), "--tasks", "5", "--steps", "1", "--no-progress"]) == 0
    header = capsys.readouterr().out.splitlines()[0]
    held_out = report["source"].split()[2]
    assert f"5 meta-test tasks (drawn from {held_out} held-out value(s) of 'shop' (shop" in header, header
    assert int(held_out) < 60


def test_plot_of_a_run_whose_csv_moved_draws_what_needs_no_data(table_run, tmp_path, capsys, caplog):
    """plot failed with "CSV file ... not found" after rewriting two figures it did not print, though
    neither needs the data (found by a review)."""
    import shutil

    _, trained = table_run
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    assert main(["eval", str(run), "--tasks", "5", "--no-progress"]) == 0
    config = json.loads((run / "config.json").read_text())
    config["config"]["csv"] = str(tmp_path / "moved" / "shops.csv")  # a relocatable key: not an edit
    (run / "config.json").write_text(json.dumps(config))
    capsys.readouterr()
    with caplog.at_level("WARNING"):
        assert main(["plot", str(run)]) == 0
    out = capsys.readouterr().out
    assert "learning_curve.png" in out and "metric_vs_steps.png" in out


def test_adapt_writes_predictions_for_a_new_task(table_run, tmp_path, capsys):
    _, run = table_run
    with open(write_tasks(tmp_path / "new.csv", tasks=1, rows=40, seed=99), newline="") as f:
        rows = list(csv.reader(f))
    support, predict = tmp_path / "support.csv", tmp_path / "predict.csv"
    with open(support, "w", newline="") as f:
        csv.writer(f).writerows(rows[:6])  # header + 5 rows
    with open(predict, "w", newline="") as f:
        csv.writer(f).writerows([rows[0], *rows[6:]])
    out = tmp_path / "pred" / "out.csv"
    assert main(["adapt", str(run), "--support", str(support), "--predict", str(predict), "--steps", "10",
                 "--out", str(out)]) == 0
    line = capsys.readouterr().out.strip()
    assert "adapted to 5 support rows with 10 steps" in line
    after, before = (float(s.split()[0].rstrip(")")) for s in line.split("MSE on those rows ")[1].split(" (", 1))
    assert after < before
    with open(out, newline="") as f:
        written = list(csv.reader(f))
    assert written[0] == [*rows[0], "prediction"] and len(written) == 1 + 35
    assert all(float(r[-1]) == float(r[-1]) for r in written[1:])  # numbers, no NaN
    # adapt --set inner_lr: a step of ~0 leaves the initialisation's predictions
    assert main(["adapt", str(run), "--support", str(support), "--predict", str(predict), "--steps", "10",
                 "--set", "inner_lr=1e-12", "--out", str(out)]) == 0
    line = capsys.readouterr().out.strip()
    parts = line.split("MSE on those rows ")[1].split(" (", 1)
    tiny_after, tiny_before = (float(s.split()[0].rstrip(")")) for s in parts)
    assert tiny_before == before and tiny_after == pytest.approx(before, rel=1e-6) and after < tiny_after
    # one support row, one step, one prediction: counted in the singular
    with open(support, "w", newline="") as f:
        csv.writer(f).writerows(rows[:2])
    with open(predict, "w", newline="") as f:
        csv.writer(f).writerows([rows[0], rows[6]])
    assert main(["adapt", str(run), "--support", str(support), "--predict", str(predict), "--steps", "1",
                 "--out", str(out)]) == 0
    assert "adapted to 1 support row with 1 step; wrote 1 prediction to" in capsys.readouterr().out


def test_adapt_scores_only_predict_rows_with_a_known_target(table_run, tmp_path, capsys):
    """A predict file's target column left empty (the rows to predict) was refused as missing values."""
    _, run = table_run
    with open(write_tasks(tmp_path / "new.csv", tasks=1, rows=10, seed=7), newline="") as f:
        rows = list(csv.reader(f))
    support, predict, out = tmp_path / "support.csv", tmp_path / "predict.csv", tmp_path / "out.csv"
    with open(support, "w", newline="") as f:
        csv.writer(f).writerows(rows[:6])
    adapt = ["adapt", str(run), "--support", str(support), "--predict", str(predict), "--steps", "5", "--out", str(out)]
    with open(predict, "w", newline="") as f:  # the target column there, empty in every row: nothing to score
        csv.writer(f).writerows([rows[0], *([*r[:3], ""] for r in rows[6:])])
    assert main(adapt) == 0
    line = capsys.readouterr().out.strip()
    assert "wrote 5 predictions" in line and "MSE" not in line, line
    with open(out, newline="") as f:
        predicted = [float(r[-1]) for r in list(csv.reader(f))[1:]]
    assert len(predicted) == 5
    truth = [float(r[3]) for r in rows[6:]]
    with open(predict, "w", newline="") as f:  # two rows with their target, three without (one spelled NA)
        csv.writer(f).writerows([rows[0], rows[6], [*rows[7][:3], ""], rows[8], [*rows[9][:3], "NA"],
                                 [*rows[10][:3], ""]])
    assert main(adapt) == 0
    line = capsys.readouterr().out.strip()
    assert "wrote 5 predictions" in line and "; MSE on the 2 of 5 rows with a known 'price' " in line, line
    mse = ((predicted[0] - truth[0]) ** 2 + (predicted[2] - truth[2]) ** 2) / 2
    assert float(line.split("rows with a known 'price' ")[1].split()[0]) == pytest.approx(mse, rel=1e-3)


BAD = {
    "missing column": ("shop,size,kind,cost\nshop0,1,new,2\n", []),
    "non-numeric value": ("shop,size,kind,price\nshop0,1,new,2\nshop0,2,used,cheap\n", []),
    "NaN": ("shop,size,kind,price\nshop0,1,new,2\nshop0,nan,used,3\n", []),
    "empty task": ("shop,size,kind,price\nshop0,1,new,2\n,2,used,3\n", []),
    "missing feature column": (None, ["--features", "size,colour"]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_csv_exits_2_with_one_line(tmp_path, capsys, case):
    body, extra = BAD[case]
    path = tmp_path / "bad.csv"
    if body is None:
        write_tasks(path, tasks=6)
    else:
        path.write_text(body)
    run = tmp_path / "run"
    code = main(["train", "table", "--csv", str(path), "--task-column", "shop", "--target", "price",
                 "--out", str(run), *extra, *FAST])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("fastmaml: error: "), err
    assert not run.exists()  # the CSV is checked before a run folder is made


def test_adapt_warns_of_a_category_meta_training_never_saw(table_run, tmp_path, capsys, caplog):
    _, run = table_run
    support, predict = tmp_path / "support.csv", tmp_path / "predict.csv"
    support.write_text("shop,size,kind,price\nx,1,new,3\nx,0.5,used,1\nx,-1,new,0\n")
    predict.write_text("shop,size,kind\nx,2,used\nx,0,broken\n")  # before: encoded as no category, silently
    with caplog.at_level("WARNING", logger="fastmaml.tasks.table"):
        assert main(["adapt", str(run), "--support", str(support), "--predict", str(predict), "--out",
                     str(tmp_path / "o.csv")]) == 0
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 1 and "column 'kind': 'broken' never occur(s) in the meta-training rows (first at line 3)" \
        in warned[0] and "2 known categories: new, used" in warned[0], warned


def test_adapt_with_a_bad_support_file_exits_2(table_run, tmp_path, capsys):
    _, run = table_run
    support, predict = tmp_path / "support.csv", tmp_path / "predict.csv"
    support.write_text("shop,size,kind\nx,1,new\n")  # no target column
    predict.write_text("shop,size,kind\nx,2,used\n")
    assert main(["adapt", str(run), "--support", str(support), "--predict", str(predict), "--out",
                 str(tmp_path / "o.csv")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no column 'price'" in err[0]
    support.write_text("shop,size,kind,price\n")
    assert main(["adapt", str(run), "--support", str(support), "--predict", str(predict), "--out",
                 str(tmp_path / "o.csv")]) == 2
    assert "no rows" in capsys.readouterr().err
    assert main(["adapt", str(run), "--support", str(tmp_path), "--predict", str(predict), "--out",
                 str(tmp_path / "o.csv")]) == 2
    assert f"{tmp_path} is a folder, not a CSV file" in capsys.readouterr().err


def test_a_folder_given_as_the_csv_is_named_so(tmp_path, capsys):
    code = main(["train", "table", "--csv", str(tmp_path), "--task-column", "shop", "--target", "price",
                 "--out", str(tmp_path / "run"), *FAST])
    assert code == 2 and f"{tmp_path} is a folder, not a CSV file" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ classification
def write_grades(path, tasks=30, rows=15, seed=0, signs=None):
    """Task s: grade = low / mid / high by thirds of sign_s * size, sign_s = ±1: pooling cannot tell the tasks apart."""
    rng = random.Random(seed)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["shop", "size", "kind", "grade"])
        for s in range(tasks):
            sign = rng.choice([-1, 1]) if signs is None else signs[s]
            for _ in range(rows):
                size, kind = rng.uniform(-2, 2), rng.choice(["new", "used"])
                z = sign * size
                writer.writerow([f"shop{s}", f"{size:.4f}", kind, "low" if z < -0.67 else "mid" if z < 0.67 else "high"])
    return path


def train_grades(root, name="run", iterations="400", extra=()):
    data = root / "grades.csv" if (root / "grades.csv").exists() else write_grades(root / "grades.csv")
    run = root / name
    args = ["train", "table", "--csv", str(data), "--task-column", "shop", "--target", "grade", "--features",
            "size,kind", "--shots", "5", "--out", str(run), *FAST, "--iterations", iterations, *extra]
    assert main(args) == 0
    return data, run


@pytest.fixture(scope="module")
def grades_run(tmp_path_factory):
    return train_grades(tmp_path_factory.mktemp("grades"))


def test_classification_run_records_its_csv_fingerprint(grades_run):
    data, run = grades_run
    config = json.loads((run / "config.json").read_text())["config"]
    assert config["task_type"] == "auto" and config["csv"] == str(data)
    assert config["csv_sha256"] == hashlib.sha256(data.read_bytes()).hexdigest()


def test_classification_eval_reports_accuracy_and_loss_for_three_methods(grades_run, capsys):
    _, run = grades_run
    assert main(["eval", str(run), "--tasks", "60", "--steps", "10", "--json"]) == 0
    methods = json.loads(capsys.readouterr().out)["metrics"]
    assert set(methods) == {"maml", "pretrained", "scratch"}
    for scores in methods.values():
        assert set(scores) == {"accuracy", "loss"}
        assert all(0 <= a <= 1 for a in scores["accuracy"]["mean"]) and len(scores["accuracy"]["ci95"]) == 11
    maml, scratch = methods["maml"]["accuracy"]["mean"], methods["scratch"]["accuracy"]["mean"]
    assert maml[10] > 0.8 and maml[10] > maml[0] + 0.15  # 5 rows of a held-out task tell its sign
    assert maml[10] > scratch[10] + 0.2
    assert methods["maml"]["loss"]["mean"][10] < methods["maml"]["loss"]["mean"][0]
    assert main(["eval", str(run), "--tasks", "20", "--steps", "2"]) == 0
    assert "accuracy:" in capsys.readouterr().out


def test_classification_adapt_writes_labels_and_probabilities(grades_run, tmp_path, capsys):
    _, run = grades_run
    after, before = [], []
    for sign in (-1, 1):  # the unadapted model can be right about at most one of the two
        with open(write_grades(tmp_path / "new.csv", tasks=1, rows=40, seed=99, signs=[sign]), newline="") as f:
            rows = list(csv.reader(f))
        by_size = sorted(rows[1:], key=lambda r: float(r[1]))
        chosen = by_size[::10][:4] + by_size[-1:]  # 5 rows spread over the sizes, so both ends are seen
        support, predict = tmp_path / "support.csv", tmp_path / "predict.csv"
        with open(support, "w", newline="") as f:
            csv.writer(f).writerows([rows[0], *chosen])
        with open(predict, "w", newline="") as f:
            csv.writer(f).writerows([rows[0], *(r for r in rows[1:] if r not in chosen)])
        out = tmp_path / f"out{sign}.csv"
        assert main(["adapt", str(run), "--support", str(support), "--predict", str(predict), "--steps", "10",
                     "--out", str(out)]) == 0
        line = capsys.readouterr().out.strip()
        assert "adapted to 5 support rows with 10 steps" in line
        a, b = (float(s.split()[0].rstrip(")")) for s in line.split("accuracy on those rows ")[1].split(" (", 1))
        after.append(a)
        before.append(b)
        with open(out, newline="") as f:
            written = list(csv.reader(f))
        assert written[0] == [*rows[0], "prediction", "p_high", "p_low", "p_mid"] and len(written) == 1 + 35
        for row in written[1:]:
            p = [float(v) for v in row[-3:]]
            assert abs(sum(p) - 1) < 2e-3 and row[-4] == ("high", "low", "mid")[p.index(max(p))]
        assert sum(r[-4] == r[3] for r in written[1:]) / 35 == pytest.approx(a, abs=1e-3)
    assert min(after) >= 0.85 and min(before) < 0.7


def test_adapt_refuses_labels_unseen_in_meta_training(grades_run, tmp_path, capsys):
    _, run = grades_run
    support, predict = tmp_path / "support.csv", tmp_path / "predict.csv"
    good = "shop,size,kind,grade\nx,1.5,new,high\nx,-1.5,new,low\n"
    for support_text, predict_text in ((good + "x,0.1,used,medium\n", good), (good, good + "x,3,new,top\n")):
        support.write_text(support_text)
        predict.write_text(predict_text)
        assert main(["adapt", str(run), "--support", str(support), "--predict", str(predict), "--out",
                     str(tmp_path / "o.csv")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "never occurs in the meta-training tasks" in err[0], err
        assert "'high', 'low', 'mid'" in err[0]


def test_classification_adapt_scores_only_predict_rows_with_a_label(grades_run, tmp_path, capsys):
    _, run = grades_run
    support, predict = tmp_path / "support.csv", tmp_path / "predict.csv"
    support.write_text("shop,size,kind,grade\nx,1.5,new,high\nx,-1.5,new,low\n")
    adapt = ["adapt", str(run), "--support", str(support), "--predict", str(predict), "--out", str(tmp_path / "o.csv")]
    predict.write_text("shop,size,kind,grade\nx,1.0,used,\nx,-1.0,new,\n")
    assert main(adapt) == 0
    line = capsys.readouterr().out.strip()
    assert "wrote 2 predictions" in line and "accuracy" not in line, line
    predict.write_text("shop,size,kind,grade\nx,1.0,used,\nx,-1.0,new,low\nx,0.0,new,\n")
    assert main(adapt) == 0
    assert "; accuracy on the 1 of 3 rows with a known 'grade' " in capsys.readouterr().out


BAD_LABELS = {
    "missing target column": ("shop,size,kind,label\nshop0,1,new,low\n", []),
    "non-numeric feature value": ("shop,size,kind,grade\nshop0,1,new,low\nshop0,big,used,high\n", []),
    "empty target": ("shop,size,kind,grade\nshop0,1,new,low\nshop0,2,used,\n", []),
    "empty task": ("shop,size,kind,grade\nshop0,1,new,low\n,2,used,high\n", []),
    "one label": ("shop,size,kind,grade\n" + "".join(f"s{i},{i},new,low\n" for i in range(9)), ["--shots", "1"]),
}


@pytest.mark.parametrize("case", list(BAD_LABELS))
def test_bad_classification_csv_exits_2_with_one_line(tmp_path, capsys, case):
    body, extra = BAD_LABELS[case]
    path = tmp_path / "bad.csv"
    path.write_text(body)
    run = tmp_path / "run"
    code = main(["train", "table", "--csv", str(path), "--task-column", "shop", "--target", "grade",
                 "--out", str(run), *extra, *FAST])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("fastmaml: error: "), err
    assert not run.exists()


def test_task_type_can_be_forced_either_way(tmp_path, capsys):
    codes = tmp_path / "codes.csv"  # numeric class codes: auto reads them as regression
    with open(write_grades(tmp_path / "g.csv"), newline="") as f:
        rows = list(csv.reader(f))
    with open(codes, "w", newline="") as f:
        csv.writer(f).writerows([rows[0], *([*r[:3], {"low": "1", "mid": "2", "high": "3"}[r[3]]] for r in rows[1:])])
    common = ["train", "table", "--csv", str(codes), "--task-column", "shop", "--target", "grade", *FAST,
              "--iterations", "5"]
    assert main([*common, "--out", str(tmp_path / "auto")]) == 0
    assert main([*common, "--out", str(tmp_path / "forced"), "--set", "task_type=classification"]) == 0
    capsys.readouterr()
    for name, metrics in (("auto", {"mse"}), ("forced", {"accuracy", "loss"})):
        assert main(["eval", str(tmp_path / name), "--tasks", "5", "--steps", "1", "--json"]) == 0
        assert set(json.loads(capsys.readouterr().out)["metrics"]["maml"]) == metrics
    assert main(["train", "table", "--csv", str(tmp_path / "g.csv"), "--task-column", "shop", "--target", "grade",
                 *FAST, "--out", str(tmp_path / "r"), "--set", "task_type=regression"]) == 2
    assert "task_type=regression needs a numeric target" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


# ------------------------------------------------------------------------------------------ CSV fingerprint
def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fastmaml: error: ") and "Traceback" not in err[0], err
    return err[0]


def test_eval_and_adapt_refuse_a_missing_or_changed_training_csv(tmp_path, capsys):
    data, run = train_grades(tmp_path, iterations="5")
    support, predict = tmp_path / "support.csv", tmp_path / "predict.csv"
    support.write_text("shop,size,kind,grade\nx,1.5,new,high\nx,-1.5,new,low\n")
    predict.write_text("shop,size,kind\nx,1.0,used\n")
    adapt = ["adapt", str(run), "--support", str(support), "--predict", str(predict), "--out", str(tmp_path / "o.csv")]
    original = data.read_bytes()
    moved = tmp_path / "elsewhere" / "grades.csv"
    moved.parent.mkdir()
    data.rename(moved)
    assert main(["eval", str(run), "--tasks", "5"]) == 2
    line = one_line_error(capsys)
    assert f"CSV file {data} not found" in line and "restore it there" in line
    assert main(adapt) == 2
    assert "not found" in one_line_error(capsys)
    assert main([*adapt, "--csv", str(moved)]) == 0  # the same content elsewhere: accepted
    assert "adapted to 2 support rows" in capsys.readouterr().out
    data.write_bytes(original.replace(b"high", b"mid", 1))  # one label changed
    assert main(["eval", str(run), "--tasks", "5"]) == 2
    line = one_line_error(capsys)
    assert f"{data} has changed since this run was trained on it" in line and "restore the original" in line
    assert main(adapt) == 2
    assert "has changed" in one_line_error(capsys)
    assert main([*adapt, "--csv", str(data)]) == 2  # a changed copy is not accepted as the new location
    assert "is not the file this run was trained on" in one_line_error(capsys)
    assert main(["train", "--resume", str(run), "--iterations", "6", "--no-progress"]) == 2
    assert "has changed" in one_line_error(capsys)
    data.write_bytes(original)  # restored: everything works again
    assert main(["eval", str(run), "--tasks", "5"]) == 0
    # a run whose CSV moved resumes once config.json names the new place (the content is checked by
    # its fingerprint; the resume's check of config.json against the checkpoint lets csv differ)
    data.unlink()
    saved = json.loads((run / "config.json").read_text())
    saved["config"]["csv"] = str(moved)
    (run / "config.json").write_text(json.dumps(saved))
    assert main(["train", "--resume", str(run), "--iterations", "6", "--no-progress"]) == 0


def test_a_run_without_a_recorded_fingerprint_still_evaluates(tmp_path, capsys):
    data, run = train_grades(tmp_path, iterations="5")
    saved = json.loads((run / "config.json").read_text())
    del saved["config"]["csv_sha256"]  # as written before fingerprints existed
    (run / "config.json").write_text(json.dumps(saved))
    assert main(["eval", str(run), "--tasks", "5"]) == 0
    capsys.readouterr()
    f = tmp_path / "s.csv"
    f.write_text("shop,size,kind,grade\nx,1.5,new,high\n")
    assert main(["adapt", str(run), "--support", str(f), "--predict", str(f), "--out", str(tmp_path / "o.csv"),
                 "--csv", str(data)]) == 2
    assert "recorded no sha256" in one_line_error(capsys)


def test_validation_keeps_the_most_accurate_checkpoint_and_adapt_can_use_it(tmp_path, capsys):
    _, run = train_grades(tmp_path, iterations="300", extra=["--set", "val_fraction=0.2", "--set", "val_every=50"])
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    accuracies = [r["val_accuracy"] for r in rows if "val_accuracy" in r]
    assert len(accuracies) == 6 and len(set(accuracies)) > 1
    capsys.readouterr()
    assert main(["eval", str(run), "--best", "--tasks", "5", "--json"]) == 0
    step = json.loads(capsys.readouterr().out)["step"]
    assert step == 50 * (1 + accuracies.index(max(accuracies)))  # higher accuracy is better
    f = tmp_path / "s.csv"
    f.write_text("shop,size,kind,grade\nx,1.5,new,high\nx,-1.5,new,low\n")
    adapt = ["adapt", str(run), "--support", str(f), "--predict", str(f), "--out", str(tmp_path / "o.csv")]
    assert main([*adapt, "--best"]) == 0
    capsys.readouterr()
    _, plain = train_grades(tmp_path, name="plain", iterations="5")
    assert main(["adapt", str(plain), *adapt[2:], "--best"]) == 2  # no validation, no best checkpoint
    assert ("kept no best checkpoint: only runs that validate keep one (train with --set val_every=N; a table run "
            "also with --set val_fraction=F, e.g. 0.15)") in one_line_error(capsys)


def test_adapt_refuses_to_write_over_the_training_csv(table_run, tmp_path, capsys):
    # the CSV the run was trained on: overwritten, every later eval of the run failed ("has changed")
    root, run = table_run
    training_csv = Path(json.loads((run / "config.json").read_text())["config"]["csv"])
    before = training_csv.read_bytes()
    with open(training_csv, newline="") as f:
        rows = list(csv.reader(f))
    support, predict = tmp_path / "support.csv", tmp_path / "predict.csv"
    with open(support, "w", newline="") as f:
        csv.writer(f).writerows(rows[:6])
    with open(predict, "w", newline="") as f:
        csv.writer(f).writerows([rows[0], *rows[6:9]])
    assert main(["adapt", str(run), "--support", str(support), "--predict", str(predict),
                 "--out", str(training_csv)]) == 2
    assert "would overwrite" in capsys.readouterr().err and training_csv.read_bytes() == before


def test_adapt_refuses_a_config_edited_since_the_checkpoint(table_run, tmp_path, capsys):
    """adapt built the model from a hand-edited config.json (inner_lr) without a word; resume refused it."""
    import shutil

    _, run = table_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    saved = json.loads((copy / "config.json").read_text())
    saved["config"]["inner_lr"] = saved["config"]["inner_lr"] * 5
    (copy / "config.json").write_text(json.dumps(saved))
    support = write_tasks(tmp_path / "new.csv", tasks=1, rows=8, seed=99)
    capsys.readouterr()
    assert main(["adapt", str(copy), "--support", str(support), "--predict", str(support),
                 "--out", str(tmp_path / "out.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert "config.json does not match the checkpoint checkpoint.safetensors (inner_lr = " in err
    assert len(err.splitlines()) == 1 and not (tmp_path / "out.csv").exists()


def test_adapt_output_keeps_precision_names_new_columns_and_is_utf8(tmp_path, capsys):
    """From a review: predictions were written to 6 digits (1000112.276 as 1.00011e+06, the printed
    MSE from values the file did not hold); adapt on its own output wrote two columns of one name; the
    output took the locale's encoding (a traceback and a half-written file on a non-ASCII cell)."""
    rows = [["shop", "size", "kind", "price"]]
    rng = random.Random(1)
    for s in range(12):
        for _ in range(8):
            size = rng.uniform(-2, 2)
            rows.append([f"shop{s}", f"{size:.4f}", rng.choice(["new", "used"]), f"{1_000_000 + 3 * size + s:.3f}"])
    data = tmp_path / "big.csv"
    with open(data, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    run = tmp_path / "run"
    assert main(["train", "table", "--csv", str(data), "--task-column", "shop", "--target", "price", "--shots", "3",
                 "--out", str(run), "--iterations", "5", "--no-progress"]) == 0
    support = tmp_path / "support.csv"
    with open(support, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([rows[0], ["neu", "0.5", "new", "1000001.5"], ["neu", "1.0", "used", "1000003.0"]])
    predict = tmp_path / "predict.csv"
    predict.write_text("shop,size,kind,price,prediction\nneu,0.7,new,,grün\n", encoding="utf-8")
    outs = [tmp_path / "o1.csv", tmp_path / "o2.csv", tmp_path / "o3.csv"]
    # the first in an ASCII locale, where the locale's encoding could not write "ü"
    env = {**os.environ, "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "fastmaml", "adapt", str(run), "--support", str(support),
                           "--predict", str(predict), "--out", str(outs[0])], env=env, capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stderr
    for source, out in itertools.pairwise(outs):
        capsys.readouterr()
        assert main(["adapt", str(run), "--support", str(support), "--predict", str(source), "--out", str(out)]) == 0
    header = outs[-1].read_text(encoding="utf-8").splitlines()[0].split(",")
    assert header == ["shop", "size", "kind", "price", "prediction", "price_prediction", "price_prediction_2",
                      "price_prediction_3"]
    row = next(csv.DictReader(outs[0].open(encoding="utf-8")))
    assert row["prediction"] == "grün" and len(row["price_prediction"].replace(".", "")) >= 8  # 9 digits, not 6
    assert abs(float(row["price_prediction"]) - 1_000_000) < 100
    assert not list(tmp_path.glob(".*.tmp"))


def test_too_many_shots_for_every_task_says_to_lower_shots(tmp_path, capsys):
    """30 tasks of 10 rows with --shots 10: every task was left out and the error said to use a table
    with more groups."""
    data = write_tasks(tmp_path / "shops.csv", tasks=30, rows=10)
    assert main(["train", "table", "--csv", str(data), "--task-column", "shop", "--target", "price", "--shots", "10",
                 "--out", str(tmp_path / "run"), "--iterations", "2", "--no-progress"]) == 2
    err = one_line_error(capsys)
    assert "30 of the table's 30 tasks were left out for having fewer than K + 1 = 11 rows (the largest has 10): " \
           "lower --shots to 9 or less, or add rows to the tasks" in err


def test_adapt_errors_about_a_cell_advise_only_what_adapt_can_do(table_run, tmp_path, capsys):
    """adapt said to list a column as categorical (categorical=price), which adapt refuses to change."""
    _, run = table_run
    bad = tmp_path / "bad.csv"
    bad.write_text("shop,size,kind,price\nx,1.0,new,abc\nx,0.5,used,2\n")
    good = tmp_path / "good.csv"
    good.write_text("shop,size,kind,price\nx,1.0,new,1\n")
    capsys.readouterr()
    assert main(["adapt", str(run), "--support", str(bad), "--predict", str(good), "--out",
                 str(tmp_path / "o.csv")]) == 2
    err = one_line_error(capsys)
    assert err.endswith(f"{bad}, line 2, column 'price': 'abc' is not a number; fix or drop that row")
    missing = tmp_path / "missing.csv"
    missing.write_text("shop,size,kind,price\nx,,new,1\n")
    assert main(["adapt", str(run), "--support", str(good), "--predict", str(missing), "--out",
                 str(tmp_path / "o.csv")]) == 2
    err = one_line_error(capsys)
    assert err.endswith("drop or fill such rows") and "--features" not in err
