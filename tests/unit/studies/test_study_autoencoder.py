"""autoencoder: MAML adapts an autoencoder to a family of curves; Omniglot is skipped without its data."""

import pytest

from fastmaml.errors import DataError
from fastmaml.studies import run_study
from fastmaml.studies.autoencoder import QUICK, omniglot_experiment, omniglot_folder


def test_quick_study(tmp_path, monkeypatch):
    monkeypatch.delenv("FASTMAML_OMNIGLOT", raising=False)
    monkeypatch.delenv("FASTMAML_DATA", raising=False)
    summary = run_study("autoencoder", tmp_path, quick=True)
    results = summary["results"]
    assert list(results) == ["sinusoid families"]
    maml, pretrained = results["sinusoid families"]["maml"], results["sinusoid families"]["pretrained"]
    assert maml["mse_5"] < 0.8 * maml["mse_0"]  # a few steps on 5 unlabelled curves help reconstruct the family
    assert maml["mse_1"] < maml["mse_0"] and pretrained["mse_0"] > 0
    assert any("Omniglot part skipped" in n for n in summary["notes"])
    assert (tmp_path / "autoencoder.png").is_file()
    assert summary["headlines"] == {
        f"sinusoid families: {name} MSE after {s} step{'' if s == 1 else 's'}":
            results["sinusoid families"][key][f"mse_{s}"]
        for name, key in (("MAML", "maml"), ("pretrained", "pretrained")) for s in (1, 5)}


def test_missing_omniglot_folder_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="Omniglot not found"):  # run() prints it as the reason for skipping
        omniglot_experiment(tmp_path / "absent", QUICK)


def test_a_wrong_data_folder_given_by_name_fails_before_the_study_runs(tmp_path, monkeypatch):
    # before: the sinusoid part ran, then the Omniglot part was skipped with a note and the study "succeeded"
    monkeypatch.setattr("fastmaml.studies.autoencoder.fit", lambda *a, **k: pytest.fail("the study ran"))
    with pytest.raises(DataError, match="Omniglot not found"):
        run_study("autoencoder", tmp_path, quick=True, data=tmp_path / "absent")


def test_an_out_folder_that_cannot_be_made_is_a_config_error(tmp_path):
    from fastmaml.errors import ConfigError

    (tmp_path / "afile").write_text("")  # before: FileExistsError from mkdir
    with pytest.raises(ConfigError, match="cannot make --out .*afile"):
        run_study("linear", tmp_path / "afile" / "studies", quick=True)


def test_the_omniglot_folder_comes_from_data_then_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("FASTMAML_OMNIGLOT", raising=False)
    monkeypatch.delenv("FASTMAML_DATA", raising=False)
    assert omniglot_folder(None) is None
    monkeypatch.setenv("FASTMAML_DATA", str(tmp_path))  # where train omniglot finds it: <FASTMAML_DATA>/omniglot
    assert omniglot_folder(None) == tmp_path / "omniglot"
    monkeypatch.setenv("FASTMAML_OMNIGLOT", str(tmp_path / "own"))
    assert omniglot_folder(None) == tmp_path / "own"
    assert omniglot_folder(tmp_path / "given") == tmp_path / "given"
