"""Does a meta-test task that holds one character in two turns score differently?

fastmaml makes every quarter turn of an Omniglot character a class of its own, so a task may draw
one character twice, in two turns; the original MAML code drew distinct characters and then one
turn for each. This replays the meta-test task stream of a saved eval report (the same seed and
chunks as ``fastmaml eval``), marks the tasks that repeat a character, and prints the report's
accuracy after its last step on those tasks and on the rest, mean ± 95% CI:

    FASTMAML_DATA=../shared/data python benchmarks/omniglot_turn_pairs.py runs/omniglot-20w1s-long \\
        runs/omniglot-20w1s-long/snapshots/iteration_020000.eval.json

Results: benchmarks/results/omniglot_turn_pairs.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from fastmaml.engine.evaluate import EVAL_CHUNK, EVAL_SEED, mean_ci95
from fastmaml.engine.run_dir import read_config
from fastmaml.experiments import fewshot


def repeats_a_character(run_dir: Path, num_tasks: int, seed: int = EVAL_SEED, split: str = "test",
                        chunk: int = EVAL_CHUNK) -> torch.Tensor:
    """(num_tasks,) bool: whether each task of ``fastmaml eval``'s stream holds a character twice."""
    _, config = read_config(run_dir, [])
    images = fewshot.load_split(config, split)
    generator, marks, done = torch.Generator().manual_seed(seed), [], 0
    while done < num_tasks:  # as evaluate.adaptation_curves draws them, chunk by chunk
        n = min(chunk, num_tasks - done)
        probe = torch.Generator()
        probe.set_state(generator.get_state())
        _, base = images.draw_classes(probe, n, config.ways)
        images.sample(generator, n, config.ways, config.shots, fewshot.query_count(config, split))
        ordered = base.sort(dim=1).values
        marks.append((ordered[:, 1:] == ordered[:, :-1]).any(dim=1))  # a character drawn twice
        done += n
    return torch.cat(marks)


def summary(values: torch.Tensor) -> str:
    if len(values) == 0:
        return "no tasks"
    mean, half = mean_ci95(values)
    return f"{100 * float(mean):.2f} ± {100 * float(half):.2f}% ({len(values)} tasks)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("report", type=Path, help="an eval.json of the run (its seed and task count are used)")
    args = parser.parse_args()
    report = json.loads(args.report.read_text())
    accuracy = torch.tensor(report["metrics"]["maml"]["accuracy"]["per_task"][-1])
    marks = repeats_a_character(args.run_dir, len(accuracy), report.get("seed", EVAL_SEED))
    print(f"{report.get('experiment')} at iteration {report.get('step')}, accuracy after {report.get('steps')} steps")
    print(f"  tasks with a character in two turns: {summary(accuracy[marks])}")
    print(f"  the other tasks:                     {summary(accuracy[~marks])}")
    print(f"  all:                                 {summary(accuracy)}")


if __name__ == "__main__":
    main()
