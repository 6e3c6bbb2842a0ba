"""scripts/slurm/train.sbatch end to end, with stand-ins for SLURM's srun and scontrol: two "nodes"
(two torchrun launches on 127.0.0.1, as srun starts one per node), then a resubmission that resumes."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch

from fastmaml.cli import main
from fastmaml.engine import checkpoint

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "slurm" / "train.sbatch"
COMMON = ["--set", "meta_batch_size=8", "--set", "log_every=10", "--set", "checkpoint_every=10"]

# srun as SLURM runs a step of one task per node: the command once per node, SLURM_NODEID set
FAKE_SRUN = """#!/bin/bash
while [[ $1 == --* ]]; do shift; done
pids=()
for ((i = 0; i < SLURM_NNODES; i++)); do SLURM_NODEID=$i "$@" & pids+=($!); done
rc=0
for pid in "${pids[@]}"; do wait "$pid" || rc=$?; done
exit $rc
"""
# the first host, then many: `scontrol ... | head -n 1` under pipefail failed with SIGPIPE (exit 141)
FAKE_SCONTROL = """#!/bin/bash
[ "$1 $2" = "show hostnames" ] && { echo 127.0.0.1; seq 2 20000 | sed 's/^/node/'; }
"""


def sbatch(tmp_path, *args, resume_args="", background=False):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, text in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "SLURM_JOB_NODELIST": "node[1-2]",
           "SLURM_NNODES": "2", "SLURM_JOB_ID": "4242", "MASTER_PORT": str(port), "PYTHON": sys.executable,
           "OMP_NUM_THREADS": "1", "FASTMAML_RESUME_ARGS": resume_args}
    env.pop("SLURM_GPUS_ON_NODE", None)
    env.pop("NPROC_PER_NODE", None)
    if background:
        return subprocess.Popen(["bash", str(SCRIPT), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=env, cwd=tmp_path)
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=300,
                          cwd=tmp_path, check=False)


def test_sbatch_script_trains_on_two_nodes_and_a_resubmission_resumes(tmp_path):
    run = tmp_path / "run"
    first = sbatch(tmp_path, str(run), "sinusoid", "--iterations", "20", *COMMON)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "fastmaml on 2 node(s) x 1 process(es), rendezvous 127.0.0.1:" in first.stdout
    assert checkpoint.load(run / "checkpoint.safetensors")[1]["step"] == 20
    again = sbatch(tmp_path, str(run), "sinusoid", "--iterations", "20", *COMMON, resume_args="--iterations 30")
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"train --resume {run} --iterations 30" in again.stdout
    tensors, meta = checkpoint.load(run / "checkpoint.safetensors")
    assert meta["step"] == 30 and [row["step"] for row in meta["metrics"]] == [10, 20, 30]
    # the same meta-training as one process, up to summation order
    single = tmp_path / "single"
    assert main(["train", "sinusoid", "--iterations", "30", "--out", str(single), *COMMON, "--no-progress"]) == 0
    want, _ = checkpoint.load(single / "checkpoint.safetensors")
    for key in [k for k in want if k.startswith("maml/")]:
        torch.testing.assert_close(tensors[key], want[key], rtol=1e-4, atol=1e-5, msg=key)


def test_sbatch_script_usage_errors(tmp_path):
    none = sbatch(tmp_path)
    assert none.returncode == 2 and "usage: sbatch" in none.stderr
    empty = sbatch(tmp_path, str(tmp_path / "new"))
    assert empty.returncode == 2 and "holds no checkpoint to resume: give the preset" in empty.stderr


def python_descendants(pid: int) -> dict[int, str]:
    """The Python processes below ``pid`` (torchrun's agents and their workers), with their command lines."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, todo = {}, [pid]
    while todo:
        parent = todo.pop()
        for child, ppid in parents.items():
            if ppid == parent:
                todo.append(child)
                try:
                    cmdline = (Path("/proc") / str(child) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                except OSError:
                    continue
                if "python" in cmdline.split(" ", 1)[0]:
                    found[child] = cmdline
    return found


def test_the_early_warning_signal_stops_the_run_with_a_checkpoint_and_leaves_torchrun_up(tmp_path):
    """SLURM's --signal=USR1@300 reaches every process of the step: torchrun, which does not handle
    USR1, died at once (rc 138), and on a cluster the step then ended before the workers reached their
    checkpoint (found by a review). The script now has torchrun ignore USR1: the launchers stay up,
    the workers stop at a log iteration with a checkpoint."""
    run = tmp_path / "run"
    proc = sbatch(tmp_path, str(run), "sinusoid", "--iterations", "100000", "--set", "meta_batch_size=8",
                  "--set", "log_every=10", "--set", "checkpoint_every=100000", "--set", "compile=off", background=True)
    try:
        deadline, metrics = time.monotonic() + 120, run / "metrics.jsonl"
        while not (metrics.is_file() and metrics.read_text()):
            assert time.monotonic() < deadline and proc.poll() is None, "the run did not start logging"
            time.sleep(0.1)
        processes = python_descendants(proc.pid)
        agents = [pid for pid, cmd in processes.items() if "torch.distributed.run" in cmd]
        assert len(agents) == 2 and len(processes) == 4, processes  # two nodes, one worker each
        for pid in processes:
            os.kill(pid, signal.SIGUSR1)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            for pid in python_descendants(proc.pid):
                os.kill(pid, signal.SIGKILL)
            proc.communicate()
    # the stand-in srun exits with a launcher's status: 138 where torchrun died of the signal, 1 where it
    # outlived its workers (a worker stopped: torchrun reports a failed worker)
    assert proc.returncode != 128 + signal.SIGUSR1, stderr[-3000:]
    step = checkpoint.load(run / "checkpoint.safetensors")[1]["step"]
    assert 0 < step < 100000 and step % 10 == 0
    assert f"fastmaml: stopped by SIGUSR1 at iteration {step}" in stderr, stderr[-3000:]
