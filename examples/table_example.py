"""Few-shot regression on a real grouped table: fertility rate per country (World Bank, via statsmodels).

Each country is a task; its rows are (year, births per woman) for 1960-2013. Given K = 5 years of a
country it has never seen, predict the other years. The table ships inside the statsmodels wheel
(``statsmodels/datasets/fertility/fertility.csv``; World Development Indicators, World Bank, used
under the World Bank's terms of use for its open data, CC BY 4.0), so nothing is downloaded: it is
read from the installed package's files, without importing statsmodels.

    pip install -e '.[examples]'          # statsmodels (or: pip install statsmodels)
    python examples/table_example.py [--out runs/table_example] [--iterations 5000]

It exports the table to CSV (long format: country, year, fertility), then runs the same commands a
user would: ``fastmaml train table``, ``fastmaml eval`` and ``fastmaml adapt`` on a held-out country.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import sys
import time
from pathlib import Path

from fastmaml.cli import main as fastmaml

# Rows of the World Bank file that are aggregates of countries, not countries: leaving them in would
# let a meta-test country's data reach meta-training through an average that contains it.
AGGREGATES = {"CAA", "LCN", "OED", "OSS", "PSS"}


def fertility_csv() -> Path:
    spec = importlib.util.find_spec("statsmodels")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("this example reads a table shipped with statsmodels: pip install -e '.[examples]' "
                 "(or pip install statsmodels)")
    path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "fertility" / "fertility.csv"
    if not path.is_file():
        sys.exit(f"{path} is missing from this statsmodels installation")
    return path


def export(source: Path, target: Path) -> tuple[int, int]:
    """Wide (one column per year) -> long CSV without missing values or aggregates; (rows, countries)."""
    with open(source, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    years = rows[0][4:]
    n, countries = 0, 0
    with open(target, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["country", "year", "fertility"])
        for row in rows[1:]:
            if row[1] in AGGREGATES:
                continue
            values = [(y, v) for y, v in zip(years, row[4:]) if v.strip()]
            countries += bool(values)
            for year, value in values:
                writer.writerow([row[0], year, value])
                n += 1
    return n, countries


def run(cmd: list[str]) -> None:
    print("$ fastmaml " + " ".join(cmd), flush=True)
    start = time.perf_counter()
    code = fastmaml(cmd)
    print(f"  ({time.perf_counter() - start:.1f} s)", flush=True)
    if code != 0:
        sys.exit(code)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/table_example"))
    parser.add_argument("--iterations", type=int, default=5000)
    parser.add_argument("--shots", type=int, default=5)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    data = args.out / "fertility.csv"
    rows, countries = export(fertility_csv(), data)
    print(f"exported {rows} rows of {countries} countries to {data}")

    run_dir = args.out / "run"
    run(["train", "table", "--csv", str(data), "--task-column", "country", "--target", "fertility",
         "--features", "year", "--shots", str(args.shots), "--iterations", str(args.iterations), "--out",
         str(run_dir), "--no-progress"])
    run(["eval", str(run_dir), "--tasks", "600", "--steps", "10"])
    from fastmaml.engine.evaluate import evaluate, load_trained

    report = evaluate(run_dir, tasks=600, steps=100, save=False)  # the per-task model needs more steps
    experiment, _, _ = load_trained(run_dir)
    split = experiment.extras["table"]
    std = split.encoder.target_std
    print(f"{len(split.tasks['train'].names)} meta-train / {len(split.tasks['test'].names)} meta-test countries; "
          f"MSE is in standardised units: multiply by {std:.4f}² = {std**2:.4f} for (births per woman)²")
    print("after 100 steps (same tasks): " + ", ".join(
        f"{m} {v['mse']['mean'][-1]:.4f} ± {v['mse']['ci95'][-1]:.4f}" for m, v in report["metrics"].items()))

    # a held-out country: K rows to adapt on, the rest to predict
    country = sorted(experiment.extras["table"].tasks["test"].names)[0]
    with open(data, newline="") as f:
        rows_of = [r for r in csv.reader(f) if r[0] == country]
    support, predict = args.out / "support.csv", args.out / "predict.csv"
    step = max(1, len(rows_of) // args.shots)
    chosen = rows_of[::step][: args.shots]  # K years spread over the period
    for path, part in ((support, chosen), (predict, [r for r in rows_of if r not in chosen])):
        with open(path, "w", newline="") as f:
            csv.writer(f).writerows([["country", "year", "fertility"], *part])
    print(f"adapting to {country}: {len(chosen)} support years, {len(rows_of) - len(chosen)} to predict")
    run(["adapt", str(run_dir), "--support", str(support), "--predict", str(predict), "--steps", "10",
         "--out", str(args.out / "predictions.csv")])


if __name__ == "__main__":
    main()
