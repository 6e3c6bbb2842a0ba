"""MuJoCo locomotion task distributions of the paper (section 5.3), as in cbfinn/maml_rl's rllab envs.

Tasks (goal per task; v = x-velocity of the torso subtree's centre of mass after the step,
a = clip(action, -1, 1) as rllab's ``normalize`` wrapper passes it on):

    cheetah-vel  g ~ U[0, 2]        r = -|v - g| - 0.05 |a|^2                       (half_cheetah_env_rand.py)
    cheetah-dir  g = ±1, p = 1/2    r = g v - 0.05 |a|^2                            (half_cheetah_env_rand_direc.py)
    ant-vel      g ~ U[0, 3]        r = -|v - g| + 1 - 0.005 |a|^2 - c + 0.05       (ant_env_rand.py)
    ant-dir      g = ±1, p = 1/2    r = g v - 0.005 |a|^2 - c + 0.05                (ant_env_rand_direc.py)

with the ant's contact cost c = 0.0005 * sum(clip(cfrc_ext, -1, 1)^2) over all bodies and its
survive bonus 0.05. The ant's episode ends when its state is not finite or the torso height qpos[2]
leaves [0.2, 1.0]; the cheetah's never ends early. Horizon 200. (The original draws direction tasks
as g ~ U[0, 2] or U[0, 3] and takes the sign of g - 1 or g - 1.5: the same distribution.)

v is rllab's ``get_body_comvel("torso")``: the mass-weighted body velocities of the torso's subtree,
which is MuJoCo's ``subtree_linvel`` (not gymnasium's qpos difference / dt). Observations, also as
rllab: cheetah [qpos[1:], qvel, subtree com of torso] (20); ant [qpos, qvel, clip(cfrc_ext, -1, 1),
torso rotation matrix, subtree com of torso] (125). Resets add N(0, 0.01) to the initial qpos and
N(0, 0.1) to qvel. rllab called ``model.step()`` then ``model.forward()``, so every quantity above is
read at the state after the step.

Models: gymnasium's ``half_cheetah.xml`` and ``ant.xml`` stepped with frame_skip 1, as rllab did
(gymnasium's v5 envs use frame_skip 5). half_cheetah.xml is rllab's model (timestep 0.01, so one step
is 0.01 s). gymnasium's ant.xml differs from rllab's and is set back to it: timestep 0.02 (RK4) instead
of 0.01, contact ``solimp`` (0.8, 0.8, 0.01) on every geom instead of MuJoCo's default, and the
episode starts from the model's ``init_qpos`` numeric (torso at 0.55 with bent legs, rllab's start)
rather than qpos0. Its motors have ctrlrange ±1 and gear 150 where rllab had ±150 and gear 1: the
same torques once actions are normalised. What remains different is MuJoCo itself (rllab used 1.31).
One such difference can be switched: today's Euler integrator (the half-cheetah's) integrates joint
damping implicitly unless ``mjDSBL_EULERDAMP`` is set; ``implicit_damping=False`` sets it, to measure
how much that changes a result (whether MuJoCo 1.31 damped implicitly is not documented).
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from fastmaml.errors import ConfigError
from fastmaml.rl._optional import require

mujoco = require("mujoco")
gymnasium = require("gymnasium")

HORIZON = 200
ANT_TIMESTEP = 0.02
ANT_SOLIMP = (0.8, 0.8, 0.01, 0.5, 2.0)  # rllab's (0.8, 0.8, 0.01); midpoint and power at MuJoCo defaults
QPOS_NOISE, QVEL_NOISE = 0.01, 0.1


@dataclass(frozen=True)
class LocomotionTask:
    """One task distribution: which robot, and whether goals are velocities or directions."""

    robot: str  # "half_cheetah" or "ant"
    goal: str  # "velocity" or "direction"
    max_velocity: float = 0.0  # velocity goals are U[0, max_velocity]


TASKS = {
    "cheetah-vel": LocomotionTask("half_cheetah", "velocity", 2.0),
    "cheetah-dir": LocomotionTask("half_cheetah", "direction"),
    "ant-vel": LocomotionTask("ant", "velocity", 3.0),
    "ant-dir": LocomotionTask("ant", "direction"),
}
CTRL_COST = {"half_cheetah": 0.05, "ant": 0.005}
ANT_CONTACT_COST, ANT_SURVIVE, ANT_VELOCITY_BONUS = 0.0005, 0.05, 1.0
ANT_HEIGHT = (0.2, 1.0)


def load_model(robot: str):
    """gymnasium's ``{robot}.xml`` compiled, with rllab's settings (see the module docstring)."""
    xml = (Path(gymnasium.__file__).parent / "envs" / "mujoco" / "assets" / f"{robot}.xml").read_text()
    # MuJoCo 4 deprecates the compiler's settotalmass (half_cheetah.xml has it) with a warning and a
    # MUJOCO_LOG.TXT in the working directory; setting the total mass after compiling gives the same model.
    total_mass = re.search(r'\ssettotalmass="([^"]+)"', xml)
    model = mujoco.MjModel.from_xml_string(xml.replace(total_mass.group(0), "") if total_mass else xml)
    if total_mass:
        mujoco.mj_setTotalmass(model, float(total_mass.group(1)))
        mujoco.mj_setConst(model, mujoco.MjData(model))
    if robot == "ant":
        model.opt.timestep = ANT_TIMESTEP
        model.geom_solimp[:] = ANT_SOLIMP
    return model


class LocomotionBatch:
    """B MuJoCo robots (B = tasks x trajectories) stepped together; one MjData per robot.

    The physics runs in MuJoCo's C functions, a few calls per robot per step. Each step reuses the
    position and velocity stages of the forward pass that read the previous observation and
    recomputes only actuation and acceleration for the new controls (``mj_forwardSkip``) before
    integrating: exactly rllab's ``mj_step`` then ``mj_forward`` (the unit tests check bit
    equality, which holds on MuJoCo 3.1 and 4.0), without computing the positions twice.
    After ``done`` a robot is no longer stepped: its observation stays and its reward is 0, until
    ``restart`` starts it on a new episode.
    ``threads`` > 1 steps disjoint slices of the robots in that many threads (MuJoCo releases the
    GIL): the same results, faster for the ant, slower for the cheap half-cheetah
    (benchmarks/results/rl_sim_threads_cpu.md).
    """

    horizon = HORIZON
    goal_shape: tuple[int, ...] = ()

    def __init__(
        self, task: str, *, dtype: torch.dtype = torch.float32, implicit_damping: bool = True, threads: int = 1
    ) -> None:
        if task not in TASKS:
            raise ConfigError(f"unknown locomotion task {task!r}; choose one of {', '.join(TASKS)}")
        if threads < 1:
            raise ConfigError(f"sim_threads must be >= 1, got {threads}")
        # MuJoCo's functions release the GIL, so threads step disjoint sets of robots in parallel
        self.threads = threads
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="mujoco") if threads > 1 else None
        self.task = TASKS[task]
        self.dtype = dtype
        self.model = model = load_model(self.task.robot)
        self.is_ant = self.task.robot == "ant"
        if not implicit_damping:
            if int(model.opt.integrator) != int(mujoco.mjtIntegrator.mjINT_EULER):
                raise ConfigError(f"implicit_damping=false applies to the Euler integrator (the half-cheetah); "
                                  f"{task} steps with another one, so leave it at true")
            model.opt.disableflags |= int(mujoco.mjtDisableBit.mjDSBL_EULERDAMP)
        self.torso = model.body("torso").id
        self.init_qpos = model.numeric("init_qpos").data.copy() if self.is_ant else model.qpos0.copy()
        self.integrate = {  # what mj_step does after its forward pass, for the two models used here
            int(mujoco.mjtIntegrator.mjINT_EULER): mujoco.mj_Euler,
            int(mujoco.mjtIntegrator.mjINT_RK4): lambda m, d: mujoco.mj_RungeKutta(m, d, 4),
        }[int(model.opt.integrator)]
        self.action_dim = model.nu
        self.obs_dim = model.nq + model.nv + 6 * model.nbody + 12 if self.is_ant else model.nq - 1 + model.nv + 3
        self.datas: list = []
        self.goals, self.done = np.zeros(0), np.zeros(0, dtype=bool)
        self._share: tuple[int, slice | None] = (0, None)  # (whole batch, this process's rows) of the last reset
        self._allocate(0)

    @property
    def dt(self) -> float:
        """Seconds of simulated time per step (frame_skip 1)."""
        return float(self.model.opt.timestep)

    def sample_goals(self, num_tasks: int, generator: torch.Generator) -> Tensor:
        """Velocities U[0, max] or directions ±1 with probability 1/2: shape (num_tasks,)."""
        if self.task.goal == "velocity":
            return self.task.max_velocity * torch.rand(num_tasks, generator=generator)
        return torch.randint(0, 2, (num_tasks,), generator=generator).float() * 2 - 1

    def reset(self, goals: Tensor, generator: torch.Generator | None = None, rows: slice | None = None) -> Tensor:
        """Start B = len(goals) robots at rllab's noisy initial state; returns obs (B, obs_dim).

        ``rows``: start only those robots of the batch (one process's share under torch.distributed).
        The start noise is drawn for the whole batch all the same, so each robot starts where it
        would in the whole batch and ``generator`` ends in the same state."""
        goals = torch.as_tensor(goals, dtype=torch.float64)
        if goals.dim() != 1:
            raise ValueError(f"locomotion goals must have shape (batch,), got {tuple(goals.shape)}")
        self._share = (len(goals), rows)  # restart draws its noise for this whole batch too
        qpos_noise, qvel_noise = self._start_noise(generator)
        if rows is not None:
            goals = goals[rows]
        batch = len(goals)
        if len(self.datas) != batch:
            self.datas = [mujoco.MjData(self.model) for _ in range(batch)]
            self._allocate(batch)
        self._start(np.arange(batch), qpos_noise, qvel_noise)
        self.goals = goals.numpy().copy()
        self.done = np.zeros(batch, dtype=bool)
        return self._tensor(self._observation())

    def restart(self, ended: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Start a new episode, same goal, from a fresh noisy initial state for the robots where
        ``ended`` (B,) is True; returns their observations (ended.sum(), obs_dim). The step-budget
        sampler calls it for every robot whose episode just ended. As in ``reset``, the start noise is
        drawn for every robot of the batch ``reset`` was given (also outside its ``rows``), so a share
        restarts where the whole batch would."""
        if not self.datas:
            raise RuntimeError("call reset(goals) before restart(ended)")
        ended = torch.as_tensor(ended, dtype=torch.bool).numpy()
        if ended.shape != self.done.shape:
            raise ValueError(f"restart's ended must be a bool mask of shape {self.done.shape}, got {ended.shape}")
        self._start(np.flatnonzero(ended), *self._start_noise(generator))
        self.done[ended] = False
        return self._tensor(self._observation()[ended])

    def stop(self, ended: Tensor) -> None:
        """End the episodes of the robots where ``ended`` (B,) is True: from now on they are not stepped,
        as after ``done``, until ``restart``. The step-budget sampler stops the robots none of whose
        paths can still be kept (what they would simulate is dropped)."""
        ended = torch.as_tensor(ended, dtype=torch.bool).numpy()
        if ended.shape != self.done.shape:
            raise ValueError(f"stop's ended must be a bool mask of shape {self.done.shape}, got {ended.shape}")
        self.done[ended] = True

    def step(self, actions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Apply ``actions`` (B, action_dim), clipped to [-1, 1]; returns obs, reward (B,), done (B,)."""
        if not self.datas:
            raise RuntimeError("call reset(goals) before step(actions)")
        actions = torch.as_tensor(actions).detach().cpu().to(torch.float64).numpy()
        if actions.shape != (len(self.datas), self.action_dim):
            raise ValueError(
                f"actions must have shape ({len(self.datas)}, {self.action_dim}) (batch, action_dim), "
                f"got {actions.shape}"
            )
        actions = np.clip(actions, -1.0, 1.0)
        running = ~self.done
        model, skip_pos_vel = self.model, mujoco.mjtStage.mjSTAGE_VEL

        def advance(robots: np.ndarray) -> None:
            for i in robots:
                data = self.datas[i]
                data.ctrl[:] = actions[i]
                mujoco.mj_forwardSkip(model, data, skip_pos_vel, 1)  # same state, new controls
                self.integrate(model, data)
                self._forward_and_read(i)

        self._for_robots(advance, np.flatnonzero(running))
        reward = np.where(running, self._reward(actions), 0.0)
        if self.is_ant:
            state = np.concatenate([self.qpos, self.qvel], axis=1)
            height_ok = (self.qpos[:, 2] >= ANT_HEIGHT[0]) & (self.qpos[:, 2] <= ANT_HEIGHT[1])
            self.done = self.done | ~(np.isfinite(state).all(axis=1) & height_ok)
        return self._tensor(self._observation()), self._tensor(reward), torch.from_numpy(self.done.copy())

    # ----------------------------------------------------------------------------- internals
    def _start_noise(self, generator: torch.Generator | None) -> tuple[np.ndarray, np.ndarray]:
        """N(0, 1) start noise of qpos and qvel for the whole batch, this process's rows of it."""
        total, rows = self._share
        nq, nv = self.model.nq, self.model.nv
        qpos_noise = torch.randn(total, nq, generator=generator, dtype=torch.float64).numpy()
        qvel_noise = torch.randn(total, nv, generator=generator, dtype=torch.float64).numpy()
        return (qpos_noise, qvel_noise) if rows is None else (qpos_noise[rows], qvel_noise[rows])

    def _start(self, robots: np.ndarray, qpos_noise: np.ndarray, qvel_noise: np.ndarray) -> None:
        """Put ``robots`` at rllab's initial state plus the noise of their rows."""
        model = self.model

        def start(robots: np.ndarray) -> None:
            for i in robots:
                data = self.datas[i]
                mujoco.mj_resetData(model, data)
                data.qpos[:] = self.init_qpos + QPOS_NOISE * qpos_noise[i]
                data.qvel[:] = QVEL_NOISE * qvel_noise[i]
                self._forward_and_read(i)

        self._for_robots(start, robots)

    def _for_robots(self, work, robots: np.ndarray) -> None:
        """``work(robots)``, split over the threads in contiguous slices. Every robot has its own
        MjData and writes only its own rows of the arrays below, so the result does not depend on
        the number of threads (tested bit for bit)."""
        if self._pool is None or len(robots) < 2:
            work(robots)
            return
        for future in [self._pool.submit(work, part) for part in np.array_split(robots, self.threads) if len(part)]:
            future.result()  # re-raises a worker's exception here

    def _allocate(self, batch: int) -> None:
        model = self.model
        self.qpos = np.zeros((batch, model.nq))
        self.qvel = np.zeros((batch, model.nv))
        self.com = np.zeros((batch, 3))  # subtree centre of mass of the torso
        self.velocity = np.zeros(batch)  # its x-velocity
        self.cfrc_ext = np.zeros((batch, model.nbody * 6))
        self.xmat = np.zeros((batch, 9))  # torso rotation matrix

    def _forward_and_read(self, i: int) -> None:
        """rllab's ``model.forward()`` after the step, then copy what observations and rewards use."""
        model, data, torso = self.model, self.datas[i], self.torso
        mujoco.mj_forward(model, data)  # also sets the solver's warm start, as rllab's did
        mujoco.mj_subtreeVel(model, data)
        if self.is_ant:
            mujoco.mj_rnePostConstraint(model, data)  # cfrc_ext: computed lazily since MuJoCo 2
            self.cfrc_ext[i] = data.cfrc_ext.reshape(-1)
            self.xmat[i] = data.xmat[torso]
        self.qpos[i], self.qvel[i] = data.qpos, data.qvel
        self.com[i] = data.subtree_com[torso]
        self.velocity[i] = data.subtree_linvel[torso, 0]

    def _observation(self) -> np.ndarray:
        if self.is_ant:
            contact = np.clip(self.cfrc_ext, -1.0, 1.0)
            return np.concatenate([self.qpos, self.qvel, contact, self.xmat, self.com], axis=1)
        return np.concatenate([self.qpos[:, 1:], self.qvel, self.com], axis=1)

    def _reward(self, actions: np.ndarray) -> np.ndarray:
        velocity, goals = self.velocity, self.goals
        if self.task.goal == "velocity":
            reward = -np.abs(velocity - goals) + (ANT_VELOCITY_BONUS if self.is_ant else 0.0)
        else:
            reward = goals * velocity
        reward = reward - CTRL_COST[self.task.robot] * np.square(actions).sum(axis=1)
        if self.is_ant:
            contact_cost = ANT_CONTACT_COST * np.square(np.clip(self.cfrc_ext, -1.0, 1.0)).sum(axis=1)
            reward = reward - contact_cost + ANT_SURVIVE
        return reward

    def _tensor(self, array: np.ndarray) -> Tensor:
        return torch.tensor(array, dtype=self.dtype)
