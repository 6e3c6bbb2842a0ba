"""Meta-RL through the CLI: a 2D-navigation run of about a minute must adapt measurably; eval's JSON
and table, plots, exact resume and the errors a user can cause."""

import json

import pytest
import torch

from fastmaml.cli import main
from fastmaml.engine import checkpoint
from fastmaml.engine.run_dir import read_config
from fastmaml.errors import CheckpointError

# about a minute on a busy 2-core CPU: 8 meta-iterations of 10 tasks x 10 trajectories (paper: 100 x 20 x 20)
SMALL = ["--set", "meta_batch_size=10", "--set", "trajectories=10", "--no-progress"]
TINY = ["--set", "meta_batch_size=3", "--set", "trajectories=3", "--set", "horizon=30", "--no-progress"]


@pytest.fixture(scope="module")
def nav2d_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("rl") / "nav2d"
    assert main(["train", "rl", "--env", "nav2d", "--iterations", "8", "--out", str(run), *SMALL]) == 0
    return run


def rows(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_training_adapts_post_update_return_beats_pre_update(nav2d_run):
    config = json.loads((nav2d_run / "config.json").read_text())
    assert config["experiment"] == "rl" and config["config"]["env"] == "nav2d"
    assert config["config"]["inner_lr"] == 0.5 and config["config"]["baselines"] == ["pretrained", "oracle"]
    metrics = rows(nav2d_run)
    assert [r["step"] for r in metrics] == list(range(1, 9))
    assert all(0 < r["kl"] <= 0.01 and r["loss_after"] < r["loss_before"] for r in metrics)
    last = metrics[-3:]
    pre = sum(r["return_pre"] for r in last) / 3
    post = sum(r["return_post"] for r in last) / 3
    # calibrated: after 8 iterations post ≈ pre + 15 to + 20 (one inner step at the initialisation: + 6 to + 10)
    assert post > pre + 8, (pre, post)
    assert metrics[-1]["return_pre"] > metrics[0]["return_pre"]  # the meta-learned start improves too
    for key in ("pretrained_return", "oracle_return", "elapsed_s"):
        assert key in metrics[-1]
    # each policy's action noise after the last update, as its checkpoint holds it (initialised at 1.0)
    tensors, _ = checkpoint.load(nav2d_run / "checkpoint.safetensors")
    for name, key in (("maml", "policy_std"), ("pretrained", "pretrained_policy_std"),
                      ("oracle", "oracle_policy_std")):
        assert metrics[-1][key] == pytest.approx(tensors[f"{name}/log_std"].exp().mean().item(), rel=1e-6)
        assert metrics[0][key] != 1.0


def test_eval_json_and_table(nav2d_run, capsys):
    assert main(["eval", str(nav2d_run), "--tasks", "20", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["tasks"] == 20 and report["steps"] == 3 and report["step"] == 8
    assert list(report["metrics"]) == ["maml", "pretrained", "random", "oracle"]
    for method in report["metrics"].values():
        assert set(method) == {"return"}
        assert len(method["return"]["mean"]) == len(method["return"]["ci95"]) == 4
        assert all(c >= 0 for c in method["return"]["ci95"])
    maml = report["metrics"]["maml"]["return"]["mean"]
    assert maml[1] > maml[0] + 10  # one inner step helps a lot
    oracle = report["metrics"]["oracle"]["return"]["mean"]
    assert oracle == [oracle[0]] * 4  # not adapted
    for method in report["metrics"].values():  # per-task returns, for paired comparisons
        per_task = torch.tensor(method["return"]["per_task"], dtype=torch.float64)
        assert per_task.shape == (4, 20)
        # kept to 6 significant digits, as the supervised presets' (eval.json stays small)
        assert all(float(f"{v:.6g}") == v for v in per_task.flatten().tolist())
        torch.testing.assert_close(per_task.mean(dim=1), torch.tensor(method["return"]["mean"], dtype=torch.float64),
                                   rtol=1e-5, atol=1e-6)
    assert json.loads((nav2d_run / "eval.json").read_text())["metrics"] == report["metrics"]

    assert main(["eval", str(nav2d_run), "--tasks", "5", "--steps", "1"]) == 0
    table = capsys.readouterr().out
    assert "return:" in table and "maml" in table and "random" in table and "±" in table
    assert "maml minus each method, task by task on the same tasks (paired)" in table
    assert "maml - pretrained" in table and "maml - oracle" in table


def test_eval_set_changes_the_meta_test_protocol_only(nav2d_run, capsys):
    # (an eval.json of more tasks, from an earlier test, would be kept against this smaller protocol)
    (nav2d_run / "eval.json").unlink(missing_ok=True)
    assert main(["eval", str(nav2d_run), "--tasks", "6", "--steps", "1", "--json"]) == 0
    plain = json.loads(capsys.readouterr().out)
    saved = (nav2d_run / "eval.json").read_text()
    args = ["eval", str(nav2d_run), "--tasks", "6", "--steps", "1", "--json", "--set", "baseline_fit=rllab"]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["overrides"] == ["baseline_fit=rllab"]
    for method in ("maml", "pretrained", "random", "oracle"):
        before, changed = plain["metrics"][method]["return"]["mean"], report["metrics"][method]["return"]["mean"]
        assert changed[0] == pytest.approx(before[0])  # the same goals, noise and initialisations
        if method != "oracle":  # the first step's advantages now use the zero baseline: another step
            assert changed[1] != pytest.approx(before[1])
    assert (nav2d_run / "eval.json").read_text() == saved
    # threads changes how it runs, not the protocol: the same figures, saved
    assert main(["eval", str(nav2d_run), "--tasks", "6", "--steps", "1", "--json", "--set", "threads=1"]) == 0
    captured = capsys.readouterr()
    threads = json.loads(captured.out)
    assert "overrides" not in threads and "not saved" not in captured.err
    assert threads["metrics"]["maml"]["return"]["mean"] == pytest.approx(plain["metrics"]["maml"]["return"]["mean"])
    assert json.loads((nav2d_run / "eval.json").read_text())["metrics"] == threads["metrics"]
    assert main(["eval", str(nav2d_run), "--set", "hidden=8,8"]) == 2
    assert "eval --set cannot change 'hidden'" in capsys.readouterr().err
    assert main(["eval", str(nav2d_run), "--split", "val"]) == 2
    assert "--split val applies to the supervised presets" in capsys.readouterr().err


def test_plot_writes_learning_curve_and_return_vs_steps(nav2d_run, capsys):
    assert main(["plot", str(nav2d_run)]) == 0
    for name in ("learning_curve.png", "return_vs_steps.png"):
        path = nav2d_run / "plots" / name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def test_the_learning_curve_names_the_inner_steps_return_post_was_logged_after(tmp_path, monkeypatch):
    """The legend said "after 1 inner step" whatever inner_steps was (found by a review)."""
    from fastmaml import plotting

    run = tmp_path / "two"
    assert main(["train", "rl", "--env", "nav2d", "--iterations", "1", "--out", str(run), *TINY,
                 "--set", "inner_steps=2", "--set", "baselines=[]"]) == 0
    legends = []

    def keep(fig, path, **kwargs):
        legends.extend(t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts())
        return path

    monkeypatch.setattr(plotting, "save_figure", keep)
    monkeypatch.setattr(plotting, "metric_vs_steps", lambda report, path: path)
    assert main(["plot", str(run)]) == 0
    assert "MAML after 2 inner steps" in legends and not any("after 1 inner step" in t for t in legends), legends


def test_resume_is_bit_identical(tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    common = ["train", "rl", "--env", "nav2d", *TINY, "--set", "checkpoint_every=1"]
    assert main([*common, "--iterations", "3", "--out", str(full)]) == 0
    assert main([*common, "--iterations", "2", "--out", str(part)]) == 0
    assert main(["train", "--resume", str(part), "--iterations", "3", "--no-progress"]) == 0
    (a, meta_a), (b, meta_b) = (checkpoint.load(run / "checkpoint.safetensors") for run in (full, part))
    assert meta_a["step"] == meta_b["step"] == 3
    assert a.keys() == b.keys() and any(k.startswith("oracle/") for k in a) and "rng/maml" in a
    for key in a:
        assert torch.equal(a[key], b[key]), key
    strip = lambda rs: [{k: v for k, v in r.items() if k != "elapsed_s"} for r in rs]  # noqa: E731
    assert strip(rows(full)) == strip(rows(part))


def test_context_vector_baseline_trains_and_adapts_its_context(tmp_path, capsys):
    """--set method=context: the paper's context-vector baseline in MAML's place, end to end in seconds."""
    run = tmp_path / "context"
    args = ["train", "rl", "--env", "nav2d", "--set", "method=context", "--set", "baselines=", *TINY]
    assert main([*args, "--iterations", "3", "--out", str(run)]) == 0
    config = json.loads((run / "config.json").read_text())["config"]
    assert config["method"] == "context" and config["context_dim"] == 10
    metrics = rows(run)
    assert [r["step"] for r in metrics] == [1, 2, 3]
    assert all(0 < r["kl"] <= 0.01 and r["loss_after"] < r["loss_before"] for r in metrics)
    tensors, _ = checkpoint.load(run / "checkpoint.safetensors")
    assert tensors["context/context"].shape == (10,) and tensors["context/mean.0.weight"].shape == (100, 12)
    capsys.readouterr()
    assert main(["eval", str(run), "--tasks", "20", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert list(report["metrics"]) == ["context", "random"]
    context = report["metrics"]["context"]["return"]["mean"]
    # calibrated on seeds 0-4 at this scale: 3 context steps gain +0.9 to +1.8 (seed 0: +1.1)
    assert len(context) == 4 and context[3] > context[0] + 0.5, context
    # adapt moves the context vector only, and the saved policy reads it back
    from fastmaml.rl.adapt import load_adapted

    out = tmp_path / "context.safetensors"
    assert main(["adapt", str(run), "--goal", "0.2,0.2", "--steps", "1", "--trajectories", "4", "--out", str(out)]) == 0
    policy, params, meta = load_adapted(out)
    assert meta["method"] == "context" and policy.context.shape == (10,)
    assert not torch.equal(params["context"], tensors["context/context"])
    assert all(torch.equal(params[k], tensors[f"context/{k}"]) for k in params if k != "context")


def test_baselines_alone_and_per_direction_returns(tmp_path, capsys):
    """method=none trains only the baselines (here beside an earlier MAML run); direction tasks are
    also logged and evaluated per direction, and the halves average back to the whole."""
    run = tmp_path / "baselines"
    tiny = [*TINY, "--set", "meta_batch_size=6", "--set", "horizon=10"]
    assert main(["train", "rl", "--env", "cheetah-dir", "--set", "method=none", *tiny, "--iterations", "2",
                 "--out", str(run)]) == 0
    tensors, _ = checkpoint.load(run / "checkpoint.safetensors")
    assert {k.split("/")[1] for k in tensors if k.startswith("rng/")} == {"pretrained", "oracle"}
    for row in rows(run):
        assert "return_pre" not in row and "kl" not in row
        for name in ("pretrained", "oracle"):
            halves = [row.get(f"{name}_return_{d}") for d in ("forward", "backward")]
            assert any(h is not None for h in halves)
            if all(h is not None for h in halves):  # 6 tasks: both directions, unless a rare draw
                assert min(halves) - 1e-4 <= row[f"{name}_return"] <= max(halves) + 1e-4
    capsys.readouterr()
    assert main(["eval", str(run), "--tasks", "8", "--steps", "1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert list(report["metrics"]) == ["pretrained", "random", "oracle"]
    goals = torch.randint(0, 2, (8,), generator=torch.Generator().manual_seed(report["seed"])) * 2 - 1
    forward = int((goals == 1).sum())
    assert 0 < forward < 8  # the eval seed's 8 goals hold both directions
    for metrics in report["metrics"].values():
        assert set(metrics) == {"return", "return_forward", "return_backward"}
        for step in range(2):
            whole = metrics["return"]["mean"][step]
            halves = forward * metrics["return_forward"]["mean"][step] + (8 - forward) * metrics["return_backward"]["mean"][step]
            assert whole == pytest.approx(halves / 8, rel=1e-5, abs=1e-4)
    assert main(["plot", str(run)]) == 0  # a second panel per direction; return_vs_steps from eval.json
    for name in ("learning_curve.png", "return_vs_steps.png"):
        assert (run / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_random_initialisation_is_fine_tuned_at_random_lr(tmp_path, capsys):
    """random_lr sets the random baseline's meta-test step (0: inner_lr); the other methods and the
    random policy before adaptation do not change."""
    run = tmp_path / "run"
    assert main(["train", "rl", "--env", "nav2d", *TINY, "--iterations", "1", "--set", "baselines=",
                 "--set", "random_lr=0", "--out", str(run)]) == 0
    reports = []
    for random_lr in (0.0, 5.0):  # a meta-test setting: --set (an edited config.json is refused)
        capsys.readouterr()
        assert main(["eval", str(run), "--tasks", "4", "--steps", "1", "--json", "--set", f"random_lr={random_lr}"]) == 0
        reports.append(json.loads(capsys.readouterr().out)["metrics"])
    (at_inner, maml), (at_5, maml_again) = ((r["random"]["return"]["mean"], r["maml"]) for r in reports)
    assert maml == maml_again and at_inner[0] == at_5[0]
    assert at_inner[1] != at_5[1]


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "rl", "--env", "pong"], "unknown environment 'pong'"),
        (["train", "rl", "--set", "method=none", "--set", "baselines="], "method=none trains only the baselines"),
        (["train", "rl", "--set", "method=anil"], "unknown method 'anil'"),
        (["train", "rl", "--meta-sgd"], "preset 'rl' has no option --meta-sgd"),
        (["train", "rl", "--set", "baselines=random"], "unknown baselines"),
        (["train", "rl", "--env", "ant-dir", "--set", "sim_threads=0"], "sim_threads must be >= 1"),
        pytest.param(["train", "rl", "--device", "cuda"], "sees no CUDA GPU; run on the CPU instead",
                     marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: cuda is valid")),
    ],
)
def test_bad_input_gets_one_line_and_exit_code_2(tmp_path, capsys, args, message):
    assert main([*args, "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("setting,message", [
    ("baseline_fit=rllab", "baseline_fit=rllab chains each task's baseline"),
    ("hvp_tasks=2", "hvp_tasks (the KL of the first tasks only) needs every task in one process"),
])
def test_settings_that_need_one_process_are_refused_under_torchrun(tmp_path, capsys, monkeypatch, setting, message):
    """Split over torchrun's processes, a run cannot chain baselines across tasks or take the KL of
    the first tasks only; it says so on every rank before anything is written."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    run = tmp_path / "run"
    args = ["train", "rl", "--env", "nav2d", *TINY, "--set", setting, "--iterations", "1", "--out", str(run)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not run.exists()


def test_best_checkpoint_is_refused_for_rl(tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", "rl", "--env", "nav2d", *TINY, "--iterations", "1", "--set", "baselines=", "--out", str(run)]
    assert main(args) == 0
    assert main(["eval", str(run), "--best"]) == 2
    assert "no best checkpoint" in capsys.readouterr().err


def greedy_return(policy, params, goal) -> float:
    """Return of the policy's mean action in the gymnasium environment (nav2d is deterministic)."""
    import gymnasium

    import fastmaml.rl.envs  # noqa: F401 - registers the environments
    from fastmaml.rl import action_distribution

    env = gymnasium.make("fastmaml/Nav2d-v0")
    obs, _ = env.reset(seed=0, options={"goal": goal})
    total, done = 0.0, False
    while not done:
        with torch.no_grad():
            mean, _ = action_distribution(policy, params, torch.as_tensor(obs, dtype=torch.float32))
        obs, reward, terminated, truncated, _ = env.step(mean.numpy())
        total, done = total + reward, terminated or truncated
    return total


def test_adapt_takes_the_policy_to_a_new_goal_and_saves_it_for_gymnasium(nav2d_run, tmp_path, capsys):
    from fastmaml.rl.adapt import load_adapted
    from fastmaml.rl.trainer import load_policies

    out = tmp_path / "policy.safetensors"
    assert main(["adapt", str(nav2d_run), "--goal", "0.4,-0.35", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "maml at iteration 8, adapted to goal 0.4,-0.35" in printed and str(out) in printed
    policy, params, meta = load_adapted(out)
    assert meta["goal"] == [0.4, -0.35] and meta["method"] == "maml" and meta["iteration"] == 8
    assert meta["lrs"] == [0.5, 0.25, 0.25] and meta["trajectories"] == 40 and len(meta["return_mean"]) == 4
    assert meta["return_mean"][1] > meta["return_mean"][0] + 10, meta["return_mean"]  # the first step helps a lot
    _, config = read_config(nav2d_run)
    _, _, meta_params = load_policies(nav2d_run, config)[0]["maml"]
    assert params.keys() == meta_params.keys() and not torch.equal(params["mean.0.weight"], meta_params["mean.0.weight"])
    before, after = greedy_return(policy, meta_params, [0.4, -0.35]), greedy_return(policy, params, [0.4, -0.35])
    assert after > before + 5, (before, after)
    # the pretrained baseline, one step, a goal outside the training square: allowed, with a note
    assert main(["adapt", str(nav2d_run), "--goal", "0.7,0", "--method", "pretrained", "--steps", "1",
                 "--trajectories", "5", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "outside the meta-training goals" in printed
    assert load_adapted(out)[2]["method"] == "pretrained" and load_adapted(out)[2]["lrs"] == [0.5]
    # --set changes the step sizes the run adapts with (lrs are recorded in the file)
    assert main(["adapt", str(nav2d_run), "--goal", "0.2,0.1", "--steps", "2", "--trajectories", "3",
                 "--set", "inner_lr=0.25", "--set", "eval_lr_decay=0.5", "--out", str(out)]) == 0
    assert load_adapted(out)[2]["lrs"] == [0.25, 0.125] and "0.125" in capsys.readouterr().out
    with pytest.raises(CheckpointError, match="not an adapted policy"):
        load_adapted(nav2d_run / "checkpoint.safetensors")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--goal", "0.4"], "a nav2d task's goal is x,y in [-0.5, 0.5]^2; give two numbers as x,y"),
        (["--goal", "nan,0"], "give two numbers as x,y"),
        (["--goal", "0.1,0.1", "--method", "oracle"], "the oracle observes its goal and is not adapted"),
        (["--goal", "0.1,0.1", "--method", "context"], "this run can adapt maml, pretrained, random"),
        (["--goal", "0.1,0.1", "--trajectories", "1"], "--trajectories must be >= 2"),
        # the seed was passed to torch unchecked: a traceback past 2^64, and -1 taken as 2^64 - 1
        (["--goal", "0.1,0.1", "--seed", "99999999999999999999999"], "seed must be in [0, 2^63)"),
        (["--goal", "0.1,0.1", "--seed", "-1"], "seed must be in [0, 2^63), got -1"),
        (["--support", "x"], "an rl run adapts to a new --goal by sampling it"),
        ([], "adapt needs --goal for an rl run"),
        (["--goal", "0.1,0.1", "--best"], "keep no best checkpoint"),
        (["--goal", "0.1,0.1", "--set", "hidden=8"], "adapt --set cannot change 'hidden'; keys that change how"),
        (["--goal", "0.1,0.1", "--set", "inner_lr=-1"], "inner_lr must be > 0"),
    ],
)
def test_adapt_errors_for_rl_runs(nav2d_run, tmp_path, capsys, args, message):
    assert main(["adapt", str(nav2d_run), *args, "--out", str(tmp_path / "p.safetensors")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "Traceback" not in err and len(err.splitlines()) == 1
    assert not (tmp_path / "p.safetensors").exists()
    assert main(["adapt", str(nav2d_run), "--goal", "0.1,0.1", "--out", str(tmp_path / "p.csv")]) == 2
    assert "an adapted policy is written as a .safetensors file" in capsys.readouterr().err
    assert main(["adapt", str(nav2d_run), "--goal", "0.1,0.1", "--out", str(tmp_path / "no" / "p.safetensors")]) == 2
    assert "the folder" in capsys.readouterr().err
    checkpoint = nav2d_run / "checkpoint.safetensors"
    before = checkpoint.read_bytes()
    assert main(["adapt", str(nav2d_run), "--goal", "0.1,0.1", "--out", str(checkpoint)]) == 2
    assert "would overwrite a file of the run" in capsys.readouterr().err and checkpoint.read_bytes() == before
    # a goal with a negative x needs no "=" (argparse took -0.1,0.2 for an option)
    assert main(["adapt", str(nav2d_run), "--goal", "-0.1,0.2", "--trajectories", "2", "--steps", "1",
                 "--out", str(tmp_path / "neg.safetensors")]) == 0
    capsys.readouterr()
    (tmp_path / "neg.safetensors").unlink()
    (tmp_path / "dir.safetensors").mkdir()
    assert main(["adapt", str(nav2d_run), "--goal", "0.1,0.1", "--out", str(tmp_path / "dir.safetensors")]) == 2
    assert "is a folder; name a .safetensors file" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["dir.safetensors"]  # no temporary file left behind


@pytest.mark.parametrize("env, goal", [("ant-vel", "1.5"), ("ant-dir", "-1")])
def test_maml_on_ant_trains_evaluates_and_adapts_end_to_end(tmp_path, capsys, env, goal):
    """The ant's 125-dimensional observations through the whole MAML path (second-order TRPO, eval,
    adapt), at a tiny scale; the preset's run is in README."""
    from fastmaml.rl.adapt import load_adapted

    run, out = tmp_path / env, tmp_path / "ant.safetensors"
    tiny = [*TINY, "--set", "meta_batch_size=2", "--set", "horizon=15", "--set", "baselines="]
    assert main(["train", "rl", "--env", env, *tiny, "--iterations", "2", "--out", str(run)]) == 0
    logged = rows(run)
    assert [row["step"] for row in logged] == [1, 2]
    for row in logged:
        assert all(torch.isfinite(torch.tensor(row[k])) for k in ("return_pre", "return_post", "kl"))
        assert 0 <= row["kl"] <= 0.01  # the preset's max KL, which the line search keeps
    capsys.readouterr()
    assert main(["eval", str(run), "--tasks", "2", "--steps", "1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    means = report["metrics"]["maml"]["return"]["mean"]
    assert len(means) == 2 and all(torch.isfinite(torch.tensor(means)))
    # MuJoCo stepped by two threads: how, not what: the same returns, and the report is the run's own
    assert main(["eval", str(run), "--tasks", "2", "--steps", "1", "--json", "--set", "sim_threads=2"]) == 0
    threaded = json.loads(capsys.readouterr().out)
    assert threaded["metrics"] == report["metrics"] and "overrides" not in threaded
    assert main(["train", "--resume", str(run), "--iterations", "3", "--set", "sim_threads=2", "--no-progress"]) == 0
    assert [row["step"] for row in rows(run)] == [1, 2, 3]
    assert main(["adapt", str(run), "--goal", goal, "--steps", "1", "--trajectories", "2", "--out", str(out)]) == 0
    policy, params, meta = load_adapted(out)
    assert meta["goal"] == [float(goal)] and meta["iteration"] == 3 and len(meta["return_mean"]) == 2
    assert params["mean.0.weight"].shape == (100, 125)


def test_snapshots_of_an_rl_run_are_meta_tested_on_their_own(tmp_path, capsys):
    run = tmp_path / "snap"
    assert main(["train", "rl", "--env", "nav2d", *TINY, "--iterations", "2", "--set", "snapshot_every=1",
                 "--out", str(run)]) == 0
    first = run / "snapshots" / "iteration_000001.safetensors"
    assert checkpoint.load(first)[1]["step"] == 1
    capsys.readouterr()
    assert main(["eval", str(run), "--iteration", "1", "--tasks", "3", "--steps", "1", "--json"]) == 0
    snapshot = json.loads(capsys.readouterr().out)
    assert snapshot["step"] == 1 and (run / "snapshots" / "iteration_000001.eval.json").is_file()
    assert main(["eval", str(run), "--tasks", "3", "--steps", "1", "--json"]) == 0
    latest = json.loads(capsys.readouterr().out)
    assert latest["step"] == 2 and json.loads((run / "eval.json").read_text())["step"] == 2
    # one update apart: MAML's returns differ, the untrained random initialisation's do not
    assert snapshot["metrics"]["maml"]["return"]["mean"] != latest["metrics"]["maml"]["return"]["mean"]
    assert snapshot["metrics"]["random"]["return"]["mean"] == latest["metrics"]["random"]["return"]["mean"]
    out = tmp_path / "adapted.safetensors"
    assert main(["adapt", str(run), "--iteration", "1", "--goal", "0.3,-0.2", "--steps", "1", "--out", str(out)]) == 0
    assert out.is_file()
    assert main(["eval", str(run), "--iteration", "3"]) == 2
    assert "no snapshot of iteration 3; it kept iterations 1, 2" in capsys.readouterr().err


def test_a_policy_size_edited_in_the_config_is_one_clear_line(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "rl", "--env", "nav2d", "--iterations", "1", "--set", "baselines=", "--out", str(run),
                 *TINY]) == 0
    saved = json.loads((run / "config.json").read_text())
    saved["config"]["hidden"] = [50, 50]
    (run / "config.json").write_text(json.dumps(saved))
    assert main(["eval", str(run), "--tasks", "2"]) == 2
    err = capsys.readouterr().err.strip()
    # before the config was compared with the checkpoint's: "the maml policy in ... (50, 2) expected"
    assert len(err.splitlines()) == 1 and "does not match the checkpoint" in err and "hidden = [50, 50]" in err, err


def test_sigterm_saves_where_it_stopped_and_resume_is_bit_identical(tmp_path, monkeypatch, capsys):
    """SIGTERM in the middle of iteration 2 (checkpoints every 10): the run saves at 2 and exits 143;
    resumed, it ends as a run never stopped."""
    import os
    import signal

    from fastmaml.rl import trainer as rl_trainer

    full, stopped = tmp_path / "full", tmp_path / "stopped"
    common = ["train", "rl", "--env", "nav2d", *TINY, "--set", "checkpoint_every=10", "--iterations", "3"]
    assert main([*common, "--out", str(full)]) == 0
    original = rl_trainer.RLTrainer.iteration

    def iteration(self):
        if self.step == 1:  # the second iteration
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self)

    monkeypatch.setattr(rl_trainer.RLTrainer, "iteration", iteration)
    capsys.readouterr()
    assert main([*common, "--out", str(stopped)]) == 143
    assert "stopped by SIGTERM at iteration 2, with a checkpoint there" in capsys.readouterr().err
    assert checkpoint.load(stopped / "checkpoint.safetensors")[1]["step"] == 2
    monkeypatch.setattr(rl_trainer.RLTrainer, "iteration", original)
    assert main(["train", "--resume", str(stopped), "--no-progress"]) == 0
    (a, meta_a), (b, meta_b) = (checkpoint.load(run / "checkpoint.safetensors") for run in (full, stopped))
    assert meta_a["step"] == meta_b["step"] == 3
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_plot_of_an_rl_run_with_a_damaged_eval_json_or_plots_file_is_one_line(nav2d_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(nav2d_run, run)
    (run / "eval.json").write_text('{"broken')
    assert main(["plot", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert "eval.json is not a readable eval report" in err and len(err.splitlines()) == 1
    shutil.rmtree(run / "plots", ignore_errors=True)
    (run / "plots").write_text("x")
    assert main(["plot", str(run)]) == 2
    assert "plots is a file, not a folder" in capsys.readouterr().err


def test_adapt_of_an_oracle_only_run_asks_for_method_random(tmp_path, capsys):
    """A run that trained only the oracle has no policy that adapts: adapt's default used to be the
    untrained random initialisation, silently; now it says so and --method random asks for that."""
    run = tmp_path / "oracle"
    assert main(["train", "rl", "--env", "nav2d", "--iterations", "1", "--set", "method=none",
                 "--set", "baselines=oracle", "--out", str(run), *TINY]) == 0
    capsys.readouterr()
    out = tmp_path / "p.safetensors"
    assert main(["adapt", str(run), "--goal", "0.1,0.1", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "trained no policy that adapts" in err and "--method random" in err and len(err.splitlines()) == 1
    assert not out.exists()
    assert main(["adapt", str(run), "--goal", "0.1,0.1", "--method", "random", "--steps", "1",
                 "--trajectories", "2", "--out", str(out)]) == 0
    from fastmaml.rl.adapt import load_adapted

    assert load_adapted(out)[2]["method"] == "random"


def test_adapt_of_a_run_meta_tested_with_one_trajectory_names_that_setting(tmp_path, capsys):
    """The error named --trajectories, which the user had not given: the run's eval_trajectories was 1."""
    run = tmp_path / "one"
    assert main(["train", "rl", "--env", "nav2d", "--iterations", "1", "--set", "eval_trajectories=1", "--out",
                 str(run), *SMALL]) == 0
    assert main(["adapt", str(run), "--goal", "0.1,0.1", "--out", str(tmp_path / "p.safetensors")]) == 2
    assert "this run meta-tests with eval_trajectories=1; adapting needs 2 or more" in capsys.readouterr().err
    assert main(["adapt", str(run), "--goal", "0.1,0.1", "--trajectories", "2", "--steps", "1",
                 "--out", str(tmp_path / "p.safetensors")]) == 0


def test_eval_refuses_a_config_edited_since_the_checkpoint(nav2d_run, tmp_path, capsys):
    """eval meta-tested with a hand-edited config.json's inner_lr and saved it as the run's report."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(nav2d_run, run)
    (run / "eval.json").unlink(missing_ok=True)
    saved = json.loads((run / "config.json").read_text())
    saved["config"]["inner_lr"] = 2.0
    (run / "config.json").write_text(json.dumps(saved))
    capsys.readouterr()
    assert main(["eval", str(run), "--tasks", "2", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "config.json does not match the checkpoint checkpoint.safetensors (inner_lr = 2.0 in config.json, " \
        "0.5 in the checkpoint)" in err and len(err.splitlines()) == 1
    assert not (run / "eval.json").exists()


@pytest.mark.parametrize("command", ["resume", "eval"])
def test_an_rl_checkpoint_whose_metadata_was_edited_is_one_line(nav2d_run, tmp_path, command, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(nav2d_run, run)
    for path in run.glob("checkpoint*.safetensors"):
        tensors, meta = checkpoint.load(path)
        checkpoint.save(path, tensors, {**meta, "step": "8"}, keep_previous=False)
    args = (["train", "--resume", str(run), "--iterations", "9", "--no-progress"] if command == "resume"
            else ["eval", str(run), "--tasks", "2", "--no-progress"])
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "does not hold a run's full state" in err and 'step = "8", not an iteration count' in err, err
    assert len(err.splitlines()) == 1


def test_step_budget_sampling_trains_evaluates_and_adapts(tmp_path, capsys, monkeypatch):
    """--set sampling=steps: saved in config.json, used in training, at eval and by adapt; eval --set
    switches it either way as a changed meta-test protocol (not saved)."""
    from fastmaml.rl.adapt import load_adapted
    from fastmaml.rl.envs import nav2d

    monkeypatch.setattr(nav2d, "GOAL_TOLERANCE", 0.15)  # random walks reach goals: more, shorter paths
    run, plain = tmp_path / "steps", tmp_path / "plain"
    tiny = [*TINY, "--iterations", "2", "--set", "baselines=oracle"]
    assert main(["train", "rl", "--env", "nav2d", *tiny, "--set", "sampling=steps", "--out", str(run)]) == 0
    assert json.loads((run / "config.json").read_text())["config"]["sampling"] == "steps"
    assert [r["step"] for r in rows(run)] == [1, 2]
    assert all(torch.isfinite(torch.tensor([r["return_pre"], r["return_post"], r["kl"]])).all() for r in rows(run))
    capsys.readouterr()
    assert main(["eval", str(run), "--tasks", "4", "--steps", "1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["sampling"] == "steps" and report["trajectories"] == 40 and "overrides" not in report
    assert report["budget"] == 40 * 30  # eval_trajectories x horizon
    assert list(report["paths"]) == ["maml", "random", "oracle"]
    counts = [c for method in report["paths"].values() for c in method]
    assert all(c >= 40 for c in counts) and max(counts) > 40, report["paths"]  # K slots, more where episodes end
    assert json.loads((run / "eval.json").read_text())["sampling"] == "steps"
    assert main(["eval", str(run), "--tasks", "4", "--steps", "1"]) == 0
    assert "a budget of 1200 steps per task and step (sampling=steps; mean trajectories per task: maml" in (
        capsys.readouterr().out)
    assert main(["eval", str(run), "--tasks", "4", "--steps", "1", "--json", "--set", "sampling=trajectories"]) == 0
    changed = json.loads(capsys.readouterr().out)
    assert changed["overrides"] == ["sampling=trajectories"] and "paths" not in changed
    assert changed["metrics"]["maml"]["return"]["mean"] != report["metrics"]["maml"]["return"]["mean"]
    out = tmp_path / "adapted.safetensors"
    assert main(["adapt", str(run), "--goal", "0.3,-0.2", "--steps", "1", "--out", str(out)]) == 0
    assert "trajectories at steps 0..1: sampling=steps" in capsys.readouterr().out
    meta = load_adapted(out)[2]
    assert meta["sampling"] == "steps" and len(meta["trajectories"]) == len(meta["return_mean"]) == 2
    assert min(meta["trajectories"]) >= 40
    # a run trained with K trajectories, meta-tested with the step budget
    assert main(["train", "rl", "--env", "nav2d", *tiny, "--out", str(plain)]) == 0
    capsys.readouterr()
    assert main(["eval", str(plain), "--tasks", "4", "--steps", "1", "--json", "--set", "sampling=steps"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["overrides"] == ["sampling=steps"] and report["sampling"] == "steps"
    assert main(["train", "rl", "--env", "nav2d", *tiny, "--set", "sampling=paths", "--out", str(tmp_path / "x")]) == 2
    assert "sampling must be one of trajectories, steps, got 'paths'" in capsys.readouterr().err
