"""Does torch.compile's meta-gradient match the eager one on the paper's presets, and how far apart
may two correct float32 meta-gradients be there?

For each preset (as ``fastmaml train`` builds it: its strategy, one worker, one torch thread), at
the freshly initialised network and one meta-training batch of the preset's size, prints the
relative difference |g - g_eager| / |g_eager| of the meta-gradient (all parameters) for:

- ``compiled f32``: the meta-loss through torch.compile, in float32 (what ``MAML(compile=True)``
  checks on its first step against ``COMPILE_TOLERANCE``);
- ``compiled f64``: the same in float64 against eager float64 (does the compiled graph compute the
  same function?);
- ``eager f32 vs f64``: how accurate eager float32 is, and ``compiled f32 vs f64`` the same for
  the compiled meta-loss;
- ``eager, weights x (1 + 1e-7 N(0,1))``: how much the eager float32 meta-gradient moves when the
  weights move by about one float32 rounding step (the meta-gradient's own sensitivity to rounding);
- ``first-step check``: what ``MAML(compile=True)``'s own check decides on its first meta-step
  (``kept`` or ``eager``; a float32 difference above ``COMPILE_TOLERANCE`` is checked again in float64,
  see ``COMPILE_F64_TOLERANCE`` in fastmaml/algorithms/maml.py), and its seconds (both compiles).

    python benchmarks/compile_check.py --root DATA/omniglot [--presets omniglot-5w1s-so ...]

Needs the Omniglot data (``--root``) and a C++ compiler (inductor's CPU backend).
"""

from __future__ import annotations

import argparse
import copy
import logging
import time

import torch

import fastmaml.algorithms.maml as maml_module
from fastmaml.engine.experiment import get_preset, make_maml

PRESETS = {  # name -> (preset, ways, shots, changes)
    "omniglot-5w1s-so": ("omniglot", 5, 1, {}),
    "omniglot-5w1s-so-lr0.1": ("omniglot", 5, 1, {"inner_lr": 0.1}),
    "omniglot-5w1s-fo-lr0.1": ("omniglot", 5, 1, {"inner_lr": 0.1, "first_order": True}),
    "omniglot-5w5s-so": ("omniglot", 5, 5, {}),
    "omniglot-20w1s-so": ("omniglot", 20, 1, {}),
    "noconv-5w1s-so": ("omniglot-noconv", 5, 1, {}),
}


def meta_gradient(maml, batch) -> torch.Tensor:
    maml.zero_grad()
    maml.meta_loss(batch).backward()
    return torch.cat([p.grad.reshape(-1).double() for p in maml.parameters() if p.grad is not None])


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def check(name: str, root: str, seed: int = 0) -> dict:
    preset_name, ways, shots, changes = PRESETS[name]
    preset = get_preset(preset_name)
    config = preset.make_config(ways=ways, shots=shots, root=root, threads=1, workers=1, **changes)
    torch.manual_seed(seed)
    experiment = preset.build(config)
    batch = experiment.sample(torch.Generator().manual_seed(seed), "train", config.meta_batch_size)
    eager = make_maml(experiment)
    eager.compile = False
    row = {"preset": name, "strategy": eager.resolved_strategy(batch[0].device)}

    def as_dtype(dtype):
        maml = copy.deepcopy(eager).to(dtype)
        return maml, type(batch)(*[t.to(dtype) if t.is_floating_point() else t for t in batch])

    g32 = meta_gradient(eager, batch)
    m64, b64 = as_dtype(torch.float64)
    g64 = meta_gradient(m64, b64)
    row["eager f32 vs f64"] = relative(g32, g64)
    nudged = copy.deepcopy(eager)
    with torch.no_grad():
        generator = torch.Generator().manual_seed(seed + 1)
        for p in nudged.parameters():
            p.mul_(1 + 1e-7 * torch.randn(p.shape, generator=generator))
    row["eager, weights nudged 1e-7"] = relative(meta_gradient(nudged, batch), g32)
    checked = copy.deepcopy(eager)
    checked.compile = True
    start = time.perf_counter()
    meta_gradient(checked, batch)
    row["first-step check"] = "kept" if checked.compile else "eager"
    row["check s"] = time.perf_counter() - start
    tolerance = maml_module.COMPILE_TOLERANCE
    maml_module.COMPILE_TOLERANCE = float("inf")  # keep the compiled function whatever its first check says
    try:
        for label, (maml, tasks, want) in {"compiled f32": (copy.deepcopy(eager), batch, g32),
                                          "compiled f64": (m64, b64, g64)}.items():
            maml.compile = True
            start = time.perf_counter()
            meta_gradient(maml, tasks)  # the first call compiles (and runs the check)
            row[f"{label} compile s"] = time.perf_counter() - start
            got = meta_gradient(maml, tasks)
            row[label] = relative(got, want)
            if label == "compiled f32":
                row["compiled f32 vs f64"] = relative(got, g64)
    finally:
        maml_module.COMPILE_TOLERANCE = tolerance
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", required=True, help="the Omniglot folder (as for fastmaml train omniglot)")
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    logging.basicConfig(format="%(levelname)s: %(message)s")
    logging.getLogger("fastmaml").setLevel(logging.INFO)  # the first-step check's figures
    columns = ["preset", "strategy", "compiled f32", "compiled f64", "eager f32 vs f64", "compiled f32 vs f64",
               "eager, weights nudged 1e-7", "compiled f32 compile s", "first-step check", "check s"]
    print(f"torch {torch.__version__}; COMPILE_TOLERANCE {maml_module.COMPILE_TOLERANCE:g}")
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for name in args.presets:
        row = check(name, args.root, args.seed)
        print("| " + " | ".join(f"{row[c]:.2g}" if isinstance(row[c], float) else str(row[c]) for c in columns) + " |",
              flush=True)


if __name__ == "__main__":
    main()
