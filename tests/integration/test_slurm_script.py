"""scripts/slurm/train.sbatch end to end, with stand-ins for SLURM's srun and scontrol: two "nodes"
(two torchrun launches on 127.0.0.1, as srun starts one per node), then a resubmission that resumes."""

import os
import socket
import subprocess
import sys
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


def sbatch(tmp_path, *args, resume_args=""):
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
