"""MuJoCo locomotion smoke tests: frame_skip 1, rewards and termination against rllab's definitions,
the batched stepping against rllab's step-then-forward, seeded determinism, the gymnasium ids."""

import numpy as np
import pytest
import torch

mujoco = pytest.importorskip("mujoco", reason="mujoco is the optional 'rl' extra (CI installs fastmaml[rl])")
gymnasium = pytest.importorskip("gymnasium", reason="gymnasium is the optional 'rl' extra (CI installs fastmaml[rl])")

from fastmaml.errors import ConfigError  # noqa: E402
from fastmaml.rl.envs import ENV_NAMES  # noqa: E402
from fastmaml.rl.envs.locomotion import TASKS, LocomotionBatch, load_model  # noqa: E402

TASK_NAMES = list(TASKS)


def rollout(env, goals, steps, seed):
    """Reset with ``seed`` and apply seeded random actions; returns lists of (obs, reward, done)."""
    g = torch.Generator().manual_seed(seed)
    out = [(env.reset(goals, g), None, None)]
    for _ in range(steps):
        out.append(env.step(1.2 * torch.randn(len(goals), env.action_dim, generator=g, dtype=torch.float64)))
    return out


def rllab_body_comvel(model, data, body):
    """rllab's ``get_body_comvel``: mass-weighted body velocities summed up the tree (mjcore.py)."""
    velocity = np.zeros((model.nbody, 6))
    for i in range(model.nbody):
        mujoco.mj_objectVelocity(model, data, mujoco.mjtObj.mjOBJ_BODY, i, velocity[i], 0)
    momentum, mass = velocity[:, 3:] * model.body_mass[:, None], model.body_mass.copy()
    for i in range(model.nbody - 1, 0, -1):
        momentum[model.body_parentid[i]] += momentum[i]
        mass[model.body_parentid[i]] += mass[i]
    return momentum[body] / mass[body]


def test_names_agree():
    assert ENV_NAMES[1:] == tuple(TASKS)


def test_models_have_rllabs_settings_and_compile_without_warnings(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cheetah, ant = load_model("half_cheetah"), load_model("ant")
    assert cheetah.body_mass.sum() == pytest.approx(14.0)  # half_cheetah.xml's settotalmass
    assert cheetah.opt.timestep == 0.01 and ant.opt.timestep == 0.02
    assert ant.opt.integrator == mujoco.mjtIntegrator.mjINT_RK4
    assert ant.geom_solimp[:, :3].tolist() == [[0.8, 0.8, 0.01]] * ant.ngeom
    assert not (tmp_path / "MUJOCO_LOG.TXT").exists()  # MuJoCo writes its warnings there


@pytest.mark.parametrize("task, dt", [("cheetah-vel", 0.01), ("ant-vel", 0.02)])
def test_frame_skip_one_step_is_one_timestep(task, dt):
    env = LocomotionBatch(task)
    assert env.dt == pytest.approx(dt) and env.horizon == 200
    env.reset(torch.ones(2), torch.Generator().manual_seed(0))
    env.step(torch.zeros(2, env.action_dim))
    assert [d.time for d in env.datas] == pytest.approx([dt, dt])


@pytest.mark.parametrize("task", TASK_NAMES)
def test_reward_matches_the_rllab_definition(task):
    env = LocomotionBatch(task, dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    goals = env.sample_goals(3, g)
    env.reset(goals, g)
    for _ in range(15):
        actions = 1.5 * torch.randn(3, env.action_dim, generator=g, dtype=torch.float64)
        _, reward, done = env.step(actions)
    a = actions.clamp(-1, 1).numpy()
    for i, data in enumerate(env.datas):
        v = rllab_body_comvel(env.model, data, env.torso)[0]
        goal = goals[i].item()
        if task == "cheetah-vel":
            expected = -abs(v - goal) - 0.05 * np.sum(a[i] ** 2)
        elif task == "cheetah-dir":
            expected = goal * v - 0.05 * np.sum(a[i] ** 2)
        else:
            contact = 0.5 * 1e-3 * np.sum(np.clip(data.cfrc_ext, -1, 1) ** 2)
            forward = -abs(v - goal) + 1.0 if task == "ant-vel" else goal * v
            expected = forward - 0.5 * 1e-2 * np.sum(a[i] ** 2) - contact + 0.05
        assert reward[i].item() == pytest.approx(expected, abs=1e-9)
        assert not done[i]


def test_velocity_is_the_centre_of_mass_speed():
    env = LocomotionBatch("cheetah-dir", dtype=torch.float64)
    g = torch.Generator().manual_seed(2)
    env.reset(torch.ones(4), g)
    for _ in range(30):
        com_before = env.com[:, 0].copy()
        env.step(torch.rand(4, env.action_dim, generator=g) * 2 - 1)
        finite_difference = (env.com[:, 0] - com_before) / env.dt
        np.testing.assert_allclose(env.velocity, finite_difference, atol=0.05)


@pytest.mark.parametrize("task", ["cheetah-vel", "ant-dir"])
def test_batched_stepping_equals_rllab_step_then_forward(task):
    env = LocomotionBatch(task, dtype=torch.float64)
    g = torch.Generator().manual_seed(3)
    obs = env.reset(env.sample_goals(3, g), g)
    reference = []
    for data in env.datas:
        ref = mujoco.MjData(env.model)
        ref.qpos[:], ref.qvel[:] = data.qpos, data.qvel
        mujoco.mj_forward(env.model, ref)
        reference.append(ref)
    for _ in range(25):
        actions = torch.rand(3, env.action_dim, generator=g, dtype=torch.float64) * 2 - 1
        obs, _, _ = env.step(actions)
        for i, ref in enumerate(reference):
            ref.ctrl[:] = actions[i].numpy()
            mujoco.mj_step(env.model, ref)
            mujoco.mj_forward(env.model, ref)  # rllab's forward_dynamics: model.step(); model.forward()
            mujoco.mj_rnePostConstraint(env.model, ref)
            com = ref.subtree_com[env.torso]
            if env.is_ant:
                contact = np.clip(ref.cfrc_ext, -1, 1).ravel()
                expected = np.concatenate([ref.qpos, ref.qvel, contact, ref.xmat[env.torso], com])
            else:
                expected = np.concatenate([ref.qpos[1:], ref.qvel, com])
            assert np.array_equal(obs[i].numpy(), expected)


def test_ant_starts_from_rllab_init_qpos_with_noise():
    env = LocomotionBatch("ant-vel", dtype=torch.float64)
    obs = env.reset(torch.zeros(200), torch.Generator().manual_seed(4))
    init = [0.0, 0.0, 0.55, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, -1.0, 0.0, -1.0, 0.0, 1.0]
    qpos, qvel = obs[:, :15].numpy(), obs[:, 15:29].numpy()
    np.testing.assert_allclose(qpos.mean(0), init, atol=0.003)
    not_quaternion_w = [i for i in range(15) if i != 3]  # MuJoCo 3 normalises the quaternion in place
    np.testing.assert_allclose(qpos.std(0)[not_quaternion_w], 0.01, rtol=0.2)
    np.testing.assert_allclose(qvel.std(0), 0.1, rtol=0.2)


def test_ant_terminates_outside_the_height_range_or_on_nan():
    env = LocomotionBatch("ant-dir")
    env.reset(torch.ones(4), torch.Generator().manual_seed(5))
    env.datas[0].qpos[2] = 0.1  # torso on the floor
    env.datas[1].qpos[2] = 1.5  # jumped too high
    env.datas[2].qvel[0] = np.nan
    for data in env.datas[:3]:
        mujoco.mj_forward(env.model, data)
    obs, reward, done = env.step(torch.zeros(4, env.action_dim))
    assert done.tolist() == [True, True, True, False]
    frozen = obs.clone()
    obs, reward, done = env.step(torch.ones(4, env.action_dim))
    assert done.tolist() == [True, True, True, False] and reward[:3].tolist() == [0, 0, 0]
    assert torch.equal(obs[:2], frozen[:2]) and not torch.equal(obs[3], frozen[3])


def test_cheetah_never_terminates():
    env = LocomotionBatch("cheetah-vel")
    steps = rollout(env, torch.ones(3), 60, seed=6)
    assert not any(done.any() for _, _, done in steps[1:])


@pytest.mark.parametrize("task", ["cheetah-dir", "ant-dir"])
@pytest.mark.parametrize("threads", [2, 3])
def test_threads_give_bit_identical_trajectories(task, threads):
    """``threads`` step disjoint robots in parallel (MuJoCo releases the GIL): the same observations,
    rewards and terminations to the last bit, also with robots that stopped early (ant)."""
    goals = torch.tensor([-1.0, 1.0, 1.0, -1.0, 1.0])
    envs = [LocomotionBatch(task, dtype=torch.float64, threads=n) for n in (1, threads)]
    runs = []
    for env in envs:
        g = torch.Generator().manual_seed(8)
        steps = [env.reset(goals, g)]
        if env.is_ant:  # one torso on the floor: that robot stops at the first step
            env.datas[1].qpos[2] = 0.1
            mujoco.mj_forward(env.model, env.datas[1])
        for _ in range(40):
            steps += list(env.step(1.2 * torch.randn(len(goals), env.action_dim, generator=g, dtype=torch.float64)))
        runs.append(steps)
    assert envs[1].threads == threads and envs[1]._pool is not None
    if task == "ant-dir":
        assert runs[1][-1].tolist()[1] and not all(runs[1][-1].tolist())  # some stopped, some run
    for a, b in zip(*runs, strict=True):
        assert torch.equal(a, b)


def test_the_config_key_reaches_the_environments():
    from fastmaml.rl.trainer import RLConfig, make_env

    assert make_env(RLConfig(env="ant-dir", sim_threads=3)).threads == 3
    assert make_env(RLConfig(env="ant-dir", sim_threads=2), oracle=True).env.threads == 2
    assert make_env(RLConfig(env="cheetah-dir")).threads == 1
    make_env(RLConfig(env="nav2d", sim_threads=2))  # 2D navigation steps in torch: the key is ignored


def test_a_failing_thread_raises_in_the_caller():
    env = LocomotionBatch("cheetah-dir", threads=2)
    env.reset(torch.ones(4), torch.Generator().manual_seed(0))
    env.datas[3] = None  # a robot whose state is gone: its thread fails
    with pytest.raises(AttributeError):
        env.step(torch.zeros(4, env.action_dim))
    with pytest.raises(ConfigError, match="sim_threads must be >= 1"):
        LocomotionBatch("ant-dir", threads=0)


@pytest.mark.parametrize("task", ["cheetah-dir", "ant-vel"])
def test_same_seed_same_trajectories(task):
    goals = torch.tensor([-1.0, 1.0, 1.0]) if task == "cheetah-dir" else torch.tensor([0.5, 1.0, 2.5])
    first = rollout(LocomotionBatch(task), goals, 30, seed=7)
    second = rollout(LocomotionBatch(task), goals, 30, seed=7)
    other = rollout(LocomotionBatch(task), goals, 30, seed=8)
    assert all(torch.equal(a, b) for s, t in zip(first, second) for a, b in zip(s, t) if a is not None)
    assert not torch.equal(first[-1][0], other[-1][0])


def test_goal_distributions():
    g = torch.Generator().manual_seed(9)
    for task, high in [("cheetah-vel", 2.0), ("ant-vel", 3.0)]:
        goals = LocomotionBatch(task).sample_goals(1000, g)
        assert goals.min() >= 0 and goals.max() <= high and goals.max() > 0.95 * high
    for task in ["cheetah-dir", "ant-dir"]:
        goals = LocomotionBatch(task).sample_goals(1000, g)
        assert set(goals.tolist()) == {-1.0, 1.0} and abs(goals.mean()) < 0.1


@pytest.mark.filterwarnings("ignore:.*Box observation space:UserWarning")
@pytest.mark.parametrize(
    "env_id, goal, obs_dim",
    [
        ("fastmaml/HalfCheetahVel-v0", 1.5, 20),
        ("fastmaml/HalfCheetahDir-v0", -1.0, 20),
        ("fastmaml/AntVel-v0", 2.0, 125),
        ("fastmaml/AntDir-v0", 1.0, 125),
    ],
)
def test_gymnasium_ids(env_id, goal, obs_dim):
    from gymnasium.utils.env_checker import check_env

    env = gymnasium.make(env_id)
    assert env.spec.max_episode_steps == 200
    obs, info = env.reset(seed=0, options={"goal": goal})
    assert obs.shape == (obs_dim,) and info["goal"] == goal
    assert env.unwrapped.batch.dt in (0.01, 0.02)
    check_env(gymnasium.make(env_id).unwrapped)



@pytest.mark.parametrize("goal", [0.5, 0.0, [1.0, 1.0]])
def test_a_direction_task_takes_only_plus_or_minus_one(goal):
    env = gymnasium.make("fastmaml/HalfCheetahDir-v0")
    with pytest.raises(ValueError, match=r"direction task's goal is \+1 \(forward\) or -1 \(backward\)"):
        env.reset(seed=0, options={"goal": goal})
    env.unwrapped.set_task(-1)  # an int is a direction too
    assert env.reset(seed=0)[1]["goal"] == -1.0


def test_misuse_gives_clear_errors():
    with pytest.raises(ValueError, match="unknown locomotion task 'cheetah'; choose one of cheetah-vel"):
        LocomotionBatch("cheetah")
    env = LocomotionBatch("cheetah-dir")
    with pytest.raises(RuntimeError, match=r"call reset\(goals\) before step"):
        env.step(torch.zeros(1, 6))
    with pytest.raises(ValueError, match=r"goals must have shape \(batch,\)"):
        env.reset(torch.ones(2, 1))
    env.reset(torch.ones(2))
    with pytest.raises(ValueError, match=r"actions must have shape \(2, 6\)"):
        env.step(torch.zeros(2, 8))


def test_explicit_damping_option_changes_only_the_half_cheetahs_integration():
    """implicit_damping=False sets MuJoCo's mjDSBL_EULERDAMP (today's Euler integrates joint damping
    implicitly; whether rllab's MuJoCo 1.31 did is not documented): the same actions then move the
    cheetah differently. The ant steps with RK4, which the flag does not touch: refused."""
    goals = torch.ones(3, dtype=torch.float64)
    implicit = LocomotionBatch("cheetah-dir", dtype=torch.float64)
    explicit = LocomotionBatch("cheetah-dir", dtype=torch.float64, implicit_damping=False)
    assert not implicit.model.opt.disableflags & mujoco.mjtDisableBit.mjDSBL_EULERDAMP
    assert explicit.model.opt.disableflags & mujoco.mjtDisableBit.mjDSBL_EULERDAMP
    a, b = rollout(implicit, goals, 50, seed=0), rollout(explicit, goals, 50, seed=0)
    assert torch.equal(a[0][0], b[0][0])  # the same start: the flag acts only when stepping
    assert not torch.allclose(a[-1][0], b[-1][0], atol=1e-3)
    again = rollout(LocomotionBatch("cheetah-dir", dtype=torch.float64, implicit_damping=False), goals, 50, seed=0)
    assert torch.equal(again[-1][0], b[-1][0])  # still deterministic
    with pytest.raises(ValueError, match="implicit_damping=false applies to the Euler integrator"):
        LocomotionBatch("ant-dir", implicit_damping=False)
