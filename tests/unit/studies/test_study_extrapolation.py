"""extrapolation: every band is scored, and tasks far outside the amplitude range are fitted worse."""

import pytest
import torch

from fastmaml.studies import run_study


def test_quick_study(tmp_path):
    summary = run_study("extrapolation", tmp_path, quick=True)
    bands = summary["results"]["bands"]
    assert [b["axis"] for b in bands] == ["in range"] + ["amplitude"] * 4 + ["phase"] * 4
    inside, far = bands[0], bands[4]
    assert far["amplitude"] == (8.0, 10.0) and far["distance"] == 4.0
    assert far["maml_mse_1"] > 2 * inside["maml_mse_1"]
    assert all(b["pretrained_mse_10"] > 0 and b["maml_nmse_10"] > 0 for b in bands)
    # the remedy: targets divided by each task's support std make the amplitude bands alike
    scaled = [b["scaled_nmse_1"] for b in bands if b["axis"] != "phase"]
    assert max(scaled) < 1.2 * min(scaled) and scaled[-1] < far["maml_nmse_1"]
    assert "scaled targets NMSE 1" in summary["text"]
    headlines = summary["headlines"]
    assert headlines["farthest amplitude band: MAML NMSE after 1 step"] == far["maml_nmse_1"]
    assert headlines["in range: pretrained NMSE after 10 steps"] == inside["pretrained_nmse_10"]


def test_scaled_targets_divide_every_target_of_a_task_by_its_support_std():
    from fastmaml.core import TaskBatch
    from fastmaml.studies.extrapolation import SCALED_METRICS, scale_targets, scaled_mse

    support_y = torch.tensor([[[1.0], [3.0]], [[10.0], [30.0]]])  # std 1.414 and 14.14
    batch = TaskBatch(torch.zeros(2, 2, 1), support_y, torch.zeros(2, 1, 1), torch.tensor([[[2.0]], [[20.0]]]))
    scaled = scale_targets(lambda generator, split, n: batch)(None, "test", 2)
    y, s = scaled.query_y[..., :1], scaled.query_y[..., 1:]
    assert torch.allclose(scaled.support_y[0, :, :1], scaled.support_y[1, :, :1]) and torch.allclose(y[0], y[1])
    assert y[0].item() == pytest.approx(2 / 2**0.5) and s.flatten().tolist() == pytest.approx([2**0.5, 200**0.5])
    assert scaled.support_x is batch.support_x
    # scored in y's units: a prediction off by 1 in scaled units is off by s in y's
    assert SCALED_METRICS["mse"](y + 1, scaled.query_y).item() == pytest.approx((2 + 200) / 2)
    assert SCALED_METRICS["power"](y, scaled.query_y).item() == pytest.approx((4 + 400) / 2)
    assert scaled_mse(y + 1, scaled.query_y).item() == pytest.approx(1.0)


def test_the_normalised_mse_interval_is_that_of_a_ratio_of_two_means():
    """The NMSE's interval was ci95(MSE) / mean(y²): 1.2-3.2x too wide (a review's bootstrap), since
    each task's MSE moves with its power. The delta method gives the ratio's own interval."""
    from fastmaml.studies.common import ratio_ci95

    generator = torch.Generator().manual_seed(0)
    power = 1 + 10 * torch.rand(600, generator=generator, dtype=torch.float64)
    mse = 0.3 * power  # exactly proportional: the ratio is 0.3 on every task, no uncertainty at all
    ratio, half = ratio_ci95(mse, power)
    assert ratio == pytest.approx(0.3) and half == pytest.approx(0.0, abs=1e-12)
    old = 1.96 * mse.std() / 600**0.5 / power.mean()  # the study's interval before: far from zero
    assert old > 0.01
    # and it agrees with a bootstrap of the ratio where the tasks do scatter
    mse = mse * (0.5 + torch.rand(600, generator=generator, dtype=torch.float64))
    ratio, half = ratio_ci95(mse, power)
    picks = torch.randint(0, 600, (2000, 600), generator=generator)
    boot = mse[picks].mean(1) / power[picks].mean(1)
    assert half == pytest.approx(1.96 * boot.std().item(), rel=0.1)
    assert ratio == pytest.approx((mse.mean() / power.mean()).item())
