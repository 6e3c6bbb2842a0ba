"""The GPU levers issue #5 lists, measured on fastmaml's own meta-step (``MAML.meta_backward`` + Adam,
second order, exactly what the trainer runs), each against the plain vmap step in the same run:

- ``vmap``: the default on a GPU (``strategy="auto"``), PyTorch's default backend flags (cuDNN may
  use TF32 for convolutions, matmuls are full fp32, no cuDNN autotuning);
- ``vmap, no TF32``: cuDNN convolutions in full fp32 (``cudnn.allow_tf32 = False``);
- ``vmap, cudnn.benchmark``: cuDNN autotunes its convolution algorithms per shape;
- ``vmap, matmul conv``: every ``nn.Conv2d`` computed as k*k strided slices and one ``einsum``
  (:class:`MatmulConv2d`), so that under vmap a task's own weights make a batched matmul instead of
  a grouped convolution; ``+ TF32`` lets that matmul use TF32 tensor cores;
- ``... CUDA graph``: the whole iteration (meta-step and Adam, ``capturable=True``) captured once
  and replayed;
- ``loop``: one task at a time, for reference.

Before timing, every variant's float32 meta-gradient is compared with a float64 one of the same
batch (max |g - g64| / max |g64|): TF32 trades precision for speed, and this says how much. Rounds
are interleaved (one iteration of each variant in turn) and the median is reported, with what
60,000 iterations would take at that speed (issue #5's target: under 10 minutes).

    python benchmarks/gpu_levers_bench.py --out benchmarks/results/gpu_levers.md          # on a GPU
    python benchmarks/gpu_levers_bench.py --device cpu --repeats 2 --workloads omniglot-5w1s  # dry run
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import platform
import shlex
import statistics
import sys

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastmaml.algorithms.maml import MAML
from fastmaml.bench import WORKLOADS, BenchConfig, time_interleaved, to_float64
from fastmaml.engine.trainer import GRAPH_WARMUP, side_stream


class MatmulConv2d(nn.Conv2d):
    """A 2-d convolution as k*k strided slices of the input and one einsum with the weights.

    Same parameters and result as ``nn.Conv2d`` (groups 1, dilation 1). Under ``vmap`` with per-task
    weights, PyTorch turns ``conv2d`` into a grouped convolution; this turns it into a batched matmul.
    """

    def forward(self, x: Tensor) -> Tensor:
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        if ph or pw:
            x = F.pad(x, (pw, pw, ph, ph))
        ho, wo = (x.shape[-2] - kh) // sh + 1, (x.shape[-1] - kw) // sw + 1
        cols = torch.stack([x[:, :, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw]
                            for i in range(kh) for j in range(kw)], 2)  # (N, C, k*k, ho, wo)
        out = torch.einsum("ock,nckhw->nohw", self.weight.flatten(2), cols)
        return out if self.bias is None else out + self.bias[:, None, None]


def matmul_convs(model: nn.Module) -> nn.Module:
    """``model`` with every plain ``nn.Conv2d`` replaced by an equal :class:`MatmulConv2d`."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is nn.Conv2d and child.groups == 1 and child.dilation == (1, 1):
                new = MatmulConv2d(child.in_channels, child.out_channels, child.kernel_size, child.stride,
                                   child.padding, bias=child.bias is not None).to(child.weight)
                new.load_state_dict(child.state_dict())
                setattr(module, name, new)
    return model


@contextlib.contextmanager
def backend_flags(cudnn_tf32: bool = True, matmul_tf32: bool = False, benchmark: bool = False):
    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.benchmark)
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = cudnn_tf32, matmul_tf32
    torch.backends.cudnn.benchmark = benchmark
    try:
        yield
    finally:
        (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32,
         torch.backends.cudnn.benchmark) = saved


VARIANTS = {  # name: (strategy, matmul conv, flags, CUDA graph)
    "vmap (default)": ("vmap", False, {}, False),
    "vmap, no TF32": ("vmap", False, {"cudnn_tf32": False}, False),
    "vmap, cudnn.benchmark": ("vmap", False, {"benchmark": True}, False),
    "vmap, CUDA graph": ("vmap", False, {}, True),
    "vmap, no TF32, CUDA graph": ("vmap", False, {"cudnn_tf32": False}, True),
    "vmap, no TF32, cudnn.benchmark, CUDA graph": ("vmap", False, {"cudnn_tf32": False, "benchmark": True}, True),
    "vmap, matmul conv": ("vmap", True, {}, False),
    "vmap, matmul conv + TF32": ("vmap", True, {"matmul_tf32": True}, False),
    "vmap, matmul conv + TF32, CUDA graph": ("vmap", True, {"matmul_tf32": True}, True),
    "loop": ("loop", False, {}, False),
}


def variant_maml(name: str, base: nn.Module, workload) -> tuple[nn.Module, MAML]:
    """A copy of ``base`` (its convolutions as matmuls where the variant says so) and its MAML."""
    strategy, matmul, _, _ = VARIANTS[name]
    model = copy.deepcopy(base)
    if matmul:
        matmul_convs(model)
    return model, MAML(model, workload.loss_fn, inner_lr=workload.inner_lr, inner_steps=workload.inner_steps,
                       strategy=strategy)


def build(name: str, base: nn.Module, workload, batch, device: torch.device):
    """One iteration of variant ``name`` as a callable (a graph replay for the CUDA-graph variants)."""
    _, _, flags, graph = VARIANTS[name]
    model, maml = variant_maml(name, base, workload)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, capturable=graph)

    def iteration() -> None:
        with backend_flags(**flags):
            opt.zero_grad(set_to_none=True)
            maml.meta_backward(batch)
            opt.step()

    if not graph:
        return iteration
    if device.type != "cuda":
        raise RuntimeError("CUDA graphs need a CUDA device")
    with side_stream(device):
        for _ in range(GRAPH_WARMUP):
            iteration()
    cuda_graph = torch.cuda.CUDAGraph()
    opt.zero_grad(set_to_none=True)  # the captured backward allocates .grad in the graph's pool
    with backend_flags(**flags), torch.cuda.graph(cuda_graph):
        maml.meta_backward(batch)
        opt.step()

    def replay(graph=cuda_graph, keep=(model, maml, opt)) -> None:  # keep: the graph works in their memory
        graph.replay()

    return replay


def meta_gradient(name: str, base: nn.Module, workload, batch) -> list[Tensor]:
    model, maml = variant_maml(name, base, workload)
    with backend_flags(**VARIANTS[name][2]):
        maml.meta_backward(batch)
    return [p.grad.detach().double() for p in model.parameters()]


def rel_diff(grads: list[Tensor], reference: list[Tensor]) -> float:
    diff = max((g - r).abs().max().item() for g, r in zip(grads, reference))
    return diff / max(r.abs().max().item() for r in reference)


def run_workload(workload_name: str, variants: list[str], args, device: torch.device) -> list[str]:
    workload = WORKLOADS[workload_name]
    torch.manual_seed(0)
    base = workload.make_model().to(device)
    batch = workload.batch(0, device)
    reference = meta_gradient("vmap (default)", copy.deepcopy(base).double(), workload, to_float64(batch))
    runners, notes = {}, {}
    for name in variants:
        try:
            notes[name] = f"{rel_diff(meta_gradient(name, base, workload, batch), reference):.1e}"
            runners[name] = build(name, base, workload, batch, device)
            for _ in range(args.warmup):
                runners[name]()
        except Exception as error:  # noqa: BLE001 - a lever that does not run here is reported, not fatal
            notes[name] = f"failed: {type(error).__name__}: {str(error).splitlines()[0][:120] if str(error) else ''}"
            runners.pop(name, None)
    # warm-ups done above, where a failing variant is caught
    times = time_interleaved(runners, BenchConfig(repeats=args.repeats, warmup=0, time_limit=args.time_limit), device)
    base_ms = statistics.median(times["vmap (default)"]) * 1e3 if times.get("vmap (default)") else None
    lines = [f"\n## {workload.description}\n",
             "| variant | ms / iteration | vs vmap (default) | 60,000 iterations | rounds | float32 meta-grad vs float64 |",
             "| --- | --- | --- | --- | --- | --- |"]
    for name in variants:
        if name not in times:
            lines.append(f"| {name} | - | - | - | 0 | {notes[name]} |")
            continue
        ms = statistics.median(times[name]) * 1e3
        speed = f"{base_ms / ms:.2f}x" if base_ms else "-"
        lines.append(f"| {name} | {ms:.1f} | {speed} | {60000 * ms / 6e4:.1f} min | {len(times[name])} | {notes[name]} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--workloads", nargs="+", default=["omniglot-5w1s", "omniglot-20w1s", "miniimagenet-5w1s"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS), metavar="V")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--time-limit", type=float, default=20.0, help="seconds of timed rounds per workload")
    parser.add_argument("--out", help="also write the report (markdown) here")
    args = parser.parse_args()
    from fastmaml.engine.distributed import exit_unless_usable

    exit_unless_usable(args.device, __file__)  # one line on a machine without the GPU
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    command = " ".join(shlex.quote(a) for a in ["python", "benchmarks/gpu_levers_bench.py", *sys.argv[1:]])
    lines = ["# GPU levers on fastmaml's meta-step (second order)", "",
             (f"Device: {name}; torch {torch.__version__}. Command: `{command}`. Median of interleaved rounds; "
              "60,000 iterations = that median x 60,000 (meta-step + Adam only, no task sampling).")]
    print("\n".join(lines), flush=True)
    for workload_name in args.workloads:
        block = run_workload(workload_name, args.variants, args, device)
        print("\n".join(block), flush=True)
        lines += block
        if args.out:
            with open(args.out, "w") as f:
                f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
