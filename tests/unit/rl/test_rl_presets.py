"""The rl preset's settings per environment are those of the original runs the paper evaluated
(cbfinn/maml_rl's meta-test scripts name them; table in fastmaml.experiments.rl)."""

import pytest

from fastmaml.errors import ConfigError
from fastmaml.experiments.rl import make_config
from fastmaml.rl.trainer import RLConfig


@pytest.mark.parametrize(
    "env, trajectories, max_kl, iterations, eval_trajectories, eval_lr_decay, pretrained_lr, random_lr",
    [
        ("nav2d", 20, 0.01, 100, 40, 0.5, 0.5, 0.5),  # trpomaml1_fbs20_mbs20_flr_0.5metalr_0.01
        ("cheetah-vel", 10, 0.01, 475, 20, 0.5, 0.02, 0.1),  # maml1_fbs10_mbs40_flr_0.1_mlr0.01/itr_475
        ("cheetah-dir", 20, 0.02, 100, 20, 0.5, 0.2, 1.0),  # maml1_fbs20_mbs40_flr_0.1_mlr0.02/itr_100
        ("ant-vel", 20, 0.01, 375, 20, 0.5, 0.2, 1.0),  # maml1_fbs20_mbs40_flr_0.1_mlr0.01/itr_375
        ("ant-dir", 40, 0.01, 575, 40, 0.01, 0.2, 1.0),  # maml1_fbs40_mbs40_flr_0.1_mlr0.01/itr_575
    ],
)
def test_presets_follow_the_evaluated_original_runs(
    env, trajectories, max_kl, iterations, eval_trajectories, eval_lr_decay, pretrained_lr, random_lr
):
    config = make_config(env)
    config.validate()
    assert (config.trajectories, config.max_kl, config.iterations) == (trajectories, max_kl, iterations)
    assert (config.eval_trajectories, config.eval_lr_decay) == (eval_trajectories, eval_lr_decay)
    assert (config.pretrained_lr, config.random_lr) == (pretrained_lr, random_lr)
    assert config.meta_batch_size == (20 if env == "nav2d" else 40)
    assert config.inner_lr == (0.5 if env == "nav2d" else 0.1)
    assert make_config(env, max_kl=0.05).max_kl == 0.05  # --set still wins


def test_random_lr_must_not_be_negative():
    with pytest.raises(ConfigError, match="random_lr must be >= 0"):
        RLConfig(random_lr=-1.0).validate()


def test_finite_difference_step_defaults_to_the_original_runs_and_must_be_positive():
    # cbfinn/maml_rl's optimizer built FiniteDifferenceHvp(num_slices): num_slices = 1 became base_eps
    assert RLConfig().fd_base_eps == 1.0
    with pytest.raises(ConfigError, match="fd_base_eps must be > 0"):
        RLConfig(fd_base_eps=0.0).validate()


def test_explicit_damping_is_a_half_cheetah_option_and_reaches_its_environments():
    pytest.importorskip("mujoco", reason="mujoco is the optional 'rl' extra (CI installs fastmaml[rl])")
    import mujoco

    from fastmaml.rl.trainer import make_env

    config = make_config("cheetah-dir", implicit_damping=False)
    config.validate()
    for oracle in (False, True):
        env = make_env(config, oracle=oracle)
        model = getattr(env, "env", env).model
        assert model.opt.disableflags & mujoco.mjtDisableBit.mjDSBL_EULERDAMP
    assert not make_env(make_config("cheetah-dir")).model.opt.disableflags & mujoco.mjtDisableBit.mjDSBL_EULERDAMP
    for env in ("nav2d", "ant-dir"):
        with pytest.raises(ConfigError, match="implicit_damping=false applies to the half-cheetah"):
            make_config(env, implicit_damping=False).validate()
