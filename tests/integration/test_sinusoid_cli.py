"""End to end through the CLI: train, eval, plot; MAML must learn something measurable in seconds."""

import json

import pytest

from fastmaml.cli import main

FAST = ["--set", "meta_batch_size=10", "--set", "outer_lr=0.01", "--set", "log_every=50", "--set", "checkpoint_every=200", "--no-progress"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "sinusoid"
    assert main(["train", "sinusoid", "--shots", "10", "--iterations", "600", "--out", str(run), *FAST]) == 0
    return run


def test_train_writes_config_metrics_and_checkpoints(trained_run):
    config = json.loads((trained_run / "config.json").read_text())
    assert config["experiment"] == "sinusoid" and config["config"]["iterations"] == 600
    assert config["config"]["amplitude"] == [0.1, 5.0] and config["config"]["baseline_lr"] == 0.02
    rows = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(50, 601, 50))
    assert rows[-1]["meta_loss"] < rows[0]["meta_loss"]
    assert (trained_run / "checkpoint.safetensors").is_file()
    assert (trained_run / "checkpoint.prev.safetensors").is_file()


def test_eval_json_shows_fast_adaptation_beating_the_pretrained_baseline(trained_run, capsys):
    assert main(["eval", str(trained_run), "--tasks", "200", "--steps", "5", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    maml, pretrained = report["metrics"]["maml"]["mse"], report["metrics"]["pretrained"]["mse"]
    assert len(maml["mean"]) == 6 and len(maml["ci95"]) == 6 and report["tasks"] == 200
    # one inner step helps MAML a lot, and more than it helps the jointly pretrained network
    assert maml["mean"][1] < 0.6 * maml["mean"][0]
    assert maml["mean"][1] < 0.6 * pretrained["mean"][1]
    assert maml["mean"][5] < maml["mean"][1]
    assert json.loads((trained_run / "eval.json").read_text())["metrics"] == report["metrics"]


def test_eval_table_and_plots(trained_run, capsys):
    assert main(["eval", str(trained_run), "--tasks", "20"]) == 0
    out = capsys.readouterr().out
    assert "maml" in out and "pretrained" in out and "±" in out
    assert main(["plot", str(trained_run)]) == 0
    for name in ("learning_curve.png", "metric_vs_steps.png", "adaptation.png"):
        path = trained_run / "plots" / name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def test_presets_lists_sinusoid(capsys):
    assert main(["presets"]) == 0
    assert "sinusoid" in capsys.readouterr().out
