"""Meta-reinforcement learning (paper section 5.3): MAML-TRPO on 2D navigation and MuJoCo locomotion.

``fastmaml train rl --env nav2d|cheetah-vel|cheetah-dir|ant-vel|ant-dir --out RUN`` with the
settings of the runs the paper evaluated. cbfinn/maml_rl's meta-test scripts name them
(``test_maml_point.py``, ``test_maml_cheetah.py``, ``test_maml_cheetah_direc.py``,
``test_maml_ant.py``, ``test_maml_ant_direc.py``); the run names encode the training settings
(``maml1_fbs{trajectories}_mbs{meta-batch}_flr_{inner lr}_mlr{max KL}/itr_{iteration}.pkl``) and the
scripts give the meta-test step sizes and batch:

| setting | nav2d | cheetah-vel | cheetah-dir | ant-vel | ant-dir |
|---|---|---|---|---|---|
| inner lr α (first meta-test step too) | 0.5 | 0.1 | 0.1 | 0.1 | 0.1 |
| meta-batch (tasks per iteration) | 20 | 40 | 40 | 40 | 40 |
| trajectories per task, before and after adaptation | 20 | 10 | 20 | 20 | 40 |
| TRPO max KL | 0.01 | 0.01 | **0.02** | 0.01 | 0.01 |
| iterations (the evaluated snapshot) | 100 | 475 | **100** | 375 | 575 |
| meta-test trajectories per task and step | 40 | 20 | 20 | 20 | 40 |
| meta-test lr of later steps (x the first's) | 0.5 | 0.5 | 0.5 | 0.5 | 0.01 |
| pretrained policy's fine-tuning lr | 0.5 | 0.02 | 0.2 | 0.2 | 0.2 |
| random initialisation's fine-tuning lr | 0.5 | 0.1 | 1.0 | 1.0 | 1.0 |

Common to all: Gaussian MLP 100-100 ReLU, γ = 0.99, GAE λ = 1, linear feature baseline, TRPO with
10 conjugate-gradient iterations, damping 1e-5, one inner step at meta-train; at meta-test the
first step uses the lr above and later ones the given fraction of it (the original's
``init_learning_rate`` and ``learning_rate``). The paper's text gives 0.1 as the inner lr throughout;
the original 2D navigation run (``trpomaml1_fbs20_mbs20_flr_0.5``, the one its meta-test script
loads) used 0.5, which is this preset's value (``--set inner_lr=0.1`` for the paper's). The original
``maml_trpo_point.py`` sets meta_batch_size 40; its evaluated run used 20. The training script
``cluster_maml_trpo_cheetah.py`` lists max KL 0.01 for both cheetah tasks, but the direction run the
paper evaluated is ``..._mlr0.02/itr_100.pkl``: twice the trust region, 100 iterations. (Until
2026-11-27 every locomotion task used the cheetah-vel column with 20 trajectories and 500
iterations; runs made then keep their own config.json.)

``--set method=context`` trains the paper's context-vector baseline (appendix) in MAML's place with
every setting above: the policy reads a learned vector (``context_dim``, 10) beside the observation,
the inner step adapts only that vector, the TRPO meta-update trains the network (``fastmaml.rl.trainer``).
"""

from __future__ import annotations

from fastmaml.engine.experiment import Preset, register
from fastmaml.errors import ConfigError
from fastmaml.rl.trainer import RLConfig, evaluate, plot, train

COLUMNS = ("inner_lr", "meta_batch_size", "trajectories", "max_kl", "iterations", "eval_trajectories",
           "eval_lr_decay", "pretrained_lr", "random_lr")
SETTINGS = {  # the module docstring's table: one entry per environment (a column there), in COLUMNS order
    "nav2d": (0.5, 20, 20, 0.01, 100, 40, 0.5, 0.5, 0.5),
    "cheetah-vel": (0.1, 40, 10, 0.01, 475, 20, 0.5, 0.02, 0.1),
    "cheetah-dir": (0.1, 40, 20, 0.02, 100, 20, 0.5, 0.2, 1.0),
    "ant-vel": (0.1, 40, 20, 0.01, 375, 20, 0.5, 0.2, 1.0),
    "ant-dir": (0.1, 40, 40, 0.01, 575, 40, 0.01, 0.2, 1.0),
}


def make_config(env: str = "nav2d", **changes) -> RLConfig:
    """The evaluated original runs' settings for ``env`` (module docstring), then ``changes``."""
    defaults = dict(zip(COLUMNS, SETTINGS[env], strict=True)) if env in SETTINGS else {}
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
