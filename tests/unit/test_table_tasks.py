"""Tabular tasks: split by task, meta-train-only statistics, one-hot, sampling, and clear errors for bad CSVs."""

import csv
import math
import random

import pytest
import torch

from fastmaml.errors import DataError
from fastmaml.tasks.table import Encoder, load_table, read_csv, split_tasks


def write_table(path, tasks=20, rows=12, seed=0, header=("group", "x", "kind", "y")):
    """Task g has y = slope_g * x + (1 if kind == 'b' else 0); x is centred on 10 * g (task-dependent)."""
    rng = random.Random(seed)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for g in range(tasks):
            slope = rng.uniform(-2, 2)
            for _ in range(rows):
                x = 10 * g + rng.uniform(-1, 1)
                kind = rng.choice("ab")
                writer.writerow([f"g{g:02d}", f"{x:.4f}", kind, f"{slope * (x - 10 * g) + (kind == 'b'):.4f}"])
    return path


def test_split_is_by_task_disjoint_complete_and_seeded():
    names = [f"t{i}" for i in range(30)]
    split = split_tasks(names, test_fraction=0.2, val_fraction=0.1, seed=3)
    train, val, test = (set(split[k]) for k in ("train", "val", "test"))
    assert len(test) == 6 and len(val) == 3 and len(train) == 21
    assert not (train & val or train & test or val & test) and train | val | test == set(names)
    assert split == split_tasks(list(reversed(names)), 0.2, 0.1, seed=3)  # input order does not matter
    assert split["test"] != split_tasks(names, 0.2, 0.1, seed=4)["test"]


def test_rows_of_a_task_stay_in_its_split(tmp_path):
    data = load_table(write_table(tmp_path / "t.csv"), "group", "y", shots=5, test_fraction=0.25, seed=0)
    assert {len(data.tasks[s].names) for s in ("train", "test")} == {15, 5}
    assert not set(data.tasks["train"].names) & set(data.tasks["test"].names)
    assert all(len(y) == 12 for y in data.tasks["test"].y)


def test_standardisation_uses_meta_train_tasks_only(tmp_path):
    path = write_table(tmp_path / "t.csv")
    data = load_table(path, "group", "y", shots=5, test_fraction=0.25, seed=0)
    table = read_csv(path)
    train = set(data.tasks["train"].names)
    xs = [float(r[1]) for r in table.rows if r[0] in train]
    every_x = [float(r[1]) for r in table.rows]
    x_feature = data.encoder.features[0]
    assert x_feature.kind == "numeric"
    assert x_feature.mean == pytest.approx(sum(xs) / len(xs))
    assert abs(x_feature.mean - sum(every_x) / len(every_x)) > 1.0  # x is centred per task: test rows would move it
    train_x = torch.cat(data.tasks["train"].x)[:, 0]
    assert train_x.mean().abs() < 1e-4 and (train_x.std() - 1).abs() < 1e-3
    ys = torch.tensor([float(r[3]) for r in table.rows if r[0] in train], dtype=torch.float64)
    assert data.encoder.target_mean == pytest.approx(ys.mean().item())
    assert data.encoder.target_std == pytest.approx(ys.std().item())
    y = torch.cat(data.tasks["train"].y)
    assert torch.allclose(data.encoder.decode_y(y).view(-1).sort().values, ys.sort().values, atol=1e-4)


def test_categorical_one_hot_with_categories_from_meta_train(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("g,colour,y\n" + "".join(f"t{i},{c},{i}\n" for i in range(6) for c in ("red", "blue", "red")))
    encoder = Encoder.fit(read_csv(path), rows=range(6), features=["colour"], categorical=[], target="y")
    feature = encoder.features[0]
    assert feature.kind == "categorical" and feature.categories == ("blue", "red") and encoder.width == 2
    new = tmp_path / "new.csv"
    new.write_text("colour,y\nred,1\nblue,2\ngreen,3\n")
    assert encoder.encode_x(read_csv(new)).tolist() == [[0, 1], [1, 0], [0, 0]]  # unseen: all zeros
    forced = Encoder.fit(read_csv(path), rows=range(18), features=["y"], categorical=["y"], target="y")
    assert forced.features[0].kind == "categorical" and forced.width == 6


def test_sample_shapes_and_reproducibility(tmp_path):
    data = load_table(write_table(tmp_path / "t.csv"), "group", "y", shots=5, seed=0)
    tasks = data.tasks["train"]
    batch = tasks.sample(torch.Generator().manual_seed(0), 7, shots=5, queries=20)  # 20 > 12 - 5: with replacement
    assert batch.support_x.shape == (7, 5, 3) and batch.support_y.shape == (7, 5, 1)
    assert batch.query_x.shape == (7, 20, 3) and batch.query_y.shape == (7, 20, 1)
    again = tasks.sample(torch.Generator().manual_seed(0), 7, shots=5, queries=20)
    assert all(torch.equal(a, b) for a, b in zip(batch, again))
    # support rows of a task are distinct rows, and never reused as its query rows when there are enough
    small = tasks.sample(torch.Generator().manual_seed(1), 5, shots=5, queries=7)
    for t in range(5):
        rows = torch.cat([small.support_x[t], small.query_x[t]])
        assert len({tuple(r.tolist()) for r in rows}) == 12


def test_sampling_an_empty_split_says_so(tmp_path):
    """val_fraction defaults to 0: sampling its empty split raised torch's "random_ expects 'from' to
    be less than 'to'" (found by a review)."""
    data = load_table(write_table(tmp_path / "t.csv"), "group", "y", shots=5, seed=0)
    assert not data.tasks["val"].names
    with pytest.raises(DataError, match="this split holds no tasks .* val_fraction > 0"):
        data.tasks["val"].sample(torch.Generator().manual_seed(0), 3, shots=5, queries=5)


def test_small_tasks_are_left_out(tmp_path):
    path = write_table(tmp_path / "t.csv", tasks=10, rows=12)
    with open(path, "a") as f:
        f.write("tiny,1.0,a,2.0\ntiny,2.0,b,3.0\n")
    data = load_table(path, "group", "y", shots=5, seed=0)
    assert data.dropped == ["tiny"]
    assert "tiny" not in {n for s in data.tasks.values() for n in s.names}


@pytest.mark.parametrize(
    "body, message",
    [
        ("group,x,y\n", "no rows"),
        ("", "is empty"),
        ("group,x,y\ng1,1,2\ng1,2\n", "2 values for 3 columns"),
        ("group,x,y\ng1,1,2\ng1,2,abc\n", "'abc' is not a number"),
        ("group,x,y\ng1,1,2\ng1,2,NaN\n", "missing value"),
        ("group,x,y\ng1,1,2\ng1,,3\n", "missing value"),
        ("group,x,y\ng1,1,2\n,2,3\n", "empty task"),
        ("group,x,y\ng1,1,2\ng1,abc,3\n", "not a number while other values"),
        ("group,x,y\ng1,1,2\ng1,inf,3\n", "not a number"),
        # finite, but its square overflows: the target was standardised to 0 and adapt predicted inf
        ("group,x,y\ng1,1,2\ng1,2,1e299\n", "line 3, column 'y': '1e299' is too large to standardise"),
    ],
)
def test_bad_csv_raises_one_clear_data_error(tmp_path, body, message):
    path = tmp_path / "bad.csv"
    path.write_text(body)
    with pytest.raises(DataError, match=message):
        load_table(path, "group", "y", shots=1, test_fraction=0.5)


def test_missing_columns_and_files(tmp_path):
    path = write_table(tmp_path / "t.csv", tasks=4)
    with pytest.raises(DataError, match="no column 'price'; its columns are group, x, kind, y"):
        load_table(path, "group", "price", shots=2)
    with pytest.raises(DataError, match="no column 'size'"):
        load_table(path, "group", "y", features=["x", "size"], shots=2)
    with pytest.raises(DataError, match="not found"):
        load_table(tmp_path / "absent.csv", "group", "y", shots=2)
    with pytest.raises(DataError, match="too few"):
        load_table(write_table(tmp_path / "two.csv", tasks=2), "group", "y", shots=2)


def test_no_nan_reaches_the_tensors(tmp_path):
    data = load_table(write_table(tmp_path / "t.csv"), "group", "y", shots=5, seed=0)
    for split in data.tasks.values():
        for x, y in zip(split.x, split.y):
            assert torch.isfinite(x).all() and torch.isfinite(y).all()
    assert math.isfinite(data.encoder.target_std) and data.encoder.target_std > 0


# ------------------------------------------------------------------------------------------ classification
def write_labels(path, tasks=20, rows=12, seed=0):
    """Task g: grade = low / mid / high by thirds of sign_g * x, sign_g = ±1 per task; kind copies the grade."""
    rng = random.Random(seed)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["group", "x", "kind", "grade"])
        for g in range(tasks):
            sign = rng.choice([-1, 1])
            for _ in range(rows):
                x = rng.uniform(-2, 2)
                z = sign * x
                grade = "low" if z < -0.67 else "mid" if z < 0.67 else "high"
                writer.writerow([f"g{g:02d}", f"{x:.4f}", grade, grade])
    return path


def test_text_target_is_classification_over_meta_train_labels(tmp_path):
    data = load_table(write_labels(tmp_path / "t.csv"), "group", "grade", shots=5, test_fraction=0.25, seed=0)
    encoder = data.encoder
    assert encoder.classification and encoder.classes == ("high", "low", "mid") and encoder.outputs == 3
    for split in data.tasks.values():
        for y in split.y:
            assert y.dtype == torch.int64 and y.dim() == 1 and 0 <= y.min() and y.max() < 3
    batch = data.tasks["train"].sample(torch.Generator().manual_seed(0), 6, shots=5, queries=9)
    assert batch.support_x.shape == (6, 5, 4) and batch.support_y.shape == (6, 5) and batch.query_y.shape == (6, 9)
    # x and y stay paired: the one-hot of `kind` (a copy of the grade) sits at the grade's class index
    for xs, ys in ((batch.support_x, batch.support_y), (batch.query_x, batch.query_y)):
        assert torch.equal(xs[..., 1:].argmax(-1), ys)
    table = read_csv(tmp_path / "t.csv")
    assert encoder.decode_labels(encoder.encode_y(table)) == table.column("grade")


def test_task_type_forces_either_kind(tmp_path):
    path = tmp_path / "codes.csv"
    path.write_text("g,x,code\n" + "".join(f"t{i},{j},{(i + j) % 3 * 5}\n" for i in range(8) for j in range(4)))
    assert not load_table(path, "g", "code", shots=2, test_fraction=0.25).encoder.classification  # numbers: regression
    forced = load_table(path, "g", "code", shots=2, test_fraction=0.25, task_type="classification").encoder
    assert forced.classes == ("0", "5", "10")  # numeric labels sort as numbers
    text = write_labels(tmp_path / "t.csv")
    with pytest.raises(DataError, match="line 2, column 'grade': '[a-z]+' is not a number.*task_type=classification"):
        load_table(text, "group", "grade", shots=2, task_type="regression")
    with pytest.raises(DataError, match="task_type must be one of"):
        load_table(text, "group", "grade", shots=2, task_type="ordinal")
    mixed = tmp_path / "mixed.csv"
    mixed.write_text("g,x,y\n" + "".join(f"t{i},{i},{i}\n" for i in range(6)) + "t1,2,many\n")
    with pytest.raises(DataError, match="'many' is not a number while other values .* task_type=classification"):
        load_table(mixed, "g", "y", shots=1)


def test_held_out_rows_with_labels_unseen_in_meta_training_are_left_out(tmp_path, caplog):
    path = write_labels(tmp_path / "t.csv", tasks=20, rows=12)
    names = split_tasks([f"g{g:02d}" for g in range(20)], test_fraction=0.25, val_fraction=0.0, seed=0)
    test_task, train_task = names["test"][0], names["train"][0]
    lines = path.read_text().splitlines()
    rare = [i for i, line in enumerate(lines) if line.startswith(test_task + ",")][:2]
    for i in rare:  # two rows of a meta-test task get a label that no meta-training task has
        lines[i] = lines[i].rsplit(",", 1)[0] + ",rare"
    lines.append(f"{train_task},0.1,mid,new")  # a label only one meta-training task has
    path.write_text("\n".join(lines) + "\n")
    data = load_table(path, "group", "grade", shots=5, test_fraction=0.25, seed=0)
    assert data.encoder.classes == ("high", "low", "mid", "new")  # a meta-training label is a class
    assert data.unseen_label_rows == 2 and "2 rows of held-out tasks" in caplog.text
    test = data.tasks["test"]
    assert len(test.y[test.names.index(test_task)]) == 10  # its two 'rare' rows are gone, the rest kept
    assert sum(len(y) for y in test.y) == 12 * len(test.names) - 2
    # a held-out task left with fewer than K + 1 rows goes too (it had 12 >= K + 1 = 11 before)
    data = load_table(path, "group", "grade", shots=10, test_fraction=0.25, seed=0)
    assert data.dropped == [test_task] and test_task not in data.tasks["test"].names
    with pytest.raises(DataError, match=f"line {rare[0] + 1}, column 'grade': label 'rare' never occurs in the "
                                        "meta-training tasks"):
        data.encoder.encode_y(read_csv(path))


def test_every_missing_value_is_named_in_one_error(tmp_path):
    """A table with three blanks in three columns took three runs to find them, one per run."""
    path = tmp_path / "prices.csv"
    rows = ["district,area,type,price"] + [f"d{i % 4},{50 + i},flat,{100 + i}" for i in range(30)]
    rows[5] = "d1,,flat,120"
    rows[19] = "d2,70,,130"
    rows[27] = "d3,80,house,"
    path.write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError) as error:
        load_table(path, "district", "price", shots=1)
    message = str(error.value)
    assert "3 missing value(s) in 3 row(s): line 6, column 'area' (''); line 20, column 'type' (''); " \
           "line 28, column 'price' ('')" in message and "drop or fill such rows" in message


def test_one_label_in_meta_training_is_an_error(tmp_path):
    path = tmp_path / "one.csv"
    path.write_text("g,x,y\n" + "".join(f"t{i},{j},same\n" for i in range(6) for j in range(3)))
    with pytest.raises(DataError, match="only the label 'same' .* at least 2 labels"):
        load_table(path, "g", "y", shots=1)


@pytest.mark.parametrize(
    "body, message",
    [
        ("group,x,y\ng1,1,a\ng1,2,\n", r"1 missing value\(s\) in 1 row\(s\): line 3, column 'y' \(''\)"),
        ("group,x,y\ng1,1,a\ng1,2, \n", r"line 3, column 'y' \(''\)"),  # a blank cell: a text column's missing value
        ("group,x,y\ng1,1,a\ng1,abc,b\n", "'abc' is not a number while other values"),
        ("group,x,y\ng1,1,a\ng1,nan,b\n", "missing value.*column 'x' \\('nan'\\)"),
        ("group,x,y\ng1,1,a\n,2,b\n", "empty task"),
        ("group,x,label\ng1,1,a\ng2,2,b\n", "no column 'y'"),
    ],
)
def test_bad_csv_with_a_text_target_raises_one_clear_data_error(tmp_path, body, message):
    path = tmp_path / "bad.csv"
    path.write_text(body)
    with pytest.raises(DataError, match=message):
        load_table(path, "group", "y", shots=1, test_fraction=0.5)


def test_the_task_column_cannot_be_the_target(tmp_path):
    path = write_table(tmp_path / "t.csv", tasks=4)
    header = path.read_text().splitlines()[0].split(",")
    with pytest.raises(DataError, match="--task-column and --target are both"):
        load_table(path, header[0], header[0], shots=1, test_fraction=0.5)


# ------------------------------------------------------------------------------------------ line numbers
# blank lines (2, 6) and a quoted cell spanning lines 3-4: the bad row is line 7 of the file, the
# table's third row (reported as line 4 when the numbering skipped blank lines and counted records)
LINES = 'group,x,kind,y\n\ng1,1,"two\nlines",2\ng1,2,a,3\n\n{bad}\ng2,1,a,2\ng2,2,b,3\ng3,1,a,2\ng3,2,b,3\n'


@pytest.mark.parametrize(
    "bad, message",
    [
        ("g1,abc,a,4", "line 7, column 'x': 'abc' is not a number while other values"),
        ("g1,,a,4", r"1 missing value\(s\) in 1 row\(s\): line 7, column 'x' \(''\)"),
        ("g1,2,,4", r"line 7, column 'kind' \(''\)"),
        ("g1,2,a,NA", r"line 7, column 'y' \('NA'\)"),
        ("g1,2,a,many", "line 7, column 'y': 'many' is not a number while other values of the target"),
        ("g1,2,a,1e299", "line 7, column 'y': '1e299' is too large to standardise"),
        ("g1,2,a", "line 7: 3 values for 4 columns"),
        (",2,a,4", "line 7: empty task"),
    ],
)
def test_errors_name_the_line_of_the_file_after_blank_lines_and_multi_line_cells(tmp_path, bad, message):
    path = tmp_path / "lines.csv"
    path.write_text(LINES.format(bad=bad))
    with pytest.raises(DataError, match=message):
        load_table(path, "group", "y", shots=1, test_fraction=0.3)


def test_rows_keep_their_line_in_the_file(tmp_path, caplog):
    path = tmp_path / "lines.csv"
    path.write_text(LINES.format(bad="g1,3,b,4"))
    table = read_csv(path)
    assert table.lines == (3, 5, 7, 8, 9, 10, 11) and table.rows[0][2] == "two\nlines"
    assert table.subset([2, 4]).lines == (7, 9)
    encoder = Encoder.fit(table, rows=range(7), features=["kind"], categorical=[], target="kind",
                          task_type="classification")
    new = tmp_path / "new.csv"
    new.write_text("group,x,kind,y\n\ng1,1,a,2\n\n\ng1,2,green,3\n")  # 'green' is on line 6
    with caplog.at_level("WARNING", logger="fastmaml.tasks.table"):
        encoder.encode_x(read_csv(new))
    assert "'green' never occur(s) in the meta-training rows (first at line 6)" in caplog.text
    with pytest.raises(DataError, match="line 6, column 'kind': label 'green' never occurs"):
        encoder.encode_y(read_csv(new))
    new.write_text("group,x,kind,y\n\ng1,1,a,2\n\n\ng1,2,,3\n")
    with pytest.raises(DataError, match=r"line 6, column 'kind' \(''\)"):
        encoder.encode_x(read_csv(new))


# ------------------------------------------------------------------------------------------ missing-value spellings
def test_names_spelled_like_missing_values_are_tasks_categories_and_labels(tmp_path, caplog):
    """Namibia's code NA is a task; a "None" category or label is one; in a numeric column NA is missing."""
    path = tmp_path / "countries.csv"
    path.write_text("country,x,pets,y\n" + "".join(f"{c},{j},{p},{(j * 7) % 5}\n" for c in ("NA", "None", "FR", "DE",
                    "IT", "ES") for j, p in enumerate(("None", "cat", "dog", "None"))))
    with caplog.at_level("WARNING", logger="fastmaml.tasks.table"):
        data = load_table(path, "country", "y", shots=2, test_fraction=0.2, seed=0)
    names = {n for split in data.tasks.values() for n in split.names}
    assert names == {"NA", "None", "FR", "DE", "IT", "ES"} and not data.dropped
    assert data.encoder.features[1].categories == ("None", "cat", "dog")
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 1 and "column 'pets': 'None' (first at line 2) taken as a category" in warned[0], warned
    labels = load_table(path, "country", "pets", shots=2, test_fraction=0.2, seed=0).encoder
    assert labels.classes == ("None", "cat", "dog")  # a label too
    path.write_text(path.read_text().replace("FR,1,cat,2", "FR,NA,cat,2"))  # x is numeric: NA there is missing
    with pytest.raises(DataError, match=r"line 11, column 'x' \('NA'\)"):
        load_table(path, "country", "y", shots=2, test_fraction=0.2, seed=0)
