"""order-activation: the Hessian measures against explicit Hessians, and the quick study end to end."""

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastmaml import MAML, TaskBatch
from fastmaml.studies import run_study
from fastmaml.studies.order_activation import curvature


def test_curvature_matches_the_explicit_hessian():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(1, 4), nn.Tanh(), nn.Linear(4, 1)).double()
    maml = MAML(model, F.mse_loss, inner_lr=0.05)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 10, 1, generator=g, dtype=torch.float64)
    batch = TaskBatch(x[:, :5], torch.sin(3 * x[:, :5]), x[:, 5:], torch.sin(3 * x[:, 5:]))
    measured = curvature(maml, batch, power_iterations=200)

    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])

    def unflatten(v):
        out, i = {}, 0
        for n, s in zip(names, shapes):
            out[n] = v[i : i + s.numel()].view(s)
            i += s.numel()
        return out

    spectral, correction = [], []
    for t in range(3):
        task = batch.task(t)
        support = lambda v: maml.loss(unflatten(v), task.support_x, task.support_y)  # noqa: E731,B023
        hessian = torch.autograd.functional.hessian(support, flat)
        spectral.append(torch.linalg.eigvalsh(hessian).abs().max())
        grad_s = torch.autograd.functional.jacobian(support, flat)
        adapted = flat - 0.05 * grad_s
        query = lambda v: maml.loss(unflatten(v), task.query_x, task.query_y)  # noqa: E731,B023
        g_q = torch.autograd.functional.jacobian(query, adapted)
        correction.append(0.05 * (hessian @ g_q).norm() / g_q.norm())
    assert abs(measured["spectral"] - torch.stack(spectral).mean().item()) < 1e-4 * measured["spectral"]
    assert abs(measured["correction"] - torch.stack(correction).mean().item()) < 1e-8
    assert -1 <= measured["meta_grad_cosine"] < 1 and measured["meta_grad_rel_gap"] > 0


def test_quick_study(tmp_path, monkeypatch):
    import matplotlib.figure

    stamps = []
    original = matplotlib.figure.Figure.savefig
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig",
                        lambda fig, *a, **k: (stamps.append([t.get_text() for t in fig.texts]), original(fig, *a, **k)))
    patched = matplotlib.figure.Figure.savefig
    summary = run_study("order-activation", tmp_path, quick=True)
    # a --quick figure says so at its foot (its 200-iteration bars stood beside the slides' full-budget
    # crosses, unmarked), and the stamp is gone after the study
    assert any("--quick: 200 iterations" in text for texts in stamps for text in texts), stamps
    assert matplotlib.figure.Figure.savefig is patched
    assert "--quick is a smoke run" in summary["text"] and "outer_lr=the experiment default" in summary["text"]
    results = summary["results"]
    assert set(results) == {"relu-second", "relu-first", "sigmoid-second", "sigmoid-first"}
    for r in results.values():
        assert 0 < r["mse_1"] < 10 and r["ms_per_iteration"] > 0
    # the slides say a ReLU network's Hessian is ~0, so first order drops nothing; it is not zero
    relu = results["relu-second"]["curvature"]
    assert relu["correction"] > 0.01 and relu["spectral"] > 1 and relu["meta_grad_cosine"] < 0.999
    saved = json.loads((tmp_path / "order-activation.json").read_text())
    assert saved["quick"] and saved["machine"]["cpu_count"] >= 1 and len(saved["tables"]) == 2
    assert (tmp_path / "order-activation.png").read_bytes()[:4] == b"\x89PNG"
    assert "slides MSE" in summary["text"] and "0.1931" in summary["text"]
    headlines = saved["headlines"]  # what --seeds summarises: read from the right rows
    assert headlines["relu: first minus second order MSE after 1 step, paired"] == pytest.approx(
        results["relu-first"]["mse_1"] - results["relu-second"]["mse_1"], rel=1e-4, abs=1e-6)
    assert headlines["sigmoid-second: α‖H g_q‖/‖g_q‖ (what first order drops)"] == \
        results["sigmoid-second"]["curvature"]["correction"]
