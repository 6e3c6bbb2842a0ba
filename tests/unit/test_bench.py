"""The benchmark suite (fastmaml.bench): table, optional peers, the meta-gradient check, micro-batching."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
from pathlib import Path

import pytest
import torch

from fastmaml import bench
from fastmaml.bench import BenchConfig, Implementation, Workload
from fastmaml.cli import main
from fastmaml.errors import ConfigError
from fastmaml.models.conv import ConvNet

FAST = dict(workloads=["sinusoid"], orders=["first"], repeats=1, warmup=0, memory=False, threads=1)


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread: on a busy 2-core machine two threads are many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small_conv(meta_batch_size: int = 6, inner_steps: int = 3) -> Workload:
    """A float64 conv workload small enough for a unit test (batch norm included)."""
    base = bench.WORKLOADS["omniglot-20w1s"]

    def make_batch(generator: torch.Generator, tasks: int):
        batch = bench.image_batch(generator, tasks, ways=3, shots=1, queries=2, channels=1, size=12)
        return bench.TaskBatch(batch.support_x.double(), batch.support_y, batch.query_x.double(), batch.query_y)

    return dataclasses.replace(base, name="small-conv", make_model=lambda: ConvNet(1, 3, hidden=4, image_size=12).double(),
                               inner_steps=inner_steps, meta_batch_size=meta_batch_size, make_batch=make_batch)


def test_cli_quick_run_prints_the_table(capsys):
    code = main(["bench", "--workloads", "sinusoid", "--repeats", "2", "--quick", "--threads", "1"])
    out = capsys.readouterr().out
    assert code == 0
    header = next(line for line in out.splitlines() if line.startswith("| workload"))
    assert [c.strip() for c in header.strip("|").split("|")] == list(bench.COLUMNS)
    assert "fastmaml bench --workloads sinusoid --repeats 2 --quick --threads 1" in out
    rows = [line for line in out.splitlines() if line.startswith("| sinusoid")]
    names = {(r.split("|")[2].strip(), r.split("|")[3].strip()) for r in rows}
    for order in ("second", "first"):
        for impl in ("fastmaml", "fastmaml loop", "torch.func loop", "learn2learn", "higher"):
            assert (order, impl) in names
    fastmaml_row = next(r for r in rows if r.split("|")[3].strip() == "fastmaml")
    assert float(fastmaml_row.split("|")[4].replace(",", "")) > 0
    assert "= fastmaml (auto picks vmap)" in out  # the MLP's vmap row is fastmaml's own


def test_missing_peers_are_rows_that_say_so(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("learn2learn", "higher") else real(name, *a))
    rows = bench.run_bench(BenchConfig(**FAST, implementations=["fastmaml", "learn2learn", "higher"]))
    notes = {r.implementation: r.note for r in rows}
    assert notes == {"fastmaml": "", "learn2learn": "not installed", "higher": "not installed"}
    assert "not installed" in bench.format_table(rows)


def test_gradient_check_catches_a_wrong_implementation():
    def scaled(model, workload, first_order):
        meta_step = bench.plain_loop_step(model, workload, first_order)

        def step(batch):
            meta_step(batch)
            for p in model.parameters():
                p.grad.mul_(1.01)

        return step

    wrong = Implementation("scaled by 1.01", scaled)
    rows = bench.run_bench(BenchConfig(**FAST, implementations=["torch.func loop"], extra=[wrong]))
    by_name = {r.implementation: r for r in rows}
    assert by_name["torch.func loop"].grad_diff < 1e-5 and by_name["torch.func loop"].tasks_per_s > 0
    bad = by_name["scaled by 1.01"]
    assert bad.note.startswith("wrong meta-gradient") and bad.tasks_per_s is None
    assert bad.grad_diff == pytest.approx(0.01, rel=1e-3)


@pytest.mark.parametrize("first_order", [False, True])
def test_every_implementation_matches_fastmaml_on_a_conv_net(first_order):
    w = small_conv(meta_batch_size=3, inner_steps=2)
    torch.manual_seed(0)
    base = w.make_model()
    batch = w.batch()
    reference = None
    for name, impl in bench.implementations(chunk_size=2, micro_batch_size=2).items():
        model = ConvNet(1, 3, hidden=4, image_size=12).double()
        model.load_state_dict(base.state_dict())
        try:
            grads = bench.meta_gradient(model, impl.build(model, w, first_order), batch)
        except bench.Unavailable:
            continue
        reference = grads if reference is None else reference
        assert bench.max_rel_diff(grads, reference) < 1e-10, name


def test_cuda_graph_row_only_on_a_gpu():
    assert "fastmaml cuda graph" not in bench.implementations()
    w = small_conv(meta_batch_size=2, inner_steps=1)
    model = w.make_model()
    with pytest.raises(bench.Unavailable, match="CUDA graphs need a CUDA device"):
        bench.implementations(cuda=True)["fastmaml cuda graph"].build(model, w, False)


@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="needs a CUDA GPU: CUDA graphs exist only there (CI has none; "
                           "benchmarks/gpu_check.sh runs this test on the GPU machine)")
def test_cuda_graph_step_replays_the_meta_gradient_of_each_batch():
    """Replays after the capture give each new batch's meta-gradient, added to what .grad holds."""
    w = small_conv(meta_batch_size=3, inner_steps=2)
    torch.manual_seed(0)
    model = w.make_model().cuda()
    step = bench.implementations(cuda=True)["fastmaml cuda graph"].build(model, w, False)
    reference = bench.fastmaml_step()(model, w, False)
    for seed in range(3):
        batch = w.batch(seed, "cuda")
        expected = bench.meta_gradient(model, reference, batch)
        assert bench.max_rel_diff(bench.meta_gradient(model, step, batch), expected) < 1e-10, seed
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    step(batch)
    assert all(torch.allclose(p.grad, 1 + g) for p, g in zip(model.parameters(), expected))


@pytest.mark.parametrize("micro_batch_size", [1, 4])
def test_micro_batches_give_the_whole_batch_meta_gradient(micro_batch_size):
    w = small_conv(meta_batch_size=6, inner_steps=3)  # 6 tasks in micro-batches of 4: uneven 4 + 2
    torch.manual_seed(0)
    model = w.make_model()
    batch = w.batch()
    whole = bench.meta_gradient(model, bench.fastmaml_step()(model, w, False), batch)
    micro = bench.meta_gradient(model, bench.fastmaml_step(micro_batch_size=micro_batch_size)(model, w, False), batch)
    assert bench.max_rel_diff(micro, whole) < 1e-12


def test_memory_sweep_checks_the_gradient(monkeypatch):
    monkeypatch.setitem(bench.WORKLOADS, "small-conv", small_conv(meta_batch_size=4))
    variants = {"whole": ("vmap", None, False), "micro 3": ("vmap", 3, False), "loop": ("loop", None, False),
                "checkpointed": ("loop", None, True)}
    rows = bench.memory_sweep(BenchConfig(memory=False, threads=1), workload="small-conv",
                              steps=(1, 2), variants=variants)
    assert [r["inner_steps"] for r in rows] == [1, 2]
    assert all(r["grad_diff"][k] < 1e-4 for r in rows for k in ("micro 3", "checkpointed"))
    assert "| 2 |" in bench.format_sweep(rows, list(variants))


def test_memory_sweep_detects_a_changed_gradient(monkeypatch):
    monkeypatch.setitem(bench.WORKLOADS, "small-conv", small_conv(meta_batch_size=4))
    real_step = bench.fastmaml_step
    # A "variant" that silently drops the second-order term must fail the sweep's check.
    monkeypatch.setattr(bench, "fastmaml_step", lambda strategy, chunk, micro_batch_size, grad_checkpointing: (
        lambda model, w, first_order: real_step(strategy)(model, w, grad_checkpointing)))
    with pytest.raises(AssertionError, match="changed the meta-gradient"):
        bench.memory_sweep(BenchConfig(memory=False, threads=1), workload="small-conv", steps=(2,),
                           variants={"whole": ("loop", None, False), "broken": ("loop", None, True)})


def test_every_memory_measurement_comes_after_an_untimed_meta_iteration(monkeypatch):
    """Compiled rows were warmed up before their peak was taken and every other row was not, so the
    others' peaks held one-time costs (Adam's state, first allocations): 47 against 27 MiB warm on
    Omniglot 5-way 1-shot, which made compiling look 68% lighter where it is about 44%."""
    specs = []
    monkeypatch.setattr(bench, "measure_child", lambda spec, cfg: specs.append(spec) or {"peak_bytes": 1})
    monkeypatch.setattr(bench, "bench_group", lambda w, first, impls, cfg: [
        bench.Row("sinusoid", "first", impl.name, 1.0) for impl in impls])
    bench.run_bench(BenchConfig(**{**FAST, "memory": True}, implementations=["fastmaml", "fastmaml loop"]))
    assert [s["warmup"] for s in specs] == [1, 1]
    monkeypatch.setitem(bench.WORKLOADS, "small-conv", small_conv(meta_batch_size=4))
    bench.memory_sweep(BenchConfig(threads=1), workload="small-conv", steps=(1,),
                       variants={"whole": ("loop", None, False)})
    assert specs[-1]["warmup"] == 1 and specs[-1]["variant"] == ("loop", None, False)


def test_peak_memory_in_a_subprocess():
    spec = bench.memory_spec(BenchConfig(threads=1), "sinusoid", "fastmaml", True)
    peak = bench.measure_peak(spec, BenchConfig())
    assert peak is not None and 0 < peak < 512 * bench.MiB


def test_unknown_names_are_errors():
    with pytest.raises(ConfigError, match="unknown workload"):
        bench.run_bench(BenchConfig(**{**FAST, "workloads": ["imagenet"]}))
    with pytest.raises(ConfigError, match="unknown implementation"):
        bench.run_bench(BenchConfig(**FAST, implementations=["jax"]))


@pytest.mark.parametrize("args, message", [
    (["--impls", "jax"], "unknown implementation 'jax'"),
    (["--repeats", "0"], "--repeats must be >= 1 and --warmup >= 0, got 0 and"),
    (["--out", "/nonexistent-folder/report.md"], "cannot write --out /nonexistent-folder/report.md"),
    (["--out", "/proc/report.md"], "cannot write --out /proc/report.md"),  # even as root: before, after the run
    (["--threads", "100000"], "--threads must be at most 1024, got 100000"),  # before: a segfault (exit 139)
    (["--lever-threads", "5000"], "--lever-threads must be at most 1024"),
])
def test_bad_options_are_one_line_before_anything_runs(args, message, capsys, tmp_path):
    # before: ValueError tracebacks, and an --out in a missing folder failed after the whole benchmark
    assert main(["bench", "--workloads", "sinusoid", "--quick", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fastmaml: error: ") and message in err and len(err.splitlines()) == 1, err
    assert bench.main(["--workloads", "sinusoid", "--quick", *args]) == 2
    assert capsys.readouterr().err.startswith("python -m fastmaml.bench: error: ")


def test_a_failed_bench_leaves_no_empty_report(tmp_path, capsys):
    # before: checking that --out could be written created it, so a run that then failed left an empty file
    out = tmp_path / "report.md"
    assert main(["bench", "--workloads", "sinusoid", "--quick", "--impls", "jax", "--out", str(out)]) == 2
    assert "unknown implementation 'jax'" in capsys.readouterr().err and not out.exists()
    out.write_text("an earlier report\n")  # a file that was there is left as it was
    assert main(["bench", "--workloads", "sinusoid", "--quick", "--impls", "jax", "--out", str(out)]) == 2
    assert out.read_text() == "an earlier report\n"


@pytest.mark.parametrize("args, message", [
    (["--threads", "-1"], "--threads must be >= 0 (torch threads; 0 or leave it out for torch's default), got -1"),
    (["--lever-threads", "-2"], "--lever-threads must be >= 1 (torch threads of the extra rows), got -2"),
    (["--chunk-size", "-1"], "--chunk-size must be >= 1 (tasks per vmap chunk), got -1"),
    (["--workers", "-1"], "--workers must be >= 1 (worker threads), got -1"),
    (["--micro-batch-size", "-1"], "--micro-batch-size must be >= 1 (tasks per micro-batch), got -1"),
    (["--grad-check-tasks", "0"], "--grad-check-tasks must be >= 1 (tasks in the meta-gradient check), got 0"),
    (["--grad-check-tasks", "-1"], "--grad-check-tasks must be >= 1"),
    (["--grad-tolerance", "nan"], "--grad-tolerance must be >= 0 (largest accepted max-relative difference), got nan"),
    (["--grad-tolerance=-1e-6"], "--grad-tolerance must be >= 0"),
    (["--time-limit", "nan"], "--time-limit must be >= 0 (seconds per workload and order; 0 for no limit), got nan"),
    (["--time-limit", "-5"], "--time-limit must be >= 0 (seconds per workload and order; 0 for no limit), got -5.0"),
])
def test_out_of_range_options_are_one_line_before_any_timing(args, message, capsys, monkeypatch):
    # before: tracebacks (set_num_threads, MAML's ValueError, range step 0, modulo by zero), a "wrong
    # meta-gradient" row blaming fastmaml for --micro-batch-size -1, or a silently accepted value
    def no_timing(*args, **kwargs):
        raise AssertionError("the benchmark ran")

    monkeypatch.setattr(bench, "run_bench", no_timing)
    monkeypatch.setattr(bench, "measure_child", no_timing)
    assert main(["bench", "--workloads", "sinusoid", "--orders", "first", "--repeats", "1", "--quick", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fastmaml: error: ") and message in err and len(err.splitlines()) == 1, err
    parse = bench.add_arguments(argparse.ArgumentParser()).parse_args
    with pytest.raises(ConfigError, match="must be >="):
        bench.config_from_args(parse(args), ())
    bench.config_from_args(parse([args[0].split("=")[0], "1"]), ())  # the smallest value all of them accept
    bench.config_from_args(parse(["--threads", "0", "--time-limit", "0", "--grad-tolerance", "0"]), ())


def test_eval_speed_script_times_every_strategy_and_chunk(tmp_path, monkeypatch):
    """benchmarks/eval_speed.py (gpu_check.sh step 3b) runs end to end: a row per vmap chunk size, one looped."""
    script = Path(__file__).parents[2] / "benchmarks" / "eval_speed.py"
    spec = importlib.util.spec_from_file_location("eval_speed", script)
    eval_speed = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(eval_speed)
    out = tmp_path / "eval_speed.md"
    monkeypatch.setattr("sys.argv", ["eval_speed.py", "--workloads", "omniglot-5w1s", "--tasks", "4", "--steps", "1",
                                     "--chunks", "2", "4", "--out", str(out)])
    eval_speed.main()
    rows = [line for line in out.read_text().splitlines() if line.startswith("| omniglot")]
    assert [row.split(" | ")[1:3] for row in rows] == [["vmap", "2"], ["vmap", "4"], ["loop", "2"]]
    assert all(float(row.split(" | ")[4]) > 0 for row in rows)


def test_a_compiled_row_whose_compile_check_refused_it_says_it_ran_eagerly(monkeypatch):
    """MAML falls back to eager when its first compiled meta-gradient fails the check (a warning in
    the log); the row was still labelled "fastmaml compiled", its rate and memory an eager step's."""
    real = bench.fastmaml_step

    def refused(*args, **kwargs):
        build = real("auto")

        def wrapped(model, w, first_order):
            step = build(model, w, first_order)
            step.refused_compile = lambda: True  # as MAML(compile=True) leaves it after a refusal
            return step

        return wrapped

    impl = Implementation("fastmaml compiled", refused())
    rows = bench.run_bench(BenchConfig(**{**FAST, "implementations": ["fastmaml"]}, extra=[impl]))
    assert [r.eager_fallback for r in rows] == [False, True]
    assert "| fastmaml compiled (ran eagerly: its compile check refused it) |" in bench.format_row(rows[1])
    assert bench.format_row(rows[0]).startswith("| sinusoid | first | fastmaml |")
