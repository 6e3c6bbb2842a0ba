"""Meta-reinforcement learning (paper section 5.3): MAML-TRPO on 2D navigation and MuJoCo locomotion.

``fastmaml train rl --env nav2d|cheetah-vel|cheetah-dir|ant-vel|ant-dir --out RUN`` with the
settings of cbfinn/maml_rl's scripts (``maml_trpo_point.py``, ``cluster_maml_trpo_cheetah.py``,
``cluster_maml_trpo_ant.py``, ``test_maml_point.py``, ``test_maml_cheetah.py``):

| setting | nav2d | locomotion |
|---|---|---|
| inner lr α (first meta-test step too) | 0.5 | 0.1 |
| meta-batch (tasks per iteration) | 20 | 40 |
| trajectories per task, before and after adaptation | 20 | 20 |
| iterations | 100 | 500 (cheetah; the paper's snapshot was iteration 475), 800 (ant) |
| meta-test trajectories per task and step | 40 (4,000 steps) | 20 (4,000 steps) |
| pretrained policy's fine-tuning lr | 0.5 | 0.02 |

Common to all: Gaussian MLP 100-100 ReLU, γ = 0.99, GAE λ = 1, linear feature baseline, TRPO with
max KL 0.01, 10 conjugate-gradient iterations, damping 1e-5, one inner step at meta-train; at
meta-test later steps use half the first step's lr (the original used ``learning_rate = 0.5 x
step_size`` after an ``init_learning_rate = step_size`` first step). The paper's text gives 0.1 as
the inner lr throughout; the original 2D navigation run (``trpomaml1_fbs20_mbs20_flr_0.5``, the one
its meta-test script loads) used 0.5, which is this preset's value (``--set inner_lr=0.1`` for the
paper's). The original ``maml_trpo_point.py`` sets meta_batch_size 40; its evaluated run used 20.

``--set method=context`` trains the paper's context-vector baseline (appendix) in MAML's place with
every setting above: the policy reads a learned vector (``context_dim``, 10) beside the observation,
the inner step adapts only that vector, the TRPO meta-update trains the network (``fastmaml.rl.trainer``).
"""

from __future__ import annotations

from fastmaml.engine.experiment import Preset, register
from fastmaml.errors import ConfigError
from fastmaml.rl.trainer import RLConfig, evaluate, plot, train

NAV2D = {"inner_lr": 0.5, "meta_batch_size": 20, "iterations": 100, "eval_trajectories": 40, "pretrained_lr": 0.5}
LOCOMOTION = {"inner_lr": 0.1, "meta_batch_size": 40, "iterations": 500, "eval_trajectories": 20,
              "pretrained_lr": 0.02}
ITERATIONS = {"ant-vel": 800, "ant-dir": 800}


def make_config(env: str = "nav2d", **changes) -> RLConfig:
    """The original scripts' settings for ``env`` (module docstring), then ``changes``."""
    defaults = NAV2D if env == "nav2d" else {**LOCOMOTION, "iterations": ITERATIONS.get(env, 500)}
    return RLConfig(env=env, **{**defaults, **changes})


def build(config: RLConfig):
    raise ConfigError("the rl preset trains with its own loop (fastmaml.rl.trainer), not the supervised engine")


PRESET = register(
    Preset(
        name="rl",
        config_cls=RLConfig,
        make_config=make_config,
        build=build,
        description="meta-RL, MAML-TRPO: --env nav2d|cheetah-vel|cheetah-dir|ant-vel|ant-dir (paper section 5.3)",
        train=train,
        evaluate=evaluate,
        plot=plot,
    )
)
