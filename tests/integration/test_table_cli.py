"""The table preset end to end through the CLI: train, eval (MAML vs pretrained vs scratch), adapt, bad CSVs."""

import csv
import json
import random

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


def test_adapt_refuses_a_run_of_another_preset(tmp_path, capsys):
    run = tmp_path / "sin"
    assert main(["train", "sinusoid", "--iterations", "2", "--out", str(run), "--no-progress"]) == 0
    f = tmp_path / "f.csv"
    f.write_text("x,y\n1,2\n")
    assert main(["adapt", str(run), "--support", str(f), "--predict", str(f), "--out", str(tmp_path / "o.csv")]) == 2
    assert "needs a table run" in capsys.readouterr().err
