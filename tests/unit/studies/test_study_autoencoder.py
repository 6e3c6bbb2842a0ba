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


def test_the_omniglot_part_records_its_own_budget(tmp_path, monkeypatch):
    """NAME.json's "budget" is the sinusoid part's; the Omniglot part's (another iteration count,
    task count and meta-batch) was only in a table cell."""
    from fastmaml.studies import autoencoder

    monkeypatch.setattr(autoencoder, "omniglot_folder", lambda data: tmp_path)
    # the sinusoid family stands in for Omniglot: the bookkeeping is what is tested, not the data
    monkeypatch.setattr(autoencoder, "omniglot_experiment",
                        lambda root, budget, seed=0: autoencoder.sinusoid_family_experiment(budget, seed=seed))
    summary = run_study("autoencoder", tmp_path / "out", quick=True)
    assert summary["budget"]["iterations"] == QUICK.iterations
    recorded = summary["results"]["Omniglot alphabets"]["budget"]
    assert (recorded["iterations"], recorded["tasks"], recorded["meta_batch_size"]) == (100, 50, 10)


def test_seeds_that_would_differ_in_their_omniglot_part_are_refused_before_training(tmp_path, monkeypatch):
    """A seed recorded with Omniglot data and one to train without it: the mismatch was found only after
    training the new seed (minutes at the full budget)."""
    import json

    from fastmaml.errors import ConfigError
    from fastmaml.studies import run_seeds

    monkeypatch.delenv("FASTMAML_OMNIGLOT", raising=False)
    monkeypatch.delenv("FASTMAML_DATA", raising=False)
    done = tmp_path / "seed-0" / "autoencoder.json"
    done.parent.mkdir()
    done.write_text(json.dumps({"quick": True, "seed": 0, "options": {}, "headlines": {"a": 1.0},
                                "results": {"sinusoid families": {}, "Omniglot alphabets": {}}}))
    monkeypatch.setattr("fastmaml.studies.run_study", lambda *a, **k: pytest.fail("a seed trained"))
    with pytest.raises(ConfigError, match="holds the parts sinusoid families, Omniglot alphabets; the seeds to "
                                          "train would make sinusoid families "):
        run_seeds("autoencoder", tmp_path, [0, 1], quick=True)
