"""extrapolation: every band is scored, and tasks far outside the amplitude range are fitted worse."""

from fastmaml.studies import run_study


def test_quick_study(tmp_path):
    summary = run_study("extrapolation", tmp_path, quick=True)
    bands = summary["results"]["bands"]
    assert [b["axis"] for b in bands] == ["in range"] + ["amplitude"] * 4 + ["phase"] * 4
    inside, far = bands[0], bands[4]
    assert far["amplitude"] == (8.0, 10.0) and far["distance"] == 4.0
    assert far["maml_mse_1"] > 2 * inside["maml_mse_1"]
    assert all(b["pretrained_mse_10"] > 0 and b["maml_nmse_10"] > 0 for b in bands)
    headlines = summary["headlines"]
    assert headlines["farthest amplitude band: MAML NMSE after 1 step"] == far["maml_nmse_1"]
    assert headlines["in range: pretrained NMSE after 10 steps"] == inside["pretrained_nmse_10"]
