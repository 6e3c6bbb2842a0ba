"""Few-shot classification on a real grouped table: 1996 US presidential vote by income bracket (ANES, via statsmodels).

Each of the 24 household-income brackets of the American National Election Studies 1996 subset is a
task; its rows are respondents, the label is their expected vote ("Clinton" or "Dole"), the features
are the other survey answers (party identification, left-right self-placement and placement of
both candidates, TV news per week, age, education, log population of their place). Given K = 5
labelled respondents of a bracket it has never seen, predict the vote of the bracket's others.

The table ships inside the statsmodels wheel (``statsmodels/datasets/anes96/anes96.csv``; statsmodels
states "This is public domain.", source http://www.electionstudies.org/), so nothing is downloaded:
it is read from the installed package's files, without importing statsmodels.

    pip install -e '.[examples]'          # statsmodels (or: pip install statsmodels)
    python examples/table_classification_example.py [--out runs/table_classification] [--iterations 2000]

It exports the table to CSV (one row per respondent, vote as text, so ``task_type`` "auto" makes it
classification), then runs the same commands a user would: ``fastmaml train table``, ``fastmaml
eval`` and ``fastmaml adapt`` on a held-out bracket. Only 24 brackets exist: 6 are held out for
meta-test and 4 for validation, which picks the checkpoint (``--best``): with 14 meta-training
brackets of ~40 respondents the networks overfit within a few hundred iterations. The 600 meta-test
tasks of ``eval`` are draws of K support rows (uniform, not stratified by label) and 20 query rows
from those 6 brackets, so the 95% CI covers those draws, not new brackets.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import math
import random
import sys
import time
from pathlib import Path

from fastmaml.cli import main as fastmaml

VOTE = {"0": "Clinton", "1": "Dole"}  # codes as documented in statsmodels.datasets.anes96.NOTE
FEATURES = ["log_popul", "TVnews", "selfLR", "ClinLR", "DoleLR", "PID", "age", "educ"]


def anes96_csv() -> Path:
    spec = importlib.util.find_spec("statsmodels")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("this example reads a table shipped with statsmodels: pip install -e '.[examples]' "
                 "(or pip install statsmodels)")
    path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "anes96" / "anes96.csv"
    if not path.is_file():
        sys.exit(f"{path} is missing from this statsmodels installation")
    return path


def export(source: Path, target: Path) -> tuple[int, int]:
    """Tab-separated statsmodels file -> CSV with the income bracket as task and the vote as text; (rows, brackets)."""
    with open(source, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    header = [name.strip("'") for name in rows[0]]
    brackets = set()
    with open(target, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["income_bracket", *FEATURES, "vote"])
        for row in rows[1:]:
            r = dict(zip(header, row))
            bracket = f"income{int(float(r['income'])):02d}"
            brackets.add(bracket)
            log_popul = math.log(float(r["popul"]) + 0.1)  # as statsmodels' own loader does (popul is very skewed)
            writer.writerow([bracket, f"{log_popul:.4f}", *(r[k] for k in FEATURES[1:]), VOTE[r["vote"]]])
    return len(rows) - 1, len(brackets)


def run(cmd: list[str]) -> None:
    print("$ fastmaml " + " ".join(cmd), flush=True)
    start = time.perf_counter()
    code = fastmaml(cmd)
    print(f"  ({time.perf_counter() - start:.1f} s)", flush=True)
    if code != 0:
        sys.exit(code)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/table_classification"))
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--shots", type=int, default=5)
    args = parser.parse_args()
    started = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    data = args.out / "anes96.csv"
    rows, brackets = export(anes96_csv(), data)
    print(f"exported {rows} respondents in {brackets} income brackets to {data}")

    run_dir = args.out / "run"
    run(["train", "table", "--csv", str(data), "--task-column", "income_bracket", "--target", "vote",
         "--shots", str(args.shots), "--iterations", str(args.iterations), "--set", "test_fraction=0.25",
         "--set", "val_fraction=0.17", "--set", "val_every=100", "--set", "threads=1", "--out", str(run_dir),
         "--no-progress"])
    run(["eval", str(run_dir), "--best", "--tasks", "600", "--steps", "10"])

    from fastmaml.engine.evaluate import load_trained

    experiment, _, meta = load_trained(run_dir, "best")
    split = experiment.extras["table"]
    print(f"best validation accuracy at iteration {meta['step']}; {len(split.tasks['train'].names)} meta-train / "
          f"{len(split.tasks['val'].names)} validation / {len(split.tasks['test'].names)} meta-test brackets "
          f"(held out: {', '.join(sorted(split.tasks['test'].names))}); labels {', '.join(split.encoder.classes)}")

    # a held-out bracket: K respondents to adapt on (drawn at random, seeded), the others to predict
    bracket = min(split.tasks["test"].names)
    with open(data, newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        rows_of = [r for r in reader if r[0] == bracket]
    chosen = random.Random(0).sample(range(len(rows_of)), args.shots)
    support, predict = args.out / "support.csv", args.out / "predict.csv"
    for path, part in ((support, [rows_of[i] for i in chosen]),
                       (predict, [r for i, r in enumerate(rows_of) if i not in chosen])):
        with open(path, "w", newline="") as f:
            csv.writer(f).writerows([header, *part])
    print(f"adapting to {bracket}: {len(chosen)} support respondents, {len(rows_of) - len(chosen)} to predict")
    run(["adapt", str(run_dir), "--support", str(support), "--predict", str(predict), "--steps", "10",
         "--best", "--out", str(args.out / "predictions.csv")])
    print(f"total {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
