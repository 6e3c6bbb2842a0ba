"""Meta-RL runs: MAML-TRPO and the paper's baselines trained side by side in one run folder, their
meta-test evaluation (return after 0..N inner steps on held-out tasks, 95% CI) and plots.

The run folder follows the supervised engine's conventions (``fastmaml.engine.trainer``):
``config.json``, ``metrics.jsonl`` (one row per ``log_every`` iterations), ``checkpoint.safetensors``
(+ ``.prev``) written atomically with the policies' parameters, every RNG stream and the metrics so
far, ``eval.json`` and ``plots/``. Resuming continues bit for bit on the CPU. This module sits above
``fastmaml.rl``'s pure functions and reuses the engine's checkpoint and run-folder helpers.

Learners, each with its own seeded random stream (so adding a baseline leaves MAML's run unchanged):

- ``maml``: Algorithm 3, :func:`fastmaml.rl.maml_trpo.maml_trpo_step`.
- ``context`` (``method="context"``, in MAML's place): the paper's context-vector baseline (appendix).
  The policy reads a learned vector c of ``context_dim`` entries beside the observation; the inner
  REINFORCE step adapts c only, the TRPO meta-update trains all parameters with MAML's objective, and
  meta-test adapts c with MAML's steps and lrs. It takes MAML's random stream (seed offset 0), so it
  meets the same training goals and evaluation tasks as a MAML run with the same seed.
- ``pretrained``: one policy trained with TRPO on all tasks jointly (no adaptation), same
  iterations, tasks per iteration and trajectories per task; fine-tuned at meta-test with the same
  REINFORCE step at ``pretrained_lr``.
- ``oracle``: the same TRPO training with the goal (position or velocity/direction) appended to the
  observation; not adapted at meta-test (the original used step size 0).
- ``random`` (meta-test only): a freshly initialised policy fine-tuned at ``random_lr`` (default
  ``inner_lr``).

``method="none"`` trains the baselines alone (e.g. to add them to a MAML run made with
``baselines=``: the seeds are per learner, so they meet the same goals as in a joint run, and
``fastmaml eval`` uses the same meta-test tasks and action noise in every run of one seed).

Under ``torchrun`` every process meets the same goals and draws the same random numbers, samples and
adapts its own share of each learner's tasks (:meth:`fastmaml.engine.distributed.Cluster.rows`), and
the TRPO step sums the gradient, the Hessian-vector products and the line search's loss and KL over
the processes (:func:`fastmaml.rl.maml_trpo.maml_trpo_step`): the single-process update up to
summation order, the same parameters and generator state in every process, one checkpoint that
resumes on any number of processes. Rank 0 logs and saves. ``baseline_fit=rllab`` (which chains
each task's baseline to the task before) and ``hvp_tasks`` are single-process options.

Direction tasks (``cheetah-dir``, ``ant-dir``) are also reported per direction, in training
(``return_pre_forward``, ``return_post_backward``, ``pretrained_return_forward``, ...) and at
meta-test (metrics ``return_forward`` and ``return_backward`` beside ``return``): a policy biased
towards one direction before adaptation shows there, while the average hides it. Every training row
also has each trained policy's action noise σ after the update, averaged over the action dimensions
(``policy_std``, ``pretrained_policy_std``, ...): the one-step adaptation's policy gradient is only as
precise as σ allows.

Against cbfinn/maml_rl's baselines: its 2D-navigation "pretrained" policy (``maml0_...``) was
MAMLTRPO with ``use_maml=False``, which replaces TRPO by one Adam step (lr 1e-3) per iteration on the
pre-update surrogate; the paper describes it as trained on all tasks jointly, which is what TRPO does
here. Its oracles were trained by separate TRPO scripts (``trpo_point.py``: 10 trajectories of one
random goal per iteration); here they get MAML's budget of tasks and trajectories per iteration.
The meta-test follows ``test_maml_point.py`` / ``test_maml_cheetah.py``: 40 held-out tasks, a fresh
batch of trajectories per step (4,000 steps: 40 trajectories in 2D navigation, 20 in locomotion;
ant direction 8,000 steps, 40 trajectories), the
first step at the training lr and later ones at half of it; the original evaluated each task in its
own process with its own seed, here all tasks and methods share one seeded batch. With
``sampling=steps`` training and meta-test (``eval``, ``adapt``) collect each task's samples by the
original's step budget, ``trajectories`` (or ``eval_trajectories``) x horizon completed steps
(``fastmaml.rl.sampler``); eval's report then gives the budget and the mean number of trajectories
per task.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import time
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor
from tqdm.auto import tqdm

from fastmaml.config import (
    check_finite,
    check_hidden,
    check_seed,
    check_task_count,
    protocol_overrides,
    to_dict,
)
from fastmaml.core.functional import Params
from fastmaml.engine import checkpoint
from fastmaml.engine.distributed import Cluster, check_device, device_for, init_from_env, launched_world_size
from fastmaml.engine.evaluate import EVAL_SEED, check_finite_report, mean_ci95
from fastmaml.engine.evaluate import per_task as rounded_per_task
from fastmaml.engine.run_dir import (
    CHECKPOINT,
    EVAL,
    METRICS,
    check_checkpoint,
    checkpoint_file,
    checkpoint_label,
    first_save,
    has_checkpoint,
    keep_snapshot,
    read_config,
    read_metrics,
    snapshot_due,
    state_problem,
    write_eval,
)
from fastmaml.engine.stopping import StopRequest, stop_now, stopped
from fastmaml.engine.trainer import fit_in_run_dir, log_row
from fastmaml.errors import CheckpointError, ConfigError, NonFiniteLossError, iterations_span, kept_checkpoint
from fastmaml.rl.envs import ENV_NAMES, make_batch
from fastmaml.rl.maml_trpo import BASELINE_FITS, STRATEGIES, adaptation_returns, maml_trpo_step
from fastmaml.rl.policy import CONTEXT_KEYS, MIN_LOG_STD, GaussianMLPPolicy
from fastmaml.rl.sampler import SAMPLINGS
from fastmaml.rl.trpo import HVPS, ORIGINAL_FD_BASE_EPS

log = logging.getLogger(__name__)

TRAINED_BASELINES = ("pretrained", "oracle")
METHODS = ("maml", "context", "none")  # the meta-learner: MAML, the context-vector baseline, or none
DIRECTIONS = {"forward": 1.0, "backward": -1.0}  # goals of the direction tasks
SEED_OFFSETS = {"maml": 0, "context": 0, "pretrained": 1_000_003, "oracle": 2_000_003, "random": 3_000_017}


@dataclasses.dataclass
class RLConfig:
    """Meta-RL settings (paper section 5.3 and cbfinn/maml_rl; presets in ``fastmaml.experiments.rl``)."""

    env: str = "nav2d"  # nav2d | cheetah-vel | cheetah-dir | ant-vel | ant-dir
    method: str = "maml"  # maml | context (the paper's context-vector baseline: the inner step adapts c only) | none (baselines only)
    context_dim: int = 10  # entries of the context vector c (method=context); the tasks here have <= 2 parameters
    inner_lr: float = 0.1  # α of the REINFORCE inner step (0.5 for 2D navigation, as the original)
    inner_steps: int = 1  # inner steps at meta-train, each on freshly sampled trajectories
    first_order: bool = False  # treat the inner gradient as a constant in the meta-update
    meta_batch_size: int = 40  # tasks per meta-iteration (20 for 2D navigation)
    trajectories: int = 20  # per task, before and after adaptation (the original's fast_batch_size)
    sampling: str = "trajectories"  # trajectories (that many per task) | steps (a budget of trajectories x horizon steps)
    horizon: int = 0  # steps per episode (0: the environment's, 100 or 200)
    discount: float = 0.99
    gae_lambda: float = 1.0
    max_kl: float = 0.01  # TRPO's step size δ
    cg_iters: int = 10
    cg_damping: float = 1e-5
    hvp: str = "exact"  # exact (double backprop) | finite_difference (the original's)
    hvp_tasks: int = 0  # tasks the KL's Hessian-vector products use (0: all)
    fd_base_eps: float = ORIGINAL_FD_BASE_EPS  # hvp=finite_difference steps ε = fd_base_eps / ‖θ‖ (rl.trpo)
    strategy: str = "auto"  # auto (vmap to sample, loop in the meta-update: faster) | vmap | loop
    baseline_fit: str = "own"  # own (each task's fit) | rllab (upstream rllab's predict-then-fit order)
    hidden: tuple[int, ...] = (100, 100)
    init_std: float = 1.0
    iterations: int = 500
    baselines: tuple[str, ...] = TRAINED_BASELINES  # trained beside MAML; "random" needs no training
    pretrained_lr: float = 0.02  # the pretrained policy's fine-tuning step at meta-test
    random_lr: float = 0.0  # the random initialisation's fine-tuning step at meta-test (0: inner_lr)
    eval_steps: int = 3  # inner steps at meta-test
    eval_tasks: int = 40
    eval_trajectories: int = 20  # per task and step at meta-test
    eval_lr_decay: float = 0.5  # meta-test steps after the first use this x the first step's lr
    seed: int = 0
    log_every: int = 1
    checkpoint_every: int = 10
    snapshot_every: int = 0  # also keep snapshots/iteration_NNNNNN.safetensors every N iterations (0: none)
    threads: int = 1  # torch intra-op threads: the sampler's per-step ops are tiny
    sim_threads: int = 1  # threads stepping the MuJoCo robots (same results; pays for the ant, not the cheetah)
    device: str = "cpu"  # where the TRPO meta-update runs (cuda: a GPU); sampling always stays on the CPU (MuJoCo)
    implicit_damping: bool = True  # half-cheetah: MuJoCo's Euler integrates joint damping implicitly (false: explicitly)

    # keys ``fastmaml eval --set`` may change (the meta-test protocol; the rest shape or train the policies)
    EVAL_KEYS: ClassVar[tuple[str, ...]] = (
        "inner_lr", "pretrained_lr", "random_lr", "eval_lr_decay", "eval_trajectories", "baseline_fit",
        "sampling", "discount", "gae_lambda", "threads", "sim_threads",
    )

    @staticmethod
    def execution_keys() -> tuple[str, ...]:
        """Keys beside ``fastmaml.config.EXECUTION_KEYS`` that change how meta-testing runs, not what
        it computes: a report made with them is the run's own and is saved."""
        return ("sim_threads",)

    def validate(self, data: bool = True) -> None:  # data: the interface of TrainConfig.validate (none to read)
        check_finite(self)
        if self.env not in ENV_NAMES:
            raise ConfigError(f"unknown environment {self.env!r}; choose one of {', '.join(ENV_NAMES)}")
        check_hidden(self.hidden)
        check_seed(self.seed)
        if self.method not in METHODS:
            raise ConfigError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.method == "none" and not self.baselines:
            raise ConfigError("method=none trains only the baselines; name at least one (baselines=pretrained,oracle)")
        if self.method == "context" and self.context_dim < 1:
            raise ConfigError(f"context_dim must be >= 1 for method=context, got {self.context_dim}")
        for key in ("inner_lr", "max_kl", "pretrained_lr", "discount", "eval_lr_decay", "fd_base_eps",
                    "init_std"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"{key} must be > 0, got {getattr(self, key)}")
        check_task_count(self.eval_tasks, "eval_tasks")
        twice = sorted({b for b in self.baselines if self.baselines.count(b) > 1})
        if twice:
            raise ConfigError(f"baselines names {twice[0]} twice; list each baseline once")
        for key in ("inner_steps", "meta_batch_size", "trajectories", "cg_iters", "iterations",
                    "eval_trajectories", "log_every", "checkpoint_every", "sim_threads"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be >= 1, got {getattr(self, key)}")
        for key in ("horizon", "hvp_tasks", "eval_steps", "threads", "cg_damping", "random_lr", "snapshot_every"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key} must be >= 0, got {getattr(self, key)}")
        if not 0 <= self.gae_lambda <= 1 or self.discount > 1:
            raise ConfigError(f"need 0 <= gae_lambda <= 1 and discount <= 1, got {self.gae_lambda}, {self.discount}")
        try:
            torch.device(self.device)
        except RuntimeError:
            raise ConfigError(f"device must be cpu, cuda or cuda:N, got {self.device!r}") from None
        if self.hvp not in HVPS:
            raise ConfigError(f"hvp must be one of {', '.join(HVPS)}, got {self.hvp!r}")
        if self.baseline_fit not in BASELINE_FITS:
            raise ConfigError(f"baseline_fit must be one of {', '.join(BASELINE_FITS)}, got {self.baseline_fit!r}")
        if self.sampling not in SAMPLINGS:
            raise ConfigError(f"sampling must be one of {', '.join(SAMPLINGS)}, got {self.sampling!r} (trajectories: "
                              "exactly that many per task; steps: the original's budget of trajectories x horizon steps)")
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        if not self.implicit_damping and not self.env.startswith("cheetah"):
            raise ConfigError(f"implicit_damping=false applies to the half-cheetah (MuJoCo's Euler integrator); "
                              f"{self.env} does not integrate with it, so leave it at true")
        unknown = set(self.baselines) - set(TRAINED_BASELINES)
        if unknown:
            raise ConfigError(f"unknown baselines {sorted(unknown)}; choose from {', '.join(TRAINED_BASELINES)}")


class OracleBatch:
    """A batched environment whose observations carry the task's goal: [obs, goal]."""

    def __init__(self, env) -> None:
        self.env = env
        self.goal_dim = math.prod(env.goal_shape)
        self.obs_dim, self.action_dim = env.obs_dim + self.goal_dim, env.action_dim
        self.goal_shape, self.horizon = env.goal_shape, env.horizon
        self.goal_features = torch.empty(0)

    def sample_goals(self, num_tasks: int, generator: torch.Generator) -> Tensor:
        return self.env.sample_goals(num_tasks, generator)

    def reset(self, goals: Tensor, generator: torch.Generator | None = None, rows: slice | None = None) -> Tensor:
        obs = self.env.reset(goals, generator, rows=rows)  # fastmaml's own environments take rows
        goals = torch.as_tensor(goals)[slice(None) if rows is None else rows]
        self.goal_features = goals.reshape(len(obs), self.goal_dim).to(obs.dtype)
        return torch.cat([obs, self.goal_features], dim=1)

    def restart(self, ended: Tensor, generator: torch.Generator | None = None) -> Tensor:
        obs = self.env.restart(ended, generator)
        return torch.cat([obs, self.goal_features[torch.as_tensor(ended, dtype=torch.bool)]], dim=1)

    def stop(self, ended: Tensor) -> None:
        halt = getattr(self.env, "stop", None)  # optional (fastmaml.rl.envs)
        if halt is not None:
            halt(ended)

    def step(self, actions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        obs, reward, done = self.env.step(actions)
        return torch.cat([obs, self.goal_features], dim=1), reward, done


def make_env(config: RLConfig, oracle: bool = False):
    options = {} if config.env == "nav2d" else {"threads": config.sim_threads}  # nav2d steps in torch
    if not config.implicit_damping:
        options["implicit_damping"] = False
    env = make_batch(config.env, **options)
    return OracleBatch(env) if oracle else env


def is_direction_env(env) -> bool:
    """Whether ``env``'s goals are directions ±1 (cheetah-dir, ant-dir; also behind an oracle)."""
    task = getattr(getattr(env, "env", env), "task", None)
    return getattr(task, "goal", None) == "direction"


def by_direction(values: Tensor, goals: Tensor) -> dict[str, Tensor]:
    """``values`` (..., T) of T tasks split by their direction goal: {"forward": (..., T_f), ...}."""
    goals = goals.reshape(len(goals), -1)[:, 0]
    return {name: values[..., goals == sign] for name, sign in DIRECTIONS.items()}


def make_policy(config: RLConfig, env, seed: int, context: bool = False) -> tuple[GaussianMLPPolicy, Params]:
    """The paper's policy for ``env`` (with a ``config.context_dim`` context vector when ``context``)
    and its initial parameters, drawn from ``seed`` alone."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        policy = GaussianMLPPolicy(env.obs_dim, env.action_dim, config.hidden, config.init_std,
                                   context_dim=config.context_dim if context else 0)
    return policy, {k: p.detach().clone() for k, p in policy.named_parameters()}


def adapt_keys(method: str) -> tuple[str, ...] | None:
    """The parameters ``method``'s inner step adapts: the context vector, or all of them (None)."""
    return CONTEXT_KEYS if method == "context" else None


def _step_kwargs(config: RLConfig) -> dict[str, Any]:
    return {
        "meta_batch_size": config.meta_batch_size, "trajectories": config.trajectories, "inner_lr": config.inner_lr,
        "first_order": config.first_order, "horizon": config.horizon or None, "discount": config.discount,
        "gae_lambda": config.gae_lambda, "max_kl": config.max_kl, "damping": config.cg_damping,
        "cg_iters": config.cg_iters, "hvp": config.hvp, "hvp_tasks": config.hvp_tasks, "strategy": config.strategy,
        "update_device": config.device, "baseline_fit": config.baseline_fit,
        "fd_base_eps": config.fd_base_eps, "sampling": config.sampling,
    }


class RLTrainer:
    """Owns the environments, policies, RNG streams and run folder of one meta-RL run."""

    def __init__(self, config: RLConfig, run_dir: Path, cluster: Cluster = Cluster()) -> None:
        self.config, self.run_dir, self.cluster = config, Path(run_dir), cluster
        self.method = config.method  # the meta-learner's name: maml, context or none
        self.learners = [*([] if self.method == "none" else [self.method]), *config.baselines]
        self.envs = {name: make_env(config, oracle=name == "oracle") for name in self.learners}
        self.policies, self.params, self.generators = {}, {}, {}
        for name in self.learners:
            seed = config.seed + SEED_OFFSETS[name]
            self.policies[name], self.params[name] = make_policy(config, self.envs[name], seed, name == "context")
            self.generators[name] = torch.Generator().manual_seed(config.seed + SEED_OFFSETS[name])
        self.step, self.elapsed = 0, 0.0
        self.rows: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ state
    def state(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        tensors = {f"{name}/{k}": v for name in self.learners for k, v in self.params[name].items()}
        tensors.update({f"rng/{name}": g.get_state() for name, g in self.generators.items()})
        meta = {"experiment": "rl", "config": to_dict(self.config), "step": self.step, "elapsed_s": self.elapsed,
                "metrics": self.rows}
        return tensors, meta

    def restore(self, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
        problem = state_problem(meta, "rl")
        if problem:  # fit_in_run_dir says the checkpoint does not hold a run's full state, and what to do
            raise ValueError(problem)
        for name in self.learners:
            missing = [k for k in self.params[name] if f"{name}/{k}" not in tensors]
            if missing:
                raise CheckpointError(f"the checkpoint has no {name} policy ({missing[0]}); start a new run")
            wrong = [k for k, v in self.params[name].items() if tensors[f"{name}/{k}"].shape != v.shape]
            if wrong:
                raise CheckpointError(
                    f"the {name} policy in {self.run_dir}'s checkpoint does not fit the policy its config.json "
                    f"describes ({wrong[0]}: {tuple(tensors[f'{name}/{wrong[0]}'].shape)} saved, "
                    f"{tuple(self.params[name][wrong[0]].shape)} expected); was config.json edited after "
                    "training? Restore it, or start a new run"
                )
            self.params[name] = {k: tensors[f"{name}/{k}"].clone() for k in self.params[name]}
            self.generators[name].set_state(tensors[f"rng/{name}"])
        self.step, self.elapsed, self.rows = meta["step"], meta["elapsed_s"], meta["metrics"]

    def save(self) -> None:
        checkpoint.save(self.run_dir / CHECKPOINT, *self.state())

    # ------------------------------------------------------------------ one iteration
    def iteration(self) -> dict[str, float]:
        """One meta-update of MAML (or the context-vector baseline) and one TRPO update of each trained
        baseline."""
        values: dict[str, float] = {}
        for name in self.learners:
            kwargs = _step_kwargs(self.config)
            kwargs["inner_steps"] = self.config.inner_steps if name == self.method else 0
            if self.cluster.active:  # this process's tasks; sums over the processes
                kwargs.update(rows=self.cluster.rows(self.config.meta_batch_size), all_sum=self.cluster.all_sum)
                kwargs["update_device"] = device_for(self.config.device)
            self.params[name], stats = maml_trpo_step(
                self.envs[name], self.policies[name], self.params[name], self.generators[name],
                adapt_keys=adapt_keys(name), **kwargs
            )
            keys = {0: "return_pre", len(stats.returns) - 1: "return_post"} if name == self.method else {0: f"{name}_return"}
            for step, key in keys.items():
                values[key] = stats.returns[step]
                if is_direction_env(self.envs[name]):  # a direction absent from this meta-batch is not logged
                    for direction, returns in by_direction(stats.task_returns[step], stats.goals).items():
                        if returns.numel():
                            values[f"{key}_{direction}"] = returns.mean().item()
            if name == self.method:
                values.update(loss_before=stats.trpo.loss_before, loss_after=stats.trpo.loss_after,
                              kl=stats.trpo.kl_after, step_fraction=stats.trpo.step_fraction)
            if "log_std" in self.params[name]:  # the policy's action noise: it bounds how noisy a policy gradient is
                std_key = "policy_std" if name == self.method else f"{name}_policy_std"
                values[std_key] = self.params[name]["log_std"].clamp_min(MIN_LOG_STD).exp().mean().item()
            values[f"{name}_finite"] = float(all(torch.isfinite(p).all() for p in self.params[name].values()))
        return values

    # ------------------------------------------------------------------ loop
    def fit(self, progress: bool = True, stop: StopRequest | None = None) -> dict[str, Any]:
        """Meta-train to ``config.iterations``; ``stop`` as for the supervised trainer's ``fit``."""
        c = self.config
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}  # iterations that logged each key (a direction can be absent from one)
        since, last_good = self.step, self.step
        main = self.cluster.is_main  # every process has the same metrics; rank 0 shows, logs and saves them
        bar = tqdm(total=c.iterations, initial=self.step, disable=not (progress and main) or self.step >= c.iterations,
                   desc=f"rl {c.env}", dynamic_ncols=True, mininterval=0.5)
        started = time.perf_counter()
        with open(self.run_dir / METRICS, "a") if main else contextlib.nullcontext() as metrics_file:
            while self.step < c.iterations:
                try:
                    logged = self.iteration()
                except NonFiniteLossError as error:  # the baseline fit met NaN returns: say what the run kept
                    bar.close()
                    raise NonFiniteLossError(
                        f"{error} (at iteration {self.step + 1}); training stopped and "
                        f"{kept_checkpoint(self.run_dir, last_good, first_save(c))}"
                    ) from None
                for key, value in logged.items():
                    sums[key] = sums.get(key, 0.0) + value
                    counts[key] = counts.get(key, 0) + 1
                self.step += 1
                bar.update(1)
                log_now = self.step % c.log_every == 0 or self.step == c.iterations
                snapshot_now = snapshot_due(self.step, c.snapshot_every)
                save_now = self.step % c.checkpoint_every == 0 or self.step == c.iterations or snapshot_now
                stopping = stop_now(stop, self.cluster, log_now or save_now)
                if not (log_now or save_now or stopping):
                    continue
                save_now = save_now or stopping
                means = {k: v / counts[k] for k, v in sums.items()}
                bad = [k for k, v in means.items() if not math.isfinite(v) or (k.endswith("_finite") and v < 1)]
                if bad:
                    bar.close()
                    what = (f"the {bad[0].removesuffix('_finite')} policy's parameters" if bad[0].endswith("_finite")
                            else bad[0])
                    raise NonFiniteLossError(
                        f"{what} became NaN or infinite {iterations_span(since + 1, self.step)}; training "
                        f"stopped and {kept_checkpoint(self.run_dir, last_good, first_save(c))}. "
                        "Lower inner_lr or max_kl, then start a new run."
                    )
                now = time.perf_counter()
                self.elapsed += now - started
                started = now
                row = {"step": self.step, **{k: v for k, v in means.items() if not k.endswith("_finite")},
                       "elapsed_s": round(self.elapsed, 3)}
                self.rows.append(row)
                if main:
                    metrics_file.write(json.dumps(row) + "\n")
                    metrics_file.flush()
                    shown = {"pre": "return_pre", "post": "return_post", **{b: f"{b}_return" for b in c.baselines}}
                    bar.set_postfix({label: f"{row[key]:.2f}" for label, key in shown.items() if key in row})
                    log_row(row)
                sums, counts, since = {}, {}, self.step
                if save_now:
                    if main:
                        self.save()
                        if snapshot_now:
                            keep_snapshot(self.run_dir, self.step)
                    last_good = self.step
                if stopping and self.step < c.iterations:
                    bar.close()
                    raise stopped(stop, self.run_dir, self.step)
        bar.close()
        return {"step": self.step, "elapsed_s": self.elapsed, "best": None}


def train(
    preset, config: RLConfig, run_dir: str | Path, *, resume: bool = False, progress: bool = True
) -> dict[str, Any]:
    """Meta-train ``config`` into ``run_dir`` (or continue it with ``resume``); the CLI's ``train``."""
    run_dir = Path(run_dir)
    config.validate()
    if launched_world_size() > 1:
        check_splittable(config)
    check_device(config.device)
    if config.threads:
        torch.set_num_threads(config.threads)
    cluster = init_from_env(config.device, config.meta_batch_size)
    return fit_in_run_dir(run_dir, preset.name, config, cluster, lambda: RLTrainer(config, run_dir, cluster),
                          resume=resume, progress=progress)


def check_splittable(config: RLConfig) -> None:
    """The settings a run split over torchrun's processes cannot have, each with what to do."""
    if config.baseline_fit == "rllab":
        raise ConfigError("baseline_fit=rllab chains each task's baseline to the task before it, so it needs every "
                          "task in one process; train it without torchrun or with baseline_fit=own")
    if 0 < config.hvp_tasks < config.meta_batch_size:
        raise ConfigError("hvp_tasks (the KL of the first tasks only) needs every task in one process; under "
                          "torchrun the Hessian-vector products are already split over the processes, so leave "
                          "hvp_tasks at 0")


# ---------------------------------------------------------------------- meta-test
def load_policies(
    run_dir: Path, config: RLConfig, which: str | int = "checkpoint"
) -> tuple[dict[str, Any], dict[str, Any]]:
    """{method: (env, policy, params)} for the trained learners of a run (its latest checkpoint, or
    the snapshot of iteration ``which``) and the random initialisation (the plain policy, every
    parameter fine-tuned, also in a context-vector run)."""
    tensors, meta, path = checkpoint.load_latest(checkpoint_file(run_dir, which))
    check_checkpoint(run_dir, meta, path, "rl")
    trainer = RLTrainer(config, run_dir)
    trainer.restore(tensors, meta)
    methods = {name: (trainer.envs[name], trainer.policies[name], trainer.params[name]) for name in trainer.learners}
    env = trainer.envs.get(trainer.method) or make_env(config)
    methods["random"] = (env, *make_policy(config, env, config.seed + SEED_OFFSETS["random"]))
    order = [*METHODS, "pretrained", "random", "oracle"]
    return {m: methods[m] for m in order if m in methods}, meta


NO_BEST = "meta-RL runs keep no best checkpoint (there is no validation); drop --best"


def prepare_meta_test(
    run_dir: Path, config: RLConfig, steps: int | None, which: str | int = "checkpoint"
) -> tuple[int, dict[str, Any], dict[str, Any]]:
    """For eval and adapt: the number of meta-test steps (``eval_steps`` unless given; checked), and,
    with the run's torch thread count set, its policies and checkpoint meta (:func:`load_policies`)."""
    steps = config.eval_steps if steps is None else steps
    if steps < 0:
        raise ConfigError(f"--steps must be >= 0, got {steps}")
    if config.threads:
        torch.set_num_threads(config.threads)
    return steps, *load_policies(run_dir, config, which)


def meta_test_lrs(config: RLConfig, method: str, steps: int) -> list[float]:
    """``method``'s meta-test step sizes for ``steps`` steps: its first-step lr (``inner_lr``, or
    ``pretrained_lr`` / ``random_lr`` for those baselines), then ``eval_lr_decay`` x that; none for the oracle."""
    if method == "oracle" or steps == 0:
        return []
    lr = {"pretrained": config.pretrained_lr, "random": config.random_lr or config.inner_lr}.get(method, config.inner_lr)
    return [lr] + [lr * config.eval_lr_decay] * (steps - 1)


def meta_test_returns(
    config: RLConfig, method: str, env, policy, params: Params, goals: Tensor, lrs: list[float], seed: int,
    with_paths: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Mean return per task after 0..len(lrs) meta-test steps of ``method`` at ``lrs``, with the run's
    trajectories, sampling, horizon and returns settings and the action noise of ``seed``: (len(lrs) + 1, T);
    ``with_paths``: and the number of trajectories each task got (the same shape)."""
    return adaptation_returns(
        env, policy, params, goals, torch.Generator().manual_seed(seed), trajectories=config.eval_trajectories,
        lrs=lrs, horizon=config.horizon or None, discount=config.discount, gae_lambda=config.gae_lambda,
        strategy=config.strategy, adapt_keys=adapt_keys(method), baseline_fit=config.baseline_fit,
        sampling=config.sampling, with_paths=with_paths,
    )


def evaluate(
    run_dir: str | Path,
    *,
    tasks: int | None = None,
    steps: int | None = None,
    seed: int = EVAL_SEED,
    which: str | int = "checkpoint",
    save: bool = True,
    overrides: list[str] | tuple[str, ...] = (),
    finite: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Average return after 0..steps inner steps on ``tasks`` held-out tasks, per method, mean ± 95% CI
    over tasks; the CLI's ``eval``. Same structure as the supervised report (metric ``return``).
    ``overrides`` (``key=value``, ``RLConfig.EVAL_KEYS`` only) change the meta-test protocol, e.g.
    ``baseline_fit=rllab``; such a report lists them and is not saved to ``eval.json`` (``threads``
    alone changes how it runs, not the protocol, so that report is saved).

    Every method meets the same goals and action-noise stream. The first step uses the method's
    lr (``inner_lr``; ``pretrained_lr`` and ``random_lr`` for those baselines), later ones ``eval_lr_decay`` x
    that, as the original's meta-test script. The oracle is not adapted: its step-0 return is
    repeated at every step. Direction tasks add the metrics ``return_forward`` and ``return_backward``:
    the same returns averaged over the tasks of each direction. ``return`` also keeps ``per_task``
    (after 0..steps steps, one return per task, in the goals' order, 6 significant digits) for the
    paired comparisons of ``fastmaml eval``'s table and ``fastmaml compare``. ``which``: the latest
    checkpoint, or an iteration whose snapshot the run kept (its report is saved beside it,
    ``snapshots/iteration_000100.eval.json``). ``finite``: a NaN or infinite mean return is a
    NonFiniteLossError, before anything is saved (the CLI's ``eval``)."""
    run_dir = Path(run_dir)
    if which == "best":
        raise ConfigError(NO_BEST)
    _, config = read_config(run_dir, overrides)
    tasks = config.eval_tasks if tasks is None else tasks
    check_task_count(tasks)
    steps, methods, meta = prepare_meta_test(run_dir, config, steps, which)
    env = next(iter(methods.values()))[0]
    goals, horizon = env.sample_goals(tasks, torch.Generator().manual_seed(seed)), env.horizon
    results: dict[str, Any] = {}
    # one bar step per method: each samples its tasks' trajectories after 0..steps inner steps
    bar = tqdm(methods.items(), disable=not progress, desc=f"eval rl {config.env}: {tasks} tasks", unit="method",
               dynamic_ncols=True)
    paths: dict[str, list[float]] = {}  # sampling=steps: mean trajectories per task at each step
    for method, (env, policy, params) in bar:
        bar.set_postfix_str(method)
        per_task, counts = meta_test_returns(config, method, env, policy, params, goals,
                                             meta_test_lrs(config, method, steps), seed + 1, with_paths=True)
        paths[method] = [round(c, 2) for c in counts.double().mean(1).expand(steps + 1).tolist()]
        # (steps + 1, tasks), or (1, tasks) for the oracle
        per_task = per_task.expand(steps + 1, -1) if method == "oracle" else per_task
        split = {"": per_task, **({f"_{d}": r for d, r in by_direction(per_task, goals).items() if r.shape[-1]}
                                  if is_direction_env(env) else {})}
        results[method] = {}
        for suffix, returns in split.items():
            mean, ci = mean_ci95(returns.T.double())
            results[method][f"return{suffix}"] = {"mean": mean.tolist(), "ci95": ci.tolist()}
        # every method met the same goals and noise, so two methods (or runs) compare task by task
        results[method]["return"]["per_task"] = rounded_per_task(per_task.T)
    bar.close()
    report = {
        "experiment": f"rl {config.env}",
        "checkpoint": checkpoint_label(which),
        "step": meta["step"],
        "tasks": tasks,
        "steps": steps,
        "seed": seed,
        "trajectories": config.eval_trajectories,
        **({"sampling": "steps", "budget": config.eval_trajectories * (config.horizon or horizon), "paths": paths}
           if config.sampling == "steps" else {}),
        **({"overrides": changed} if (changed := protocol_overrides(overrides, config)) else {}),
        "metrics": results,
    }
    if finite:
        check_finite_report(report)
    if save and not changed:
        write_eval(run_dir, report, which)
    return report


def plot(run_dir: str | Path, tasks: int = 100) -> list[Path]:
    """``plots/learning_curve.png`` (returns vs iteration) and ``plots/return_vs_steps.png`` (from
    ``eval.json``, or a fresh evaluation on ``tasks`` tasks that is not saved); the CLI's ``plot``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fastmaml import plotting
    from fastmaml.engine.plots import plots_folder, saved_report, warn_no_checkpoint

    run_dir = Path(run_dir)
    rows = read_metrics(run_dir)
    if not rows:
        raise CheckpointError(f"{run_dir} has no metrics yet; train it first (fastmaml train rl ... --out {run_dir})")
    out = plots_folder(run_dir)
    steps = [r["step"] for r in rows]
    config = read_config(run_dir)[1]
    env = config.env
    method = {"maml": "MAML", "context": "context vector", "none": ""}[config.method]
    after = f"after {config.inner_steps} inner step{'s' if config.inner_steps > 1 else ''}"  # return_post's
    curves = {"return_pre": f"{method} before adaptation", "return_post": f"{method} {after}",
              "pretrained_return": "pretrained (joint TRPO)", "oracle_return": "oracle (goal observed)"}
    split = any(f"{key}_forward" in r for r in rows for key in curves)  # direction tasks: a second panel
    noise = {"return_pre": "policy_std", "pretrained_return": "pretrained_policy_std",
             "oracle_return": "oracle_policy_std"}  # each policy's action noise, a last panel where logged
    has_noise = any(v in r for r in rows for v in noise.values())
    panels = 1 + split + has_noise
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 4), squeeze=False)
    marker = "o" if len(rows) <= 30 else None  # a short run's few points (one: invisible as a line)
    for i, key in enumerate(k for k in curves if any(k in r for r in rows)):
        color = f"C{i}"
        axes[0, 0].plot(steps, [r.get(key, float("nan")) for r in rows], color=color, label=curves[key], marker=marker,
                        markersize=3)
        for direction, style in (("forward", "-"), ("backward", "--")) if split else ():
            axes[0, 1].plot(steps, [r.get(f"{key}_{direction}", float("nan")) for r in rows], style, color=color,
                            label=f"{curves[key]}, {direction}", marker=marker, markersize=3)
        if has_noise and key in noise and any(noise[key] in r for r in rows):
            label = curves[key].removesuffix(" before adaptation") or "policy"
            axes[0, -1].plot(steps, [r.get(noise[key], float("nan")) for r in rows], color=color, label=label,
                             marker=marker, markersize=3)
    titles = ["learning curve", *(["by direction (dashed: backward tasks)"] if split else [])]
    for ax, title in zip(axes[0], titles):
        ax.set_xlabel("meta-training iteration")
        ax.set_ylabel("average return (training tasks)")
        ax.set_title(f"rl {env}: {title}")
        ax.legend(fontsize=8 if split else None)
    if has_noise:
        ax = axes[0, -1]
        ax.set_xlabel("meta-training iteration")
        ax.set_ylabel("action noise σ (mean over action dimensions)")
        ax.set_title(f"rl {env}: policy action noise (before adaptation)")
        ax.legend(fontsize=8)
    for ax in axes[0]:
        plotting.whole_iterations(ax, steps)
    fig.tight_layout()
    plotting.save_figure(fig, out / "learning_curve.png")
    eval_path = run_dir / EVAL
    if not eval_path.is_file() and not has_checkpoint(run_dir):
        warn_no_checkpoint(run_dir)
        return [out / "learning_curve.png"]
    # a damaged eval.json: one error saying to rewrite it (fastmaml compare's reader)
    report = saved_report(run_dir, rows) if eval_path.is_file() else evaluate(run_dir, tasks=tasks, save=False)
    return [out / "learning_curve.png", plotting.metric_vs_steps(report, out / "return_vs_steps.png")]
