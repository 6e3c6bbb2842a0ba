"""The ``fastmaml`` command: parse, call a testable function, print. Exit 2 on bad input, 1 on failure."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

from fastmaml.config import RESUME_KEYS, apply_overrides, check_seed, check_task_count, dumps, parse_overrides
from fastmaml.errors import ConfigError, FastMAMLError, TrainingStopped

# CLI shorthand -> config key; each applies only to presets whose config has that key.
SHORTHAND = {
    "shots": "shots",
    "ways": "ways",
    "queries": "queries",
    "inner_steps": "inner_steps",
    "iterations": "iterations",
    "first_order": "first_order",
    "meta_sgd": "meta_sgd",
    "device": "device",
    "seed": "seed",
    "root": "root",
    "csv": "csv",
    "task_column": "task_column",
    "target": "target",
    "features": "features",
    "env": "env",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastmaml", description="Model-Agnostic Meta-Learning, fast.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="meta-train a preset (or resume a run)")
    train.add_argument("preset", nargs="?", help="experiment preset; see `fastmaml presets`")
    train.add_argument("--out", type=Path, help="run folder to create (must be empty or absent)")
    train.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue the run in RUN_DIR exactly")
    train.add_argument("--shots", type=int, help="support examples per task (per class for classification)")
    train.add_argument("--ways", type=int, help="classes per task")
    train.add_argument("--queries", type=int, help="query examples per task (per class for classification)")
    train.add_argument("--inner-steps", type=int, help="inner gradient steps at meta-train")
    train.add_argument("--iterations", type=int, help="meta-training iterations")
    train.add_argument("--first-order", action="store_true", default=None, help="first-order MAML")
    train.add_argument("--meta-sgd", action="store_true", default=None, help="learn α per parameter (Meta-SGD)")
    train.add_argument("--device", help="cpu, cuda, cuda:1, ...")
    train.add_argument("--seed", type=int)
    train.add_argument("--root", help="data folder of an image preset (omniglot, miniimagenet, images)")
    train.add_argument("--csv", help="table preset: the CSV file, one row per example")
    train.add_argument("--task-column", help="table preset: the column whose values name the tasks")
    train.add_argument("--target", help="table preset: the column to predict (numbers: regression, text: "
                       "classification; force with --set task_type=...)")
    train.add_argument("--features", help="table preset: feature columns A,B,... (default: all others)")
    train.add_argument("--env", help="rl preset: nav2d, cheetah-vel, cheetah-dir, ant-vel or ant-dir")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any config key")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")

    ev = sub.add_parser("eval", help="meta-test a run: metric after 0..N inner steps, mean ± 95%% CI")
    ev.add_argument("run_dir", type=Path)
    ev.add_argument("--tasks", type=int, help="meta-test tasks (default 600; rl: the run's eval_tasks, 40)")
    ev.add_argument("--steps", type=int, help="inner steps at meta-test (default: the run's eval_steps)")
    which = ev.add_mutually_exclusive_group()
    which.add_argument("--best", action="store_true", help="use the best validation checkpoint")
    which.add_argument("--iteration", type=int, metavar="N",
                       help="use the snapshot kept at iteration N (a run trained with --set snapshot_every=...); "
                       "the report is saved beside it, RUN_DIR/snapshots/iteration_NNNNNN.eval.json")
    ev.add_argument("--seed", type=int, help="seed of the meta-test task stream (default: fixed)")
    ev.add_argument("--split", choices=["test", "val", "train"], default="test",
                    help="tasks to score: meta-test (default), validation or meta-training classes/tasks; "
                    "supervised presets; a report on val or train is not saved to RUN_DIR/eval.json")
    ev.add_argument("--json", action="store_true", help="print one JSON object")
    ev.add_argument("--no-progress", action="store_true", help="no progress bar")
    ev.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="change a meta-test setting, e.g. inner_lr=0.2 (rl: baseline_fit=rllab); "
                    "the report is then not saved to RUN_DIR/eval.json, unless only threads, workers, device, "
                    "strategy, chunk_size, root or cache_dir changed (they change how or where it runs, not what it computes; "
                    "rl runs: threads and sim_threads)")

    compare = sub.add_parser("compare", help="evaluated runs side by side: one table, paired differences per "
                             "task, a figure")
    compare.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                         help="runs evaluated alike (fastmaml eval with the same --tasks, --steps, --seed); "
                         "RUN_SEED0,RUN_SEED1,...: one setting's runs at several training seeds, compared with "
                         "other such groups seed by seed (mean ± 95%% CI over the seeds)")
    compare.add_argument("--figure", type=Path, help="write the metric-vs-steps figure (PNG) here")
    compare.add_argument("--iteration", type=int, metavar="N",
                         help="compare the runs' snapshots kept at iteration N, each evaluated with "
                         "fastmaml eval RUN_DIR --iteration N")
    compare.add_argument("--per-seed-step", type=int, metavar="K",
                         help="with seed groups: show each seed's difference after K meta-test steps (default: "
                         "the last step)")

    plot = sub.add_parser("plot", help="write each run's PNG figures to RUN_DIR/plots, or several runs' learning "
                          "curves on one figure (--figure)")
    plot.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR")
    plot.add_argument("--tasks", type=int, help="meta-test tasks when a run has no eval.json (default 100)")
    plot.add_argument("--figure", type=Path, help="write the runs' learning curves, one line per run, to this PNG "
                      "instead (read from their metrics.jsonl: no meta-test, runs still training may be given)")
    plot.add_argument("--metric", action="append", default=[], metavar="KEY",
                      help="with --figure: a logged metric to draw, one panel each (repeat; default meta_loss, "
                      "return_pre, return_post and every val_* the runs logged)")
    plot.add_argument("--x", choices=["iteration", "time"], default="iteration",
                      help="with --figure: meta-training iterations (default) or training seconds (elapsed_s)")

    data = sub.add_parser("data", help="check, download (Omniglot) and cache a few-shot image dataset")
    data.add_argument("dataset", choices=["omniglot", "miniimagenet"])
    data.add_argument("--root", type=Path, help="dataset folder (Omniglot: the two zips or folders); default "
                      "$FASTMAML_DATA/<dataset>, as for train")
    data.add_argument("--download", action="store_true", help="Omniglot: fetch the official zips (md5-checked)")
    data.add_argument("--url", help="Omniglot: base URL of a mirror holding the two zips")
    data.add_argument("--cache-dir", type=Path, help="cache folder (default $FASTMAML_CACHE or ~/.cache/fastmaml)")

    sub.add_parser("presets", help="list the experiment presets")

    study = sub.add_parser("study", help="run a study of the slides' open questions: table, PNG and JSON")
    study.add_argument("name", help="study name, or `list`")
    study.add_argument("--quick", action="store_true", help="reduced budget (seconds to a minute)")
    study.add_argument("--out", type=Path, default=Path("runs/studies"), help="output folder (default runs/studies)")
    study.add_argument("--data", type=Path, help="autoencoder: Omniglot folder (default $FASTMAML_OMNIGLOT, else "
                       "$FASTMAML_DATA/omniglot)")
    seeds = study.add_mutually_exclusive_group()
    seeds.add_argument("--seed", type=int, default=0, help="training seed (default 0; the meta-test tasks are the "
                       "same for every seed)")
    seeds.add_argument("--seeds", type=_seed_list, metavar="S,S,...",
                       help="run once per training seed into OUT/seed-S and summarise the headline numbers over "
                       "the seeds (mean ± 95%% CI, OUT/NAME.seeds.txt); seeds already run there are reused")

    adapt = sub.add_parser("adapt", help="adapt a trained run to a new task: write predictions (table, sinusoid, "
                           "image runs) or the adapted policy (rl runs)")
    adapt.add_argument("run_dir", type=Path)
    adapt.add_argument("--support", type=Path,
                       help="the new task's labelled examples: table run, a CSV of rows; sinusoid run, a CSV "
                       "with columns x,y; image run, a folder SUPPORT/<class>/<image> with one folder per class")
    adapt.add_argument("--predict", type=Path,
                       help="table run: CSV rows to predict (target column optional); sinusoid run: a CSV with "
                       "column x (y optional); image run: a folder of at least 2 images, "
                       "classified together (in PREDICT/<class>/ folders their class is known: accuracy is reported)")
    adapt.add_argument("--goal", help="rl run: the new task's goal: x,y (nav2d), a velocity (cheetah-vel, ant-vel) "
                       "or +1/-1, forward/backward (cheetah-dir, ant-dir)")
    adapt.add_argument("--method", help="rl run: which trained policy to adapt (default: the run's own; also "
                       "pretrained or random where the run has them)")
    adapt.add_argument("--trajectories", type=int, help="rl run: trajectories per step (default: the run's eval_trajectories)")
    adapt.add_argument("--seed", type=int, help="rl run: seed of the action noise (default 0)")
    adapt.add_argument("--steps", type=int, help="inner steps (default: the run's eval_steps)")
    adapt.add_argument("--out", type=Path, required=True, help="CSV to write: the predict rows plus a prediction "
                       "column (image runs: file, prediction and each class's probability p_CLASS); rl run: a "
                       ".safetensors file for the adapted policy")
    adapt.add_argument("--csv", type=Path, help="the run's training CSV at a new location (its sha256 must match)")
    adapt.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="change how the run adapts: inner_lr (rl runs also pretrained_lr, random_lr, "
                       "eval_lr_decay, baseline_fit, discount, gae_lambda, threads, sim_threads)")
    adapt_which = adapt.add_mutually_exclusive_group()
    adapt_which.add_argument("--best", action="store_true", help="use the best validation checkpoint")
    adapt_which.add_argument("--iteration", type=int, metavar="N",
                             help="use the snapshot kept at iteration N (trained with --set snapshot_every=...)")

    from fastmaml.bench import add_arguments as add_bench_arguments

    add_bench_arguments(sub.add_parser("bench", help="meta-training tasks/s and peak memory vs a plain loop and peers"))
    return parser


def moved_data(config: object, trained_on: str | None) -> None:
    """ConfigError where a resumed image-folder run is pointed at another folder while the one it
    trained on is still there: a folder data set's root is the data itself (Omniglot and MiniImagenet
    check what they read, so their root may move). A root that is gone may be given anew (the data
    moved); that is logged, as its content cannot be compared."""
    root = getattr(config, "root", None)
    keys = getattr(config, "execution_keys", lambda: ())()
    if root is None or trained_on is None or "root" in keys or root == trained_on:
        return
    before = Path(trained_on)
    if before.exists() and before.resolve() != Path(root).resolve():
        raise ConfigError(f"this run trained on the images in {trained_on}, which are still there; a resumed run "
                          f"keeps its data (another --root would mix two data sets): drop --root {root}, or "
                          "start a new run on it")
    if not before.exists():
        logging.getLogger(__name__).warning("%s, the folder this run trained on, is gone; resuming on %s, taken "
                                            "to hold the same images", trained_on, root)


def refuse_inside_image_tree(config, run_dir: Path) -> None:
    """ConfigError for a new image-folder run whose folder, or decoded-image cache, would sit inside
    the tree it reads: every folder there is a class, so the run folder became one (eval, resume and
    plot then failed on it: "holds no images"), and the cache stopped the first start."""
    if getattr(config, "dataset", None) != "folder" or not getattr(config, "root", ""):
        return
    from fastmaml.experiments.fewshot import data_root

    root = data_root(config).resolve()
    places = {"--out": Path(run_dir)}
    if config.cache_dir:
        places["cache_dir"] = Path(config.cache_dir).expanduser()
    for what, place in places.items():
        if place.resolve().is_relative_to(root):
            raise ConfigError(f"{what} {place} is inside the image tree {root}, where every folder is a class; "
                              "put it outside the tree")


def cmd_train(args: argparse.Namespace) -> int:
    from fastmaml.engine.distributed import (
        agree_before_group,
        from_rank0_before_group,
        launched_rank,
        launched_world_size,
    )
    from fastmaml.engine.experiment import get_preset
    from fastmaml.engine.run_dir import CONFIG, parse_config, read_config_text
    from fastmaml.engine.trainer import train

    if (args.out is None) == (args.resume is None):
        raise ConfigError("give exactly one of --out RUN_DIR (a new run) or --resume RUN_DIR (continue a run)")
    shorthand = {key: getattr(args, flag) for flag, key in SHORTHAND.items() if getattr(args, flag) is not None}
    rank = launched_rank()
    if args.resume is not None:
        # under torchrun rank 0 alone reads the run folder: the other nodes need not have it
        text = from_rank0_before_group("resume_config", lambda: read_config_text(args.resume))
        preset, config = parse_config(text, args.resume / CONFIG)
        if args.preset and args.preset != preset.name:
            raise ConfigError(f"{args.resume} is a {preset.name!r} run, not {args.preset!r}")
        keys = set(shorthand) | {item.partition("=")[0].strip() for item in args.set}
        if keys - RESUME_KEYS:
            raise ConfigError(
                f"a resumed run keeps its config; only {', '.join(sorted(RESUME_KEYS))} may change "
                f"(got {', '.join(sorted(keys - RESUME_KEYS))})"
            )
        trained_on = getattr(config, "root", None)
        config = apply_overrides(config, [f"{k}={v}" for k, v in shorthand.items()] + args.set)
        # each node looks at its own folders: a refusal on one node stops every node (none waits for it)
        agree_before_group("moved_data", lambda: moved_data(config, trained_on))
        run_dir = args.resume
    else:
        if not args.preset:
            raise ConfigError("name a preset to train, e.g. `fastmaml train sinusoid --out runs/sinusoid`")
        preset = get_preset(args.preset)
        fields = {f.name for f in dataclasses.fields(preset.config_cls)}
        unknown = [k for k in shorthand if k not in fields]
        if unknown:
            raise ConfigError(f"preset {preset.name!r} has no option --{unknown[0].replace('_', '-')}")
        if preset.name == "rl" and any(item.partition("=")[0].strip() == "env" for item in args.set):
            raise ConfigError("choose the environment with --env ENV, not --set env=...: its preset values "
                              "(inner_lr, meta_batch_size, ...) come with it")
        # --set values go into the preset's make_config with the flags: the settings it derives from
        # them (sinusoid K's query points and baseline step, Omniglot 20-way's meta-batch and α) follow
        # --set shots=5 or ways=20 as they follow --shots 5 or --ways 20; a derived key set too wins
        try:
            config = preset.make_config(**{**shorthand, **parse_overrides(preset.config_cls, args.set)})
        except (ValueError, TypeError) as error:
            raise ConfigError(str(error)) from None
        run_dir = args.out
        refuse_inside_image_tree(config, run_dir)
    # the data set's checks run in the trainer, every node's agreed (agree_before_group); under torchrun
    # a node whose data failed here would have left the others waiting in the rendezvous
    config.validate(data=launched_world_size() <= 1)
    logging.getLogger(__name__).info("config:\n%s", dumps(config))
    summary = (preset.train or train)(preset, config, run_dir, resume=args.resume is not None,
                                      progress=not args.no_progress)
    best = f", best validation {summary['best']['metric']} {summary['best']['value']:.4g}" if summary["best"] else ""
    compiled = " (meta-loss compiled with torch.compile)" if summary.get("compiled") else ""
    if summary.get("validation_s", 0) >= 0.05:  # this call's validation, not counted in the training time
        compiled += f", plus {summary['validation_s']:.1f} s validating"
    start = summary["start_step"]  # fit_in_run_dir's: where this call began
    name = preset.name + (" (first order)" if getattr(config, "first_order", False) else "")
    if rank != 0:  # the other processes of a torchrun job wrote nothing
        return 0
    if start == summary["step"] and args.resume is not None:
        print(f"{run_dir} has already trained its {start} iterations: nothing to train "
              f"(give --iterations above {start} to continue it)")
    elif start:
        print(f"trained {name} from iteration {start} to {summary['step']} ({summary['elapsed_s']:.1f} s in "
              f"all){compiled}{best}; run folder {run_dir}")
    else:
        print(f"trained {name} for {summary['step']} iteration{'' if summary['step'] == 1 else 's'} in "
              f"{summary['elapsed_s']:.1f} s{compiled}{best}; "
              f"run folder {run_dir}")
    return 0


def format_report(report: dict) -> str:
    from fastmaml.engine.evaluate import paired_by_metric, shown_steps

    methods = report["metrics"]
    names = list(next(iter(methods.values())))
    tasks = {"val": "validation", "train": "meta-training"}.get(report.get("split", "test"), "meta-test")
    source = f" ({report['source']})" if report.get("source") else ""
    if report.get("sampling") == "steps":  # meta-RL with the original's step budget: paths vary
        paths = ", ".join(f"{m} {min(p):.1f}" + (f"-{max(p):.1f}" if max(p) > min(p) else "")
                          for m, p in report.get("paths", {}).items())
        source += (f", a budget of {report.get('budget', '?')} steps per task and step (sampling=steps; mean "
                   f"trajectories per task: {paths})")
    elif report.get("trajectories"):  # meta-RL: how much each step and each return rests on
        source += f", {report['trajectories']} trajectories per task and step"
    best = " (the best validation checkpoint)" if report.get("checkpoint") == "best" else ""
    model = f", {report['model']}," if report.get("model") else ""  # conv and MLP runs of one task set
    lines = [f"{report['experiment']}{model} at iteration {report['step']}{best}: {report['tasks']} {tasks} "
             f"tasks{source}, mean ± 95% CI after N inner steps"
             + (f" (meta-test settings changed: {', '.join(report['overrides'])})" if report.get("overrides") else "")]
    shown = shown_steps(report["steps"])
    for name in names:
        header = f"{'steps':>5}  " + "  ".join(f"{m:>22}" for m in methods)
        lines += ["", f"{name}:", header]
        for step in shown:
            cells = [f"{methods[m][name]['mean'][step]:>12.4f} ± {methods[m][name]['ci95'][step]:<7.4f}" for m in methods]
            lines.append(f"{step:>5}  " + "  ".join(f"{c:>22}" for c in cells))
    first = next(iter(methods))
    for name, differences in paired_by_metric(methods).items():
        lines += ["", f"{name}: {first} minus each method, task by task on the same tasks (paired), mean ± 95% CI:",
                  f"{'steps':>5}  " + "  ".join(f"{f'{first} - {m}':>22}" for m in differences)]
        for step in shown:
            cells = [f"{mean[step]:>+12.4f} ± {ci[step]:<7.4f}" for mean, ci in differences.values()]
            lines.append(f"{step:>5}  " + "  ".join(f"{c:>22}" for c in cells))
    if "oracle" in methods and report["steps"]:
        lines += ["", "oracle: observes its goal and is not adapted; its rows repeat its return at step 0"]
    if len(shown) <= report["steps"]:
        lines += ["", f"{len(shown)} of the {report['steps'] + 1} step rows shown; --json prints every step"]
    return "\n".join(lines)


def which_checkpoint(args: argparse.Namespace) -> str | int:
    """What eval and adapt load: --best's checkpoint, --iteration's snapshot, or the latest."""
    return "best" if args.best else "checkpoint" if args.iteration is None else args.iteration


def cmd_eval(args: argparse.Namespace) -> int:
    from fastmaml.engine.evaluate import EVAL_SEED, evaluate
    from fastmaml.engine.run_dir import eval_path, read_config

    preset, _ = read_config(args.run_dir, data=False)  # evaluate() checks the data
    if args.seed is not None:
        check_seed(args.seed)  # torch's generators take [0, 2^63): a larger one overflowed with a traceback
    saved = eval_path(args.run_dir, which_checkpoint(args))
    before = saved.stat().st_mtime_ns if saved.is_file() else None
    if args.split != "test" and preset.evaluate is not None:
        raise ConfigError(f"--split {args.split} applies to the supervised presets; the {preset.name} preset "
                          "meta-tests on its own held-out tasks only")
    report = (preset.evaluate or evaluate)(
        args.run_dir,
        **({} if args.tasks is None else {"tasks": args.tasks}),
        **({} if args.split == "test" else {"split": args.split}),
        steps=args.steps,
        seed=EVAL_SEED if args.seed is None else args.seed,
        which=which_checkpoint(args),
        overrides=args.set,
        finite=True,
        progress=not args.no_progress,
    )
    print(json.dumps(report) if args.json else format_report(report))
    changed = [*report.get("overrides", ()), *([f"--split {args.split}"] if args.split != "test" else [])]
    if changed:
        print(f"meta-tested with {', '.join(changed)}; not saved to {saved}", file=sys.stderr)
    elif saved.is_file() and saved.stat().st_mtime_ns != before:
        print(f"saved to {saved}" + (" (replacing the report there)" if before is not None else ""), file=sys.stderr)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from fastmaml import plotting
    from fastmaml.engine.compare import merge, merge_seeds, seeds_summary, summary

    if args.figure and args.figure.suffix.lower() != ".png":
        raise ConfigError(f"--figure {args.figure}: give a .png path")
    if any("," in arg and not Path(arg).is_dir() for arg in args.run_dirs):  # a folder may have a comma in its name
        groups = [[Path(arg)] if Path(arg).is_dir() else [Path(p) for p in arg.split(",") if p]
                  for arg in args.run_dirs]
        report = merge_seeds(groups, args.iteration)
        print(seeds_summary(report, args.per_seed_step))
    else:
        if args.per_seed_step is not None:
            raise ConfigError("--per-seed-step shows each training seed's difference: give comma-separated groups "
                              "of runs, one run per seed (RUN_SEED0,RUN_SEED1 ...)")
        report = merge([Path(arg) for arg in args.run_dirs], args.iteration)
        print(summary(report))
    if args.figure:
        try:
            args.figure.parent.mkdir(parents=True, exist_ok=True)
            print(plotting.metric_vs_steps(report, args.figure))
        except OSError as error:
            raise ConfigError(f"cannot write --figure {args.figure} ({error.strerror}); choose a writable folder "
                              "(the table above is complete)") from None
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from fastmaml.engine.plots import plot_run, plot_runs
    from fastmaml.engine.run_dir import read_config

    if args.figure is not None:
        if args.tasks is not None:
            raise ConfigError("--tasks sets a run's meta-test for its own figures; --figure draws learning curves "
                              "from the runs' logs and meta-tests nothing: leave one of them out")
        print(plot_runs(args.run_dirs, args.figure, args.metric, args.x))
        return 0
    if args.metric or args.x != "iteration":
        raise ConfigError("--metric and --x choose the curves of --figure PATH.png (several runs on one figure); "
                          "add --figure, or leave them out for each run's own figures")
    if args.tasks is not None:
        check_task_count(args.tasks)
    for run_dir in args.run_dirs:
        preset, _ = read_config(run_dir, data=False)  # a learning curve needs no data: plot runs anywhere
        for path in (preset.plot or plot_run)(run_dir, **({} if args.tasks is None else {"tasks": args.tasks})):
            print(path)
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from fastmaml.experiments.fewshot import FewShotConfig, data_root, prepare

    if args.root is None and not os.environ.get("FASTMAML_DATA"):
        raise ConfigError(f"no data folder for {args.dataset}: pass --root DIR, or set FASTMAML_DATA to a folder "
                          f"holding {args.dataset}/")
    root = args.root if args.root is not None else data_root(FewShotConfig(dataset=args.dataset))
    for line in prepare(args.dataset, root, args.cache_dir, download=args.download, url=args.url):
        print(line)
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    from fastmaml.engine.experiment import PRESETS, get_preset

    get_preset("sinusoid")  # registers every preset
    for name, preset in sorted(PRESETS.items()):
        print(f"{name:<16} {preset.description}")
    return 0


def cmd_study(args: argparse.Namespace) -> int:
    from fastmaml.studies import STUDIES, run_study

    if args.name == "list":
        for name, study in STUDIES.items():
            print(f"{name:<18} {study.description}")
        return 0
    if args.seeds:
        from fastmaml.studies import run_seeds

        summary = run_seeds(args.name, args.out, args.seeds, quick=args.quick, data=args.data,
                            progress=lambda line: print(line, flush=True))
        print(summary["text"])
        return 0
    print(run_study(args.name, args.out, quick=args.quick, seed=args.seed, data=args.data)["text"])
    return 0


def _seed_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 0,1,2, got {text!r}") from None


def refuse_run_files(out: Path, run: Path | None = None) -> None:
    """ConfigError where writing ``out`` would overwrite a file of the run folder ``run`` (default: a
    run folder that holds ``out`` directly or in one of its subfolders, found by its config.json):
    its checkpoints, config, metrics, evaluations, or anything in its snapshots or plots. A new file
    directly in the run folder is allowed."""
    from fastmaml.engine.run_dir import CONFIG, LOCK, METRICS, is_run_folder

    target = out.resolve()
    if run is None:
        run = next((folder for folder in target.parents[:2] if is_run_folder(folder)), None)
    if run is None or run not in target.parents:
        return
    name = target.name
    reserved = name in (CONFIG, METRICS, LOCK) or name.startswith(("checkpoint", "best", "eval")) or (
        target.exists() and target.suffix in (".json", ".jsonl", ".safetensors"))
    if target.parent != run or reserved:
        raise ConfigError(f"--out {out} would overwrite a file of the run in {run}; write the output outside it "
                          "or under a new name directly in it")


def refuse_overwriting(out: Path, run_dir: Path, config: object, inputs: list[Path | None]) -> None:
    """ConfigError where ``adapt --out`` would overwrite a file of the run (its checkpoints, config,
    metrics, evaluations, snapshots, plots) or one of its inputs: the support or predict file or
    folder, the table's training CSV, the image data folder. Writing there would lose a run or its
    data, as an adapt that wrote a CSV over checkpoint.safetensors did."""
    target = out.resolve()
    run = run_dir.resolve()

    def same_or_inside(path: Path, folder: bool) -> bool:
        path = path.resolve()
        return target == path or (folder and path in target.parents) or (
            target.exists() and path.exists() and os.path.samefile(target, path))

    refuse_run_files(out, run)
    # an image run's support and predict inputs, and its data, are folders: nothing may be written inside them
    images = hasattr(config, "root")
    data = [(Path(value), folder) for value, folder in ((getattr(config, "csv", ""), False),
                                                        (getattr(config, "root", ""), True)) if value]
    for path, folder in [(p, images) for p in inputs if p is not None] + data:
        if same_or_inside(path, folder):
            if target == path.resolve() or (target.exists() and os.path.samefile(target, path.resolve())):
                raise ConfigError(f"--out {out} would overwrite {path}, an input of this adapt or of the run; "
                                  "choose another --out path")
            raise ConfigError(f"--out {out} would write into {path}, a data folder of this adapt or of the run "
                              "(a new file there would be read as data next time); choose a path outside it")


ADAPT_KEYS = ("inner_lr",)  # the --set keys that change what adapt computes (eval's others do not apply)
RL_ADAPT_KEYS = ("inner_lr", "pretrained_lr", "random_lr", "eval_lr_decay", "baseline_fit", "discount", "gae_lambda",
                 "threads", "sim_threads")


def check_adapt_overrides(config: Any, overrides: list[str]) -> None:
    """ConfigError for an ``adapt --set`` key that adapt does not use (the rest is checked as eval's)."""
    from fastmaml.rl.trainer import RLConfig

    allowed = RL_ADAPT_KEYS if isinstance(config, RLConfig) else ADAPT_KEYS
    for item in overrides:
        key = item.partition("=")[0].strip()
        if key not in allowed:
            raise ConfigError(f"adapt --set cannot change {key!r}; keys that change how a {type(config).__name__} "
                              f"run adapts: {', '.join(allowed)}")


def cmd_adapt(args: argparse.Namespace) -> int:
    from fastmaml.engine.run_dir import read_config
    from fastmaml.experiments.fewshot import FewShotConfig

    which = which_checkpoint(args)
    preset, config = read_config(args.run_dir, data=False)  # a table run's CSV is checked where adapt reads it
    check_adapt_overrides(config, args.set)
    if preset.name == "rl":
        return adapt_rl(args)
    rl_only = [f"--{name}" for name in ("goal", "method", "trajectories", "seed") if getattr(args, name) is not None]
    if rl_only:
        verb = "applies" if len(rl_only) == 1 else "apply"
        raise ConfigError(f"{' and '.join(rl_only)} {verb} to rl runs; the {preset.name} preset's runs adapt to --support")
    missing = [f"--{name}" for name in ("support", "predict") if getattr(args, name) is None]
    if missing:
        raise ConfigError(f"adapt needs {' and '.join(missing)} for a {preset.name} run (see fastmaml adapt --help)")
    if args.csv is not None and preset.name != "table":
        raise ConfigError(f"--csv is for table runs; a {preset.name} run reads its new task from --support")
    refuse_overwriting(args.out, args.run_dir, config, [args.support, args.predict, args.csv])
    if isinstance(config, FewShotConfig):
        from fastmaml.experiments.adapt_images import adapt_images

        print(adapt_images(args.run_dir, args.support, args.predict, args.out, steps=args.steps, which=which,
                           overrides=args.set))
        return 0
    if preset.name == "sinusoid":
        from fastmaml.experiments.sinusoid import adapt_points

        print(adapt_points(args.run_dir, args.support, args.predict, args.out, steps=args.steps, which=which,
                           overrides=args.set))
        return 0
    from fastmaml.experiments.table import adapt_csv

    print(adapt_csv(args.run_dir, args.support, args.predict, args.out, steps=args.steps, csv_path=args.csv,
                    which=which, overrides=args.set))
    return 0


def adapt_rl(args: argparse.Namespace) -> int:
    from fastmaml.rl.adapt import adapt_policy, check_out_path, report, save_adapted
    from fastmaml.rl.trainer import NO_BEST

    given = [f"--{name}" for name in ("support", "predict", "csv") if getattr(args, name) is not None]
    if given:
        raise ConfigError(f"{' and '.join(given)}: an rl run adapts to a new --goal by sampling it; drop them")
    if args.best:
        raise ConfigError(NO_BEST)
    if args.goal is None:
        raise ConfigError("adapt needs --goal for an rl run: x,y (nav2d), a velocity (cheetah-vel, ant-vel) or "
                          "+1/-1 (cheetah-dir, ant-dir)")
    check_out_path(args.out)
    refuse_overwriting(args.out, args.run_dir, None, [])
    adapted, note = adapt_policy(args.run_dir, args.goal, method=args.method, steps=args.steps,
                                 trajectories=args.trajectories, seed=0 if args.seed is None else args.seed,
                                 which=which_checkpoint(args), overrides=args.set)
    save_adapted(args.out, adapted)
    print(report(adapted, note))
    print(f"adapted policy written to {args.out} (fastmaml.rl.adapt.load_adapted reads it)")
    return 0


COMMANDS = {"train": cmd_train, "eval": cmd_eval, "plot": cmd_plot, "data": cmd_data, "presets": cmd_presets}
COMMANDS.update(study=cmd_study, adapt=cmd_adapt, compare=cmd_compare)


def cmd_bench(args: argparse.Namespace) -> int:
    from fastmaml.bench import run

    if getattr(args, "out", None):  # a report written over a run's checkpoint lost the run's last iterations
        refuse_run_files(Path(args.out))
    return run(args, child_command=(sys.executable, "-m", "fastmaml.bench"), prog="fastmaml bench")


COMMANDS.update(bench=cmd_bench)


def _warnings_beside_progress_bars() -> contextlib.AbstractContextManager:
    """Log records to the console through tqdm, so that a warning during a progress bar (a stop
    request, a compile fallback) gets a line of its own instead of joining the bar's; only where
    logging writes to the console (as ``main``'s basicConfig sets up), not where an embedding
    program or test runner configured logging its own way."""
    from tqdm.contrib.logging import logging_redirect_tqdm

    console = any(type(h) is logging.StreamHandler and h.stream in (sys.stdout, sys.stderr)
                  for h in logging.getLogger().handlers)
    return logging_redirect_tqdm() if console else contextlib.nullcontext()


OUT_OF_MEMORY = ("out of memory; make the model, meta_batch_size, image_size or --tasks smaller, or set "
                 "micro_batch_size (the last good checkpoint, if any, is kept)")


def out_of_memory(error: RuntimeError) -> bool:
    """A RuntimeError that is torch running out of host or GPU memory (its OutOfMemoryError is one)."""
    import torch

    kind = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", ())
    return isinstance(error, kind) or "can't allocate memory" in str(error)


def negative_values_attached(argv: list[str]) -> list[str]:
    """``--goal -0.1,0.2`` as ``--goal=-0.1,0.2``: argparse takes a value that starts with '-' and is not a
    plain number for an option (half of 2D navigation's goals have a negative x)."""
    out: list[str] = []
    for arg in argv:
        if out and out[-1] == "--goal" and len(arg) > 1 and arg[0] == "-" and (arg[1].isdigit() or arg[1] == "."):
            out[-1] = f"--goal={arg}"
        else:
            out.append(arg)
    return out


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(negative_values_attached(list(sys.argv[1:] if argv is None else argv)))
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s: %(message)s")
    from fastmaml.engine.distributed import launched_world_size
    from fastmaml.engine.stopping import hold_stop_signals

    # a torchrun process holds torchrun's SIGTERM until it has said why it stopped (hold_stop_signals)
    with hold_stop_signals(active=args.command == "train" and launched_world_size() > 1):
        return _run_command(args)


def _run_command(args: argparse.Namespace) -> int:
    """One command, its errors told in one line each."""
    try:
        from fastmaml.engine.distributed import launched_world_size

        if args.command != "train" and launched_world_size() > 1:
            # each process would do the whole job and write the same files
            raise ConfigError(f"`fastmaml {args.command}` runs as one process; only `fastmaml train` splits its work "
                              "over torchrun's processes, so start it without torchrun")
        with _warnings_beside_progress_bars():
            return COMMANDS[args.command](args)
    except TrainingStopped as stop:  # not an error: the run saved where it stopped
        from fastmaml.engine.distributed import launched_rank

        if launched_rank() == 0:  # under torchrun every rank stops; rank 0's node holds the checkpoint
            print(f"fastmaml: {stop}", file=sys.stderr)
        return stop.exit_code
    except FastMAMLError as error:
        print(f"fastmaml: error{_rank_tag()}: {error}", file=sys.stderr)
        return error.exit_code
    except MemoryError:
        print(f"fastmaml: error: {OUT_OF_MEMORY}", file=sys.stderr)
        return 1
    except OSError as error:  # a full disk, a folder made read-only, a file that became a folder
        if error.errno not in FILE_ERRNOS:  # a library that did not load, a connection: not the user's files
            raise
        logging.getLogger(__name__).info("the error in full", exc_info=True)  # -v shows it
        path = error.filename2 or error.filename  # os.replace(tmp, target): the target
        what = f"{error.strerror or error}{f' ({path})' if path else ''}"
        where = _rank_tag()
        if args.command == "train":
            run_dir = args.resume if args.resume is not None else args.out
            print(f"fastmaml: error{where}: {what}; free space or make {run_dir} writable"
                  f"{_continue_hint(run_dir)}", file=sys.stderr)
        else:
            print(f"fastmaml: error{where}: {what}; free space or fix the file's permissions, then run the "
                  "command again", file=sys.stderr)
        return 1
    except RuntimeError as error:
        from fastmaml.engine.distributed import launched_rank, lost_peer

        if out_of_memory(error):
            print(f"fastmaml: error: {OUT_OF_MEMORY} ({str(error).splitlines()[0][:200]})", file=sys.stderr)
            return 1
        what = lost_peer(error)
        if what is None:
            raise
        print(f"fastmaml: error: another process of this torchrun job stopped; rank {launched_rank()} lost it "
              f"({what}); that process's output or torchrun's report says why; the run continues from its last "
              "checkpoint with fastmaml train --resume RUN_DIR", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # a second Ctrl-C while training, or Ctrl-C in another command
        resume = ""
        if args.command == "train":
            resume = _continue_hint(args.resume if args.resume is not None else args.out)
        print(f"fastmaml: interrupted{resume}", file=sys.stderr)
        return 130


# OSErrors about the user's files and disk, told in one line; any other OSError keeps its traceback
FILE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EISDIR, errno.ENOTDIR,
               errno.EIO, errno.EFBIG, errno.ENAMETOOLONG, errno.ENOENT, errno.ESTALE}


def _rank_tag() -> str:
    """`` (rank N of W)`` for an error printed by a torchrun process other than rank 0: every process
    that meets an error says so, and the tag tells the copies apart."""
    from fastmaml.engine.distributed import launched_rank, launched_world_size

    return f" (rank {launched_rank()} of {launched_world_size()})" if launched_rank() > 0 else ""


def _continue_hint(run_dir: Path) -> str:
    """How a train command that stopped on an error or a second Ctrl-C goes on: from the last
    checkpoint, or, with none yet, by starting again (the folder of a start without a checkpoint is reused)."""
    from fastmaml.engine.run_dir import has_checkpoint

    try:
        saved = has_checkpoint(run_dir)
    except OSError:  # a folder this process cannot read
        saved = False
    return (f"; the run continues from its last checkpoint with fastmaml train --resume {run_dir}" if saved
            else f"; it had saved no checkpoint yet: start it again (fastmaml train PRESET ... --out {run_dir})")


def run() -> NoReturn:
    """The ``fastmaml`` command and ``python -m fastmaml``: :func:`main`, then exit with its code.

    Under torchrun (``WORLD_SIZE`` > 1) the process ends with ``os._exit`` once its output is flushed,
    skipping the interpreter's finalization: there, gloo's worker threads sometimes abort a process
    whose run had finished and saved everything ("terminate called without an active exception",
    SIGABRT; seen once in a clean-clone CI run, after both ranks had printed their summary), which
    torchrun reports as a failed job. Everything the run writes is written and closed before
    ``main`` returns, so nothing is lost by not finalizing; the process group, whose destruction
    can hang, is left to the exit after every rank passed a last barrier
    (:func:`fastmaml.engine.distributed.exit_closes_process_group`).
    """
    from fastmaml.engine.distributed import exit_closes_process_group, launched_world_size

    torchrun = launched_world_size() > 1
    if torchrun:
        exit_closes_process_group()
    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:  # `fastmaml eval RUN | head`: the reader left; no traceback (Python's advice:
        # point stdout at devnull so the interpreter's own flush at exit does not raise again)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 141  # 128 + SIGPIPE, as a shell reports a command whose reader closed the pipe
    if torchrun:
        sys.stdout.flush()
        sys.stderr.flush()
        logging.shutdown()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    run()
