"""torch.distributed (gloo, 2 CPU processes via torchrun) and micro-batching give the same updates."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fastmaml.cli import main
from fastmaml.engine import checkpoint, distributed

COMMON = ["--set", "meta_batch_size=8", "--set", "log_every=10", "--set", "checkpoint_every=10", "--no-progress"]


def children() -> dict[int, list[int]]:
    """Every process's children, by parent pid (Linux /proc)."""
    below: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        below.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    return below


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``: torchrun's workers run in sessions of their own."""
    below, found, todo = children(), [], [pid]
    while todo:
        under = below.get(todo.pop(), [])
        found += under
        todo += under
    return found


def torchrun(*args, nproc=2, timeout=300):
    """``torchrun --standalone --nproc_per_node NPROC -m fastmaml ARGS``: stdout; fails the test on a
    non-zero exit or after ``timeout`` seconds."""
    return run_launches([["--standalone", "--nproc_per_node", str(nproc)]], args, timeout)[0]


def torchrun_nodes(*args, nodes=2, timeout=300, cwds=None, check=True, envs=None):
    """The same command started as ``nodes`` torchrun launches of one process each, as on separate
    machines (``--nnodes N --node_rank I --master_addr --master_port``), here all on 127.0.0.1: the
    multi-node path (static rendezvous, ranks from node ranks, one local process per node), node I
    working in ``cwds[I]`` (a relative run folder then names a different folder on each node, as on
    machines without a shared filesystem), with ``envs[I]`` added to its environment. stdout of each
    node, or (returncode, stdout, stderr) of each without ``check``."""
    with socket.socket() as probe:  # a free port for the rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    node = ["--nnodes", str(nodes), "--master_addr", "127.0.0.1", "--master_port", str(port), "--nproc_per_node", "1"]
    return run_launches([[*node, "--node_rank", str(i)] for i in range(nodes)], args, timeout, cwds, check, envs)


def run_launches(launches, args, timeout, cwds=None, check=True, envs=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if cwds:  # fastmaml imported from this checkout wherever a node works
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).parents[2] / "src"),
                                                          env.get("PYTHONPATH")]))
    procs = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", *launch, "-m", "fastmaml", *args],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**env, **(envs[i] if envs else {})}, cwd=cwds[i] if cwds else None)
             for i, launch in enumerate(launches)]
    deadline, outputs, hung = time.monotonic() + timeout, [], False
    for proc in procs:
        try:
            outputs.append(proc.communicate(timeout=max(1.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            # kill the workers too: a rank that hangs holds the output pipes open, and subprocess.run's
            # timeout then waits for it for ever (seen with torch 2.4.1: rank 0 in destroy_process_group)
            for pid in [*descendants(proc.pid), proc.pid]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            outputs.append(proc.communicate())
            hung = True
    for proc, (stdout, stderr) in zip(procs, outputs):
        report = f"stdout:\n{stdout[-2000:]}\nstderr:\n{stderr[-4000:]}"
        if hung:
            pytest.fail(f"torchrun did not finish in {timeout} s\n{report}")
        assert proc.returncode == 0 or not check, report
    if not check:
        return [(proc.returncode, stdout, stderr) for proc, (stdout, stderr) in zip(procs, outputs)]
    return [stdout for stdout, _ in outputs]


def final(run):
    tensors, meta = checkpoint.load(run / "checkpoint.safetensors")
    return {k: v for k, v in tensors.items() if k.startswith(("maml/", "baseline/"))}, meta


def assert_close(a, b, **tol):
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], **tol, msg=key)


def test_two_gloo_processes_match_one_process_and_resume(tmp_path):
    single, ddp, resumed = tmp_path / "single", tmp_path / "ddp", tmp_path / "resumed"
    assert main(["train", "sinusoid", "--iterations", "30", "--out", str(single), *COMMON]) == 0
    torchrun("train", "sinusoid", "--iterations", "30", "--out", str(ddp), *COMMON)
    (a, meta_a), (b, meta_b) = final(single), final(ddp)
    assert meta_b["step"] == 30
    assert_close(a, b, rtol=1e-4, atol=1e-5)  # same tasks, same update, up to summation order
    assert len(meta_b["metrics"]) == 3
    for x, y in zip(meta_a["metrics"], meta_b["metrics"]):
        assert abs(x["meta_loss"] - y["meta_loss"]) < 1e-4 * abs(x["meta_loss"])  # rank 0 logs the global loss
    # a restart of both processes continues the same run
    torchrun("train", "sinusoid", "--iterations", "20", "--out", str(resumed), *COMMON)
    torchrun("train", "--resume", str(resumed), "--iterations", "30", "--no-progress")
    c, meta_c = final(resumed)
    assert meta_c["step"] == 30
    assert_close(b, c, rtol=0, atol=0)


def test_two_nodes_match_one_process_and_resume(tmp_path):
    """Two torchrun launches as two nodes of one process each (on 127.0.0.1) that share no folder:
    the run folder is a relative path and the second node works elsewhere. The same update as one
    process, one set of logs on rank 0's node, nothing written on the other, and a resume of both
    nodes (rank 0 alone reads the run) that continues the run exactly."""
    single, nodes, elsewhere = tmp_path / "single", tmp_path / "nodes", tmp_path / "node1"
    elsewhere.mkdir()
    assert main(["train", "sinusoid", "--iterations", "30", "--out", str(single), *COMMON]) == 0
    cwds = [tmp_path, elsewhere]
    first, second = torchrun_nodes("train", "sinusoid", "--iterations", "20", "--out", "nodes", *COMMON, cwds=cwds)
    assert "run folder" in first and second == ""  # only rank 0 reports the run it wrote
    assert final(nodes)[1]["step"] == 20
    torchrun_nodes("train", "--resume", "nodes", "--iterations", "30", "--no-progress", cwds=cwds)
    assert list(elsewhere.iterdir()) == []
    (a, meta_a), (b, meta_b) = final(single), final(nodes)
    assert meta_b["step"] == 30
    assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert [row["step"] for row in meta_b["metrics"]] == [10, 20, 30]
    for x, y in zip(meta_a["metrics"], meta_b["metrics"], strict=True):  # the global loss, before and after the resume
        assert abs(x["meta_loss"] - y["meta_loss"]) < 1e-4 * abs(x["meta_loss"])
    assert len((nodes / "metrics.jsonl").read_text().splitlines()) == 3



def rank_of(pid: int) -> int | None:
    """The RANK in a process's environment (torchrun's workers), or None."""
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    ranks = [int(v.split(b"=", 1)[1]) for v in env if v.startswith(b"RANK=")]
    return ranks[0] if ranks else None


def workers_of(agent: int) -> dict[int, int]:
    """torchrun's worker processes by rank: the agent's children. Not every process below it with a
    RANK: a worker's own children inherit it (torch.compile's compile workers under torch 2.4.1, which
    the test then signalled instead of the worker)."""
    return {rank: pid for pid in children().get(agent, []) if (rank := rank_of(pid)) is not None}


@contextlib.contextmanager
def logging_job(run, *args):
    """A 2-process torchrun job, sinusoid for 100,000 iterations (no torch.compile) into ``run`` with
    ``args``, handed over once it has logged its first row; whatever is left of it is killed after."""
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             "-m", "fastmaml", "train", "sinusoid", "--iterations", "100000", "--out", str(run),
                             "--set", "compile=off", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline, metrics = time.monotonic() + 120, run / "metrics.jsonl"
        while not (metrics.is_file() and metrics.read_text()):
            assert time.monotonic() < deadline and proc.poll() is None, "the run did not start logging"
            time.sleep(0.1)
        yield proc
    finally:
        if proc.poll() is None:
            for pid in [*descendants(proc.pid), proc.pid]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            proc.communicate()


@pytest.mark.parametrize("sig, to", [(signal.SIGTERM, "rank 1"), (signal.SIGUSR1, "every process")])
def test_a_stop_signal_stops_every_rank_at_one_log_iteration_with_a_checkpoint(tmp_path, sig, to):
    """SIGTERM reaching rank 1 only: rank 0 learns of it at the next log iteration (an all-reduce),
    both stop there with one checkpoint, rank 0 alone says where; both restarted continue from it.
    SIGUSR1 sent to torchrun and both workers, as SLURM's ``--signal=USR1@120`` does: it ends
    torchrun's agent (the signal's default action there) but the workers stop the same way."""
    run = tmp_path / "run"
    with logging_job(run, "--set", "meta_batch_size=8", "--set", "log_every=10", "--set", "checkpoint_every=100000",
                     "--no-progress") as proc:
        workers = workers_of(proc.pid)
        assert workers.keys() == {0, 1}
        for pid in [workers[1]] if to == "rank 1" else [proc.pid, *workers.values()]:
            os.kill(pid, sig)
        # with SIGUSR1 torchrun ends at once; its workers, in sessions of their own, stop as with SIGTERM,
        # writing to the output they inherited from it, which stays open until they are done
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == -sig if to == "every process" else proc.returncode == 1  # torchrun: a worker failed
    step = final(run)[1]["step"]
    assert 0 < step < 100000 and step % 10 == 0
    assert stderr.count("fastmaml: stopped") == 1, stderr  # rank 0's line only
    assert f"fastmaml: stopped by {sig.name} at iteration {step}, with a checkpoint there in {run}" in stderr
    torchrun("train", "--resume", str(run), "--iterations", str(step + 10), "--no-progress")
    assert final(run)[1]["step"] == step + 10

RL = ["--env", "nav2d", "--set", "meta_batch_size=5", "--set", "trajectories=4", "--set", "horizon=20",
      "--set", "log_every=1", "--set", "checkpoint_every=2", "--no-progress"]


def test_meta_rl_splits_its_tasks_over_two_processes_and_resumes_exactly(tmp_path):
    """MAML-TRPO and both trained baselines with 5 tasks over 2 gloo processes. Before the first
    update every task's trajectories are those of one process (the update itself equals the
    single-process one in float64, tests/unit/rl/test_rl_distributed.py; in float32 the conjugate
    gradient amplifies the summation order, so later iterations drift apart as two seeds would).
    Rank 0 alone reports and logs; both processes restarted continue bit for bit, and a run
    started on two processes continues on one."""
    single, ddp, resumed = tmp_path / "single", tmp_path / "ddp", tmp_path / "resumed"
    assert main(["train", "rl", *RL, "--iterations", "1", "--out", str(single)]) == 0
    out = torchrun("train", "rl", *RL, "--iterations", "4", "--out", str(ddp))
    assert out.count("trained rl for 4 iterations") == 1  # one summary, from rank 0
    one, two = final(single)[1]["metrics"][0], final(ddp)[1]["metrics"][0]
    for key in ("return_pre", "pretrained_return", "oracle_return", "return_post"):
        assert two[key] == pytest.approx(one[key], rel=1e-5), key  # the same trajectories, gathered from both
    assert len((ddp / "metrics.jsonl").read_text().splitlines()) == 4
    torchrun("train", "rl", *RL, "--iterations", "2", "--out", str(resumed))
    torchrun("train", "--resume", str(resumed), "--iterations", "4", "--no-progress")
    (a, meta_a), (b, meta_b) = (checkpoint.load(run / "checkpoint.safetensors") for run in (ddp, resumed))
    assert meta_b["step"] == 4
    assert len(a) > 10 and any(k.startswith("oracle/") for k in a)
    assert_close(a, b, rtol=0, atol=0)  # every learner's parameters and generator
    drop = lambda rows: [{k: v for k, v in row.items() if k != "elapsed_s"} for row in rows]  # noqa: E731
    assert drop(meta_a["metrics"]) == drop(meta_b["metrics"])
    assert main(["train", "--resume", str(resumed), "--iterations", "5", "--no-progress"]) == 0
    assert final(resumed)[1]["step"] == 5


def test_a_resume_rank_0_cannot_read_stops_every_node_with_its_error(tmp_path):
    """Rank 0 alone reads the run to resume; when it cannot, every node stops with rank 0's one-line
    error instead of waiting for a config or checkpoint that will not come: a folder that is not a
    run (caught before the process group forms) and a run without a checkpoint (caught after). The
    second node's worker starts 5 s late: rank 0's error must still reach it after rank 0 has failed
    (it hung until killed on a loaded CI machine when rank 0's agent closed the store first)."""
    broken = tmp_path / "broken"
    assert main(["train", "sinusoid", "--iterations", "10", "--out", str(broken), *COMMON]) == 0
    for path in broken.glob("checkpoint*"):
        path.unlink()
    late = tmp_path / "late"
    late.mkdir()
    (late / "sitecustomize.py").write_text(  # torchrun's workers have LOCAL_RANK, its agent has not
        "import os, time\nif 'LOCAL_RANK' in os.environ:\n    time.sleep(5)\n")
    path = os.pathsep.join(filter(None, [str(late), str(Path(__file__).parents[2] / "src"),
                                         os.environ.get("PYTHONPATH")]))
    for run, message in ((tmp_path / "missing", "is not a fastmaml run folder"),
                         (broken, "cannot be resumed or started again")):
        nodes = torchrun_nodes("train", "--resume", str(run), "--no-progress", check=False, timeout=120,
                               envs=[{}, {"PYTHONPATH": path}])
        for returncode, _, stderr in nodes:
            assert returncode != 0 and message in stderr, stderr[-3000:]



@pytest.mark.parametrize("command", [["eval", "RUN"], ["plot", "RUN"], ["presets"], ["study", "linear"]])
def test_commands_other_than_train_refuse_torchrun(tmp_path, monkeypatch, capsys, command):
    """Only train splits its work over processes; under torchrun every process of another command
    would do the whole job and write the same files, so each says so in one line (exit 2)."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main([str(tmp_path) if word == "RUN" else word for word in command]) == 2
    err = capsys.readouterr().err.strip()
    assert f"`fastmaml {command[0]}` runs as one process" in err and len(err.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("preset", [["sinusoid"], ["rl", "--env", "nav2d"]])
@pytest.mark.parametrize("device, processes, gpus, expected", [
    ("cuda", 2, 1, "start at most 1 (--nproc_per_node 1)"),
    ("cuda", 4, 2, "start at most 2 (--nproc_per_node 2)"),
    ("cuda:1", 2, 2, "use --device cuda (or --set device=cuda)"),
])
def test_torchrun_on_cuda_needs_a_gpu_per_process(tmp_path, monkeypatch, capsys, preset, device, processes, gpus,
                                                  expected):
    """NCCL refuses two processes on one GPU; each process says so in one line before any group forms
    (torchrun's variables and the GPU count faked: this machine may have no GPU)."""
    for name, value in {"WORLD_SIZE": processes, "LOCAL_WORLD_SIZE": processes, "RANK": 0, "LOCAL_RANK": 0}.items():
        monkeypatch.setenv(name, str(value))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda *a, **k: pytest.fail("group formed"))
    run = tmp_path / "run"
    assert main(["train", *preset, "--device", device, "--iterations", "2", "--out", str(run), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and len(err.splitlines()) == 1, err
    assert not run.exists()


def test_micro_batches_give_the_same_update(tmp_path):
    whole, micro = tmp_path / "whole", tmp_path / "micro"
    assert main(["train", "sinusoid", "--iterations", "20", "--out", str(whole), *COMMON]) == 0
    assert main(["train", "sinusoid", "--iterations", "20", "--out", str(micro), *COMMON,
                 "--set", "micro_batch_size=3"]) == 0
    assert_close(final(whole)[0], final(micro)[0], rtol=1e-5, atol=1e-6)


def test_the_command_ends_torchrun_processes_without_finalizing_and_others_normally(monkeypatch):
    """``fastmaml`` / ``python -m fastmaml`` exit with main's code; under torchrun (WORLD_SIZE > 1)
    through os._exit after flushing, so gloo's threads cannot abort a finished run during the
    interpreter's finalization (SIGABRT after both ranks had printed their summary, once in CI)."""
    import fastmaml.cli as cli

    class Exited(Exception):
        pass

    def fake_exit(code):
        raise Exited(code)

    monkeypatch.setattr(cli, "main", lambda: 3)
    monkeypatch.setattr(cli.os, "_exit", fake_exit)
    monkeypatch.setattr(distributed, "_EXIT_CLOSES_GROUP", False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(SystemExit) as normal:
        cli.run()
    assert normal.value.code == 3
    assert not distributed._EXIT_CLOSES_GROUP  # the API and the plain command destroy their group
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(Exited) as torchrun_exit:
        cli.run()
    assert torchrun_exit.value.args == (3,)
    assert distributed._EXIT_CLOSES_GROUP  # under torchrun the exit closes it, after the last barrier


def test_close_waits_at_a_barrier_and_destroys_the_group_unless_the_exit_will(monkeypatch):
    calls = []
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(distributed.dist, "barrier", lambda: calls.append("barrier"))
    monkeypatch.setattr(distributed.dist, "destroy_process_group", lambda: calls.append("destroy"))
    monkeypatch.setattr(distributed, "_EXIT_CLOSES_GROUP", False)
    cluster = distributed.Cluster(rank=0, world_size=2)
    cluster.close()
    cluster.close(clean=False)  # after an error: no barrier, the peers may be gone
    assert calls == ["barrier", "destroy", "destroy"]
    calls.clear()
    monkeypatch.setattr(distributed, "_EXIT_CLOSES_GROUP", True)
    cluster.close()
    assert calls == ["barrier"]


def test_a_new_run_rank_0_cannot_make_stops_every_rank_with_its_error(tmp_path):
    """Rank 0 alone makes the run folder; when it cannot (here: not empty), every rank prints its
    one-line error (rank 1's tagged with its rank) instead of rank 1 dying with gloo's "Connection
    closed by peer" traceback."""
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    [(returncode, _, stderr)] = run_launches([["--standalone", "--nproc_per_node", "2"]],
                                             ["train", "sinusoid", "--out", str(taken), *COMMON], 120, check=False)
    assert returncode != 0
    assert stderr.count(f"fastmaml: error: --out {taken} is not empty") == 1, stderr[-3000:]
    assert stderr.count(f"fastmaml: error (rank 1 of 2): --out {taken} is not empty") == 1, stderr[-3000:]
    assert "[rank1]: Traceback" not in stderr and "Connection closed" not in stderr, stderr[-3000:]
    assert [p.name for p in taken.iterdir()] == ["notes.txt"]


def test_a_rank_that_loses_another_says_so_in_one_line(tmp_path):
    """Rank 0 killed (SIGKILL) in the middle of a run: rank 1's collective fails; it prints one line
    saying another process stopped and how to resume, not gloo's traceback."""
    with logging_job(tmp_path / "run", *COMMON) as proc:
        os.kill(workers_of(proc.pid)[0], signal.SIGKILL)
        _, stderr = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert "[rank1]: Traceback" not in stderr, stderr[-3000:]
    # every iteration all-reduces, so rank 1 loses rank 0 at once (a SIGTERM from torchrun only asks it to
    # stop at its next log iteration, which all-reduces too)
    lines = [line for line in stderr.splitlines() if line.startswith("fastmaml: ")]
    assert len(lines) == 1, stderr[-3000:]
    assert lines[0].startswith("fastmaml: error: another process of this torchrun job stopped; rank 1 lost it (")
    assert lines[0].endswith("continues from its last checkpoint with fastmaml train --resume RUN_DIR")


def test_data_that_fails_on_one_node_stops_every_node_with_its_error(tmp_path):
    """Each node checks its own copy of the data set before the process group forms; a node whose
    copy held an unreadable image stopped with its error while the other waited in the rendezvous
    until killed (a review's reproduction). Now every node stops with that node's error."""
    import numpy as np
    from PIL import Image

    cwds = [tmp_path / "node0", tmp_path / "node1"]
    rng = np.random.default_rng(0)
    for cwd in cwds:
        for c in range(12):
            folder = cwd / "data" / f"c{c:02d}"
            folder.mkdir(parents=True)
            for i in range(3):
                Image.fromarray((rng.random((16, 16)) * 255).astype("uint8"), "L").save(folder / f"{i}.png")
    (cwds[1] / "data" / "c03" / "1.png").write_bytes(b"not a png")  # node 1's copy only
    nodes = torchrun_nodes("train", "images", "--root", "data", "--out", "run", "--ways", "2", "--shots", "1",
                           "--queries", "1", "--iterations", "4", "--set", "image_size=16", "--set", "filters=4",
                           "--set", "meta_batch_size=2", "--set", "channels=1", "--no-progress",
                           cwds=cwds, check=False, timeout=150,
                           envs=[{"FASTMAML_CACHE": str(cwd / "cache")} for cwd in cwds])
    for node, (returncode, _, stderr) in enumerate(nodes):
        said = [line for line in stderr.splitlines() if line.startswith("fastmaml: error")]
        assert returncode != 0 and len(said) == 1 and "c03/1.png" in said[0], stderr[-3000:]
        assert ("rank 1 of 2: " in said[0]) == (node == 0), said  # node 0 names the node whose data failed
