"""linear: the derived optimum of y = θx (exact, closed form) against the meta-learned θ."""

import math

import pytest

from fastmaml.cli import main
from fastmaml.studies.linear import SETTINGS, Setting, derived_optimum


def test_derived_optimum():
    slides = [s for s in SETTINGS if s.x_half_widths == (1.0, 1.0)]
    assert slides and all(derived_optimum(s) == pytest.approx(1.25) for s in slides)  # any α: the mean
    # x ~ U[-1, 1] for θ = 0.5, U[-3, 3] for θ = 2, α = 0.1, K = 10 (worked out by hand in the docstring)
    m2a, m4a, m2b, m4b = 1 / 3, 1 / 5, 3.0, 81 / 5
    w = [m2 * (1 - 0.4 * m2 + 0.04 * (m2**2 + (m4 - m2**2) / 10)) for m2, m4 in ((m2a, m4a), (m2b, m4b))]
    expected = (0.5 * w[0] + 2 * w[1]) / sum(w)
    assert derived_optimum(Setting("", (0.5, 2.0), (1.0, 3.0), 0.1)) == pytest.approx(expected)
    assert expected == pytest.approx(1.4915, abs=1e-3)
    first = derived_optimum(Setting("", (0.5, 2.0), (1.0, 3.0), 0.1, first_order=True))
    assert not math.isclose(first, expected, abs_tol=0.1)


def test_quick_study_through_the_cli(tmp_path, capsys):
    assert main(["study", "linear", "--quick", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "derived θ*" in out and "measured θ" in out
    import json

    results = json.loads((tmp_path / "linear.json").read_text())["results"]
    for row in results["settings"]:
        assert row["measured"] == pytest.approx(row["derived"], abs=0.05), row
    wide = results["wide"]
    assert wide["measured"] == pytest.approx(1.25, abs=0.2)  # θ_i spread over 8.5: a noisy meta-gradient
    steps = [s["median"] for s in wide["steps"].values()]
    assert steps == sorted(steps) and steps[-1] > steps[0] + 5  # farther tasks need more steps
    for s in wide["steps"].values():
        assert s["median"] == s["derived_median"]  # the closed form counts the same steps


def test_unknown_study_exits_2(capsys):
    assert main(["study", "nope", "--quick"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown study 'nope'" in err[0]
    assert main(["study", "linear", "--quick", "--data", "x"]) == 2
    assert "has no option --data" in capsys.readouterr().err
