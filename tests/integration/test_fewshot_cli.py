"""Few-shot image classification through the CLI: data, train, eval on tiny generated data (seconds),
and a short real Omniglot 5-way 1-shot meta-training when ../shared/data/omniglot is present (minutes)."""

import csv
import functools
import hashlib
import http.server
import json
import math
import re
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fastmaml.cli import main
from fastmaml.engine.run_dir import read_config
from fastmaml.experiments import adapt_images
from fastmaml.experiments.adapt_images import image_reader
from fastmaml.tasks import omniglot

REAL_OMNIGLOT = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "omniglot"
TINY = {"images_background": {"Alpha": 5, "Beta": 5}, "images_evaluation": {"Gamma": 6}}  # characters per alphabet
DRAWINGS = 20
QUIET = ["--no-progress", "--set", "log_every=5", "--set", "checkpoint_every=10"]


def character_drawing(character: int, drawer: int) -> Image.Image:
    """A 28x28 grayscale 'drawing': the character's own random strokes, shifted a little per drawer, on white."""
    strokes = np.random.default_rng(character).integers(2, 22, size=(3, 2))
    ink = np.zeros((28, 28), dtype=bool)
    for (row, col), horizontal in zip(strokes, (True, False, True)):
        if horizontal:
            ink[row : row + 2, col : col + 6] = True
        else:
            ink[row : row + 6, col : col + 2] = True
    ink = np.roll(ink, (drawer % 3 - 1, drawer // 3 % 3 - 1), axis=(0, 1))
    return Image.fromarray(np.where(ink, 0, 255).astype(np.uint8))


def write_omniglot(root: Path) -> Path:
    """The official folder layout, with TINY counts and 20 drawings per character."""
    character = 0
    for part, alphabets in TINY.items():
        for alphabet, characters in alphabets.items():
            for c in range(1, characters + 1):
                folder = root / part / alphabet / f"character{c:02d}"
                folder.mkdir(parents=True)
                for drawer in range(1, DRAWINGS + 1):
                    character_drawing(character, drawer).save(folder / f"{character + 1:04d}_{drawer:02d}.png")
                character += 1
    return root


@pytest.fixture
def tiny_omniglot(tmp_path, monkeypatch):
    """16 characters: 8 meta-train, 2 validation, 6 meta-test (x 4 rotations); a private cache folder."""
    monkeypatch.setattr(omniglot, "PARTS", {p: (len(a), sum(a.values())) for p, a in TINY.items()})
    monkeypatch.setattr(omniglot, "NUM_TRAINVAL", 10)
    monkeypatch.setattr(omniglot, "NUM_VAL", 2)
    monkeypatch.setenv("FASTMAML_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("FASTMAML_DATA", raising=False)
    return write_omniglot(tmp_path / "omniglot")


def write_tree(root: Path, classes: int = 20, per_class: int = 6) -> Path:
    """A class-per-folder tree of 24x24 RGB images: class c has its own colour, images vary a little."""
    for c in range(classes):
        (root / f"class_{c:02d}").mkdir(parents=True)
        for i in range(per_class):
            colour = (12 * c, 255 - 12 * c, 40 * (c % 5) + i)
            Image.new("RGB", (24, 24), colour).save(root / f"class_{c:02d}" / f"{i}.png")
    return root


def cli(args, capsys):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err.strip()


# ------------------------------------------------------------------------------------------ omniglot
def test_train_and_eval_omniglot_5way_1shot(tiny_omniglot, tmp_path, capsys):
    run = tmp_path / "run"
    code, out, err = cli(
        ["train", "omniglot", "--root", tiny_omniglot, "--ways", 5, "--shots", 1, "--iterations", 20, "--out", run,
         "--set", "meta_batch_size=8", "--set", "val_every=10", "--set", "val_tasks=10", *QUIET],
        capsys,
    )
    assert code == 0, err
    assert "trained omniglot for 20 iterations" in out and "best validation accuracy" in out
    assert re.search(r"iterations in [0-9.]+ s, plus [0-9.]+ s validating, best", out), out  # apart, not hidden
    saved = json.loads((run / "config.json").read_text())
    assert saved["experiment"] == "omniglot"
    assert saved["config"]["root"] == str(tiny_omniglot) and saved["config"]["inner_lr"] == 0.4
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [5, 10, 15, 20] and "val_accuracy" in rows[1]
    assert (run / "best.safetensors").is_file()

    code, out, err = cli(["eval", run, "--tasks", 20, "--json"], capsys)
    assert code == 0, err
    report = json.loads(out)
    accuracy = report["metrics"]["maml"]["accuracy"]
    assert list(report["metrics"]["maml"]) == ["accuracy", "loss"] and report["tasks"] == 20
    assert len(accuracy["mean"]) == len(accuracy["ci95"]) == 11  # 0..10 inner steps at meta-test
    assert all(0 <= a <= 1 for a in accuracy["mean"]) and all(c >= 0 for c in accuracy["ci95"])
    assert accuracy["mean"][10] > 0.5 > accuracy["mean"][0] - 0.2  # chance is 0.2: adaptation works
    code, out, _ = cli(["eval", run, "--tasks", 10, "--steps", 2, "--best"], capsys)
    assert code == 0 and "accuracy:" in out and "±" in out
    # the same Omniglot files elsewhere (say, a run meta-trained on another machine): the loader
    # checks them, so the same tasks and scores, and the report is the run's own and saved
    moved = tmp_path / "moved_omniglot"
    shutil.copytree(tiny_omniglot, moved)
    (run / "eval.json").unlink()
    code, out, err = cli(["eval", run, "--tasks", 20, "--json", "--set", f"root={moved}"], capsys)
    assert code == 0, err
    relocated = json.loads(out)
    assert "overrides" not in relocated and "not saved" not in err
    assert relocated["metrics"] == report["metrics"]
    assert json.loads((run / "eval.json").read_text())["metrics"] == report["metrics"]

    # --split val scores the 2 validation characters (x 4 rotations) instead, and leaves eval.json alone
    saved = (run / "eval.json").read_text()
    code, out, err = cli(["eval", run, "--tasks", 20, "--json", "--split", "val"], capsys)
    assert code == 0, err
    on_val = json.loads(out)
    assert on_val["split"] == "val" and "split" not in report and "not saved" in err
    assert on_val["metrics"]["maml"]["accuracy"]["mean"] != accuracy["mean"]  # other classes, other tasks
    assert (run / "eval.json").read_text() == saved
    code, out, _ = cli(["eval", run, "--tasks", 5, "--steps", 1, "--split", "train"], capsys)
    assert code == 0 and "5 meta-training tasks" in out


def test_conv_and_mlp_runs_name_their_network_and_compare_on_the_same_tasks(tiny_omniglot, tmp_path, capsys):
    runs = {}
    for preset in ("omniglot", "omniglot-noconv"):
        runs[preset] = tmp_path / "runs" / preset
        code, _, err = cli(["train", preset, "--root", tiny_omniglot, "--ways", 5, "--shots", 1, "--iterations", 4,
                            "--out", runs[preset], "--set", "meta_batch_size=4", "--set", "val_every=0", *QUIET],
                           capsys)
        assert code == 0, err
    code, conv_out, err = cli(["eval", runs["omniglot"], "--tasks", 6, "--steps", 1], capsys)
    assert code == 0, err
    code, mlp_out, err = cli(["eval", runs["omniglot-noconv"], "--tasks", 6, "--steps", 1], capsys)
    assert code == 0, err
    # one task name for both (the same tasks), told apart by the network in the header
    assert conv_out.startswith("omniglot-5way-1shot, conv 4x64, stride 2, at iteration 4:"), conv_out
    assert mlp_out.startswith("omniglot-5way-1shot, MLP 256-128-64-64, at iteration 4:"), mlp_out
    assert json.loads((runs["omniglot-noconv"] / "eval.json").read_text())["model"] == "MLP 256-128-64-64"
    code, out, err = cli(["compare", runs["omniglot"], runs["omniglot-noconv"]], capsys)
    assert code == 0, err
    assert out.startswith("omniglot-5way-1shot: 6 meta-test tasks"), out  # two networks: the header names neither
    assert "maml [omniglot]" in out and "maml [omniglot-noconv]" in out
    code, out, err = cli(["compare", runs["omniglot-noconv"], runs["omniglot-noconv"]], capsys)
    assert code == 0, err
    assert out.startswith("omniglot-5way-1shot, MLP 256-128-64-64: 6 meta-test tasks"), out


def test_turn_pairs_probe_replays_the_meta_test_tasks_that_eval_drew(tiny_omniglot, tmp_path, capsys, monkeypatch):
    """benchmarks/omniglot_turn_pairs.py marks the eval tasks that hold one character in two turns by
    replaying eval's task stream; here it is checked against the classes eval itself drew (2 chunks)."""
    import importlib.util

    from fastmaml.tasks.images import FewShotImages

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "omniglot_turn_pairs.py"
    spec = importlib.util.spec_from_file_location("omniglot_turn_pairs", script)
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    run = tmp_path / "run"
    code, _, err = cli(["train", "omniglot", "--root", tiny_omniglot, "--iterations", 2, "--out", run,
                        "--set", "meta_batch_size=2", "--set", "val_every=0", *QUIET], capsys)
    assert code == 0, err
    drawn, draw = [], FewShotImages.draw_classes

    def recording(self, generator, meta_batch_size, ways):
        turn, base = draw(self, generator, meta_batch_size, ways)
        if meta_batch_size > 1:  # not the one-task check of the split's size
            drawn.append(base)
        return turn, base

    monkeypatch.setattr(FewShotImages, "draw_classes", recording)
    code, _, err = cli(["eval", run, "--tasks", 150, "--steps", 1, "--no-progress"], capsys)
    assert code == 0, err
    monkeypatch.setattr(FewShotImages, "draw_classes", draw)
    seen = torch.cat(drawn)
    assert [len(b) for b in drawn] == [100, 50]
    expected = torch.tensor([len(set(row.tolist())) < 5 for row in seen])
    marks = probe.repeats_a_character(run, 150)
    assert torch.equal(marks, expected) and 0 < int(marks.sum()) < 150  # 6 test characters x 4 turns: most repeat
    monkeypatch.setattr("sys.argv", ["omniglot_turn_pairs.py", str(run), str(run / "eval.json")])
    probe.main()
    out = capsys.readouterr().out
    assert f"({int(marks.sum())} tasks)" in out and f"({150 - int(marks.sum())} tasks)" in out and "(150 tasks)" in out


def test_adapt_an_omniglot_run_to_new_characters(tiny_omniglot, tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    code, _, err = cli(["train", "omniglot", "--root", tiny_omniglot, "--iterations", 20, "--out", run,
                        "--set", "meta_batch_size=8", *QUIET], capsys)
    assert code == 0, err
    # a new task: 5 meta-test characters, one drawing each to learn from, four others to classify
    names = sorted(f"{a}/{c.name}" for part in TINY for a in TINY[part] for c in (tiny_omniglot / part / a).iterdir())
    chosen = omniglot.omniglot_split(names, "test")[:5]
    support, predict, out_csv = tmp_path / "support", tmp_path / "predict", tmp_path / "out" / "predictions.csv"
    for name in chosen:
        pngs = sorted(next(tiny_omniglot.glob(f"*/{name}")).iterdir())
        for folder, files in ((support, pngs[:1]), (predict, pngs[1:5])):
            (folder / name.replace("/", "_")).mkdir(parents=True)
            for png in files:
                (folder / name.replace("/", "_") / png.name).write_bytes(png.read_bytes())
    code, out, err = cli(["adapt", run, "--support", support, "--predict", predict, "--out", out_csv], capsys)
    assert code == 0, err
    assert "adapted to 5 support images of 5 classes (1 per class) with 10 steps" in out
    after = float(out.split(" after")[0].rsplit(", ", 1)[1].rstrip("%")) / 100
    assert "accuracy on the 20 images in class folders" in out and after > 0.5  # chance is 0.2
    with out_csv.open() as handle:
        rows = list(csv.DictReader(handle))
    classes = sorted(n.replace("/", "_") for n in chosen)
    assert len(rows) == 20 and list(rows[0]) == ["file", "prediction", *(f"p_{c}" for c in classes)]
    for row in rows:
        p = [float(row[f"p_{c}"]) for c in classes]
        assert sum(p) == pytest.approx(1, abs=1e-4) and row["prediction"] == classes[p.index(max(p))]
    assert sum(row["prediction"] == row["file"].split("/")[0] for row in rows) / 20 == pytest.approx(after)

    # many images go in batches (batch statistics within each): 20 images, at most 7 -> 7, 7, 6
    with monkeypatch.context() as patch:
        patch.setattr(adapt_images, "BATCH", 7)
        assert [len(b) for b in adapt_images.batches(20)] == [7, 7, 6]
        code, out, err = cli(["adapt", run, "--support", support, "--predict", predict, "--out", out_csv], capsys)
    assert code == 0 and "wrote 20 predictions" in out, err
    assert [len(b) for b in adapt_images.batches(257)] == [129, 128] and [len(b) for b in adapt_images.batches(2)] == [2]

    # each image is read exactly as meta-training read it: the cached uint8 pixels (inverted, 28x28)
    config = read_config(run)[1]
    cached = omniglot.load_omniglot(tiny_omniglot, "test", rotations=False)
    first = cached.class_names.index(chosen[0])
    png = min(next(tiny_omniglot.glob(f"*/{chosen[0]}")).iterdir())
    assert torch.equal(torch.from_numpy(image_reader(config)(png)), cached.images[first * DRAWINGS])

    four = tmp_path / "four"
    for c in classes[:4]:
        (four / c).mkdir(parents=True)
        for png in (support / c).iterdir():
            (four / c / png.name).write_bytes(png.read_bytes())
    (tmp_path / "notes.txt").write_text("not an image\n")
    bad = [
        (["--support", four], "meta-trained for 5-way tasks, but --support"),
        (["--support", predict / classes[0]], "has no class folders"),
        (["--support", support, "--predict", next((predict / classes[0]).iterdir())], "is one image; give a folder"),
        (["--support", support, "--predict", tmp_path / "notes.txt"], "notes.txt is not an image"),
        (["--support", support, "--csv", out_csv], "--csv is for table runs"),
        (["--support", support, "--predict", tmp_path / "nowhere"], "not found"),
    ]
    for args, message in bad:
        args = ["adapt", run, *args] + ([] if "--predict" in args else ["--predict", predict]) + ["--out", out_csv]
        code, _, err = cli(args, capsys)
        assert code == 2 and message in err and len(err.splitlines()) == 1, err
    # --out inside the support folder: nothing is overwritten, but a new file there would be read as data
    code, _, err = cli(["adapt", run, "--support", support, "--predict", predict, "--out", support / "p.csv"], capsys)
    assert code == 2 and "would write into" in err and "choose a path outside it" in err, err
    assert not (support / "p.csv").exists()


def test_plot_and_adapt_read_no_data_set_and_eval_says_it_needs_one(tiny_omniglot, tmp_path, capsys, monkeypatch):
    """A run meta-trained on Omniglot is plotted and adapted to new images on a machine without
    Omniglot (found by $FASTMAML_DATA at training, so its config names no folder); eval, which
    samples meta-test tasks from it, still stops with its one-line error. Before, plot and adapt
    checked the training data first and failed the same way."""
    monkeypatch.setenv("FASTMAML_DATA", str(tiny_omniglot.parent))
    run = tmp_path / "run"
    code, _, err = cli(["train", "omniglot", "--iterations", 20, "--out", run, "--set", "meta_batch_size=8", *QUIET],
                       capsys)
    assert code == 0, err
    assert json.loads((run / "config.json").read_text())["config"]["root"] == ""
    code, _, err = cli(["eval", run, "--tasks", 20, "--no-progress"], capsys)
    assert code == 0 and (run / "eval.json").is_file(), err
    support, predict = tmp_path / "support", tmp_path / "predict"
    for character in sorted((tiny_omniglot / "images_evaluation" / "Gamma").iterdir())[:5]:
        pngs = sorted(character.iterdir())
        for folder, files in ((support, pngs[:1]), (predict, pngs[1:3])):
            (folder / character.name).mkdir(parents=True)
            for png in files:
                (folder / character.name / png.name).write_bytes(png.read_bytes())

    monkeypatch.delenv("FASTMAML_DATA")  # the data set is gone (another machine)
    code, out, err = cli(["plot", run], capsys)
    assert code == 0, err
    assert {Path(line).name for line in out.split()} >= {"learning_curve.png", "metric_vs_steps.png"}
    code, out, err = cli(["adapt", run, "--support", support, "--predict", predict, "--out", tmp_path / "p.csv"],
                         capsys)
    assert code == 0, err
    assert "adapted to 5 support images of 5 classes" in out and "accuracy on the 10 images" in out
    assert len((tmp_path / "p.csv").read_text().splitlines()) == 11
    code, out, err = cli(["eval", run, "--tasks", 20, "--no-progress"], capsys)
    assert code == 2 and "no data folder for omniglot" in err and "FASTMAML_DATA" in err and "Traceback" not in err


@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="needs a CUDA GPU: CUDA graphs exist only there (CI has none; "
                           "benchmarks/gpu_check.sh runs this test on the GPU machine)")
def test_cuda_graph_replays_the_meta_step_on_each_new_batch(tiny_omniglot, tmp_path, capsys, caplog):
    """On a GPU the trainer captures the meta-step in a CUDA graph after GRAPH_WARMUP eager iterations.
    Each replay must compute the meta-loss and meta-gradient of the batch it is given, at the current
    weights (as the eager step does), and a run must resume into and out of graphs."""
    from fastmaml.engine.experiment import get_preset
    from fastmaml.engine.trainer import GRAPH_WARMUP, Trainer

    preset = get_preset("omniglot")
    config = preset.make_config(root=str(tiny_omniglot), ways=5, shots=1)
    config.device, config.meta_batch_size = "cuda", 8
    torch.manual_seed(0)
    trainer = Trainer(preset.build(config), tmp_path / "direct")
    assert trainer.graphed
    generator = torch.Generator().manual_seed(0)
    for step in range(GRAPH_WARMUP + 4):
        batch = trainer.experiment.sample(generator, "train", 8).to("cuda")
        before = {k: p.detach().clone() for k, p in trainer.maml.params().items()}
        eager = trainer.maml.meta_loss(batch)
        eager_grads = torch.autograd.grad(eager, list(trainer.maml.params().values()))
        # drop the reference step's autograd graph: kept alive, it holds the parameters' AccumulateGrad
        # nodes, made on the default stream, and the capture on its side stream then fails (H200, 2026-12-04)
        eager = eager.detach()
        loss = trainer.meta_step(batch)
        assert (trainer._graph is not None) == (step >= GRAPH_WARMUP)  # the last warm-up step captures
        assert loss.item() == pytest.approx(eager.item(), rel=1e-4), step
        grads = [p.grad for p in trainer.maml.params().values()]
        scale = max(g.abs().max().item() for g in eager_grads)
        assert max((g - e).abs().max().item() for g, e in zip(grads, eager_grads)) < 1e-2 * scale, step
        assert all(not torch.equal(before[k], p) for k, p in trainer.maml.params().items() if "bias" not in k)
    assert "could not be captured" not in caplog.text

    common = ["--root", tiny_omniglot, "--ways", 5, "--shots", 1, "--device", "cuda", "--set", "meta_batch_size=8",
              "--set", "val_every=0", "--no-progress", "--set", "log_every=4", "--set", "checkpoint_every=4"]
    run = tmp_path / "resumed"
    assert cli(["train", "omniglot", *common, "--iterations", 4, "--out", run, "--set", "cuda_graph=false"],
               capsys)[0] == 0
    for graphs, iterations in (("true", 12), ("false", 16)):
        code, _, err = cli(["train", "--resume", run, "--iterations", iterations, "--no-progress",
                            "--set", f"cuda_graph={graphs}"], capsys)
        assert code == 0, err
    losses = [json.loads(line)["meta_loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses)


@pytest.mark.skipif(torch.cuda.device_count() < 2,
                    reason="needs two CUDA GPUs: the run on cuda:1 (CI has none; not yet run on a device)")
def test_cuda_graph_on_the_second_gpu_updates_the_weights(tiny_omniglot, tmp_path, caplog):
    """torch.cuda.graph captured on a stream of the current device, cuda:0, while a cuda:1 run's
    kernels went to cuda:1: the graph came out empty and every replay left the weights as they were
    (found by reading, pytorch/pytorch#87894). The capture now uses the run's own GPU."""
    from fastmaml.engine.experiment import get_preset
    from fastmaml.engine.trainer import GRAPH_WARMUP, Trainer

    preset = get_preset("omniglot")
    config = preset.make_config(root=str(tiny_omniglot), ways=5, shots=1)
    config.device, config.meta_batch_size = "cuda:1", 8
    torch.manual_seed(0)
    trainer = Trainer(preset.build(config), tmp_path / "second")
    generator = torch.Generator().manual_seed(0)
    for step in range(GRAPH_WARMUP + 3):
        before = {k: p.detach().clone() for k, p in trainer.maml.params().items()}
        trainer.meta_step(trainer.experiment.sample(generator, "train", 8).to("cuda:1"))
        assert any(not torch.equal(before[k], p) for k, p in trainer.maml.params().items()), step
    assert trainer._graph is not None and "could not be captured" not in caplog.text


@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="needs a CUDA GPU: CUDA graphs exist only there (CI has none; not yet run on a device)")
def test_grad_checkpointing_on_a_gpu_runs_without_a_graph_and_says_nothing_failed(tiny_omniglot, tmp_path, caplog):
    """Checkpointing reads the GPU's random state, which a capture forbids: the capture failed with a
    warning and the run went on eagerly (found by reading). Such a run now skips the graph."""
    from fastmaml.engine.experiment import get_preset
    from fastmaml.engine.trainer import GRAPH_WARMUP, Trainer

    preset = get_preset("omniglot")
    config = preset.make_config(root=str(tiny_omniglot), ways=5, shots=1)
    config.device, config.meta_batch_size, config.grad_checkpointing = "cuda", 8, True
    trainer = Trainer(preset.build(config), tmp_path / "ckpt")
    assert not trainer.graphed
    generator = torch.Generator().manual_seed(0)
    for _ in range(GRAPH_WARMUP + 2):
        assert torch.isfinite(trainer.meta_step(trainer.experiment.sample(generator, "train", 8).to("cuda")))
    assert "could not be captured" not in caplog.text


def test_data_omniglot_verifies_and_caches(tiny_omniglot, tmp_path, capsys, monkeypatch):
    code, out, err = cli(["data", "omniglot", "--root", tiny_omniglot, "--cache-dir", tmp_path / "c"], capsys)
    assert code == 0, err
    assert f"verified Omniglot in {tiny_omniglot}: 16 characters x 20 images" in out
    assert (tmp_path / "c" / "omniglot" / "omniglot_28.npy").is_file() and "MB)" in out
    code, _, err = cli(["data", "omniglot", "--root", tmp_path / "empty"], capsys)
    assert code == 2 and err.startswith("fastmaml: error: Omniglot not found") and len(err.splitlines()) == 1
    # --root may be left out for $FASTMAML_DATA, as README says and train allows (data required it)
    code, _, err = cli(["data", "omniglot"], capsys)
    assert code == 2 and "pass --root DIR, or set FASTMAML_DATA" in err
    monkeypatch.setenv("FASTMAML_DATA", str(tiny_omniglot.parent))
    code, out, err = cli(["data", "omniglot", "--cache-dir", tmp_path / "c"], capsys)
    assert code == 0 and f"verified Omniglot in {tiny_omniglot}" in out, err


def test_data_omniglot_download_from_a_local_server(tiny_omniglot, tmp_path, capsys, monkeypatch):
    import zipfile

    served = tmp_path / "served"
    served.mkdir()
    for part in TINY:
        with zipfile.ZipFile(served / f"{part}.zip", "w") as z:
            for path in sorted((tiny_omniglot / part).rglob("*")):
                z.write(path, path.relative_to(tiny_omniglot).as_posix())
        digest = hashlib.md5((served / f"{part}.zip").read_bytes()).hexdigest()
        monkeypatch.setitem(omniglot.OMNIGLOT_MD5, f"{part}.zip", digest)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/"
        code, out, err = cli(["data", "omniglot", "--root", tmp_path / "fresh", "--download", "--url", url], capsys)
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert code == 0, err
    assert out.count("(md5 checked)") == 2 and "verified Omniglot" in out
    assert (tmp_path / "fresh" / "images_background.zip").is_file()


def test_data_omniglot_url_that_is_no_url_is_one_line_before_any_download(tmp_path, capsys):
    # before: a ValueError traceback (unknown url type: 'notaurl/images_background.zip')
    code, out, err = cli(["data", "omniglot", "--root", tmp_path / "fresh", "--download", "--url", "notaurl"], capsys)
    assert code == 2 and out == "" and len(err.splitlines()) == 1, err
    assert err.startswith("fastmaml: error: --url must be an http://, https:// or file:// URL of the folder holding "
                          "images_background.zip and images_evaluation.zip (e.g. https://"), err
    assert err.endswith("got 'notaurl'") and not (tmp_path / "fresh").exists()


def test_omniglot_errors_are_one_clear_line(tiny_omniglot, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = cli(["train", "omniglot", "--out", "run"], capsys)
    assert code == 2 and len(err.splitlines()) == 1
    assert "no data folder for omniglot: pass --root DIR (or --set root=DIR), or set FASTMAML_DATA" in err
    code, _, err = cli(["train", "omniglot", "--root", tmp_path / "nowhere", "--out", "run"], capsys)
    assert code == 2 and "Omniglot not found" in err and len(err.splitlines()) == 1
    # 2 validation characters x 4 rotations = 8 classes
    code, _, err = cli(["train", "omniglot", "--root", tiny_omniglot, "--ways", 20, "--out", "run"], capsys)
    assert code == 2 and len(err.splitlines()) == 1
    assert "omniglot val split: ways=20 but only 8 classes (2 x 4 rotations) are available" in err
    code, _, err = cli(["train", "omniglot", "--root", tiny_omniglot, "--shots", 15, "--out", "run"], capsys)
    assert code == 2 and "shots + queries = 15 + 15 but class" in err
    assert not (tmp_path / "run").exists()  # nothing is created before the data is known to fit


# ------------------------------------------------------------------------------------------ image folders
def test_train_and_eval_an_image_folder(tmp_path, capsys, monkeypatch, caplog):
    monkeypatch.setenv("FASTMAML_CACHE", str(tmp_path / "cache"))
    tree, run = write_tree(tmp_path / "tree"), tmp_path / "run"
    code, out, err = cli(
        ["train", "images", "--root", tree, "--ways", 3, "--shots", 1, "--queries", 2, "--iterations", 10,
         "--out", run, "--set", "image_size=16", "--set", "inner_steps=1", "--set", "val_every=5",
         "--set", "val_tasks=4", "--set", "eval_steps=3", *QUIET],
        capsys,
    )
    assert code == 0, err
    config = json.loads((run / "config.json").read_text())["config"]
    assert config["dataset"] == "folder" and config["channels"] == 3 and config["max_pool"] is True
    code, out, err = cli(["eval", run, "--tasks", 6, "--json"], capsys)
    assert code == 0, err
    assert len(json.loads(out)["metrics"]["maml"]["accuracy"]["mean"]) == 4
    # a folder data set's root is the data itself: another root is another protocol, not saved
    saved = (run / "eval.json").read_text()
    code, out, err = cli(["eval", run, "--tasks", 2, "--steps", 1, "--json", "--set", f"root={tree}"], capsys)
    assert code == 0, err
    assert json.loads(out)["overrides"] == [f"root={tree}"] and "not saved" in err
    assert (run / "eval.json").read_text() == saved
    # adapt to 3 of the colours, one image each; classify 2 others of each (RGB, resized to 16x16)
    support, predict = tmp_path / "support", tmp_path / "predict"
    for c in ("class_00", "class_07", "class_15"):
        for folder, picks in ((support, ["0.png"]), (predict, ["1.png", "2.png"])):
            (folder / c).mkdir(parents=True)
            for name in picks:
                (folder / c / name).write_bytes((tree / c / name).read_bytes())
    code, out, err = cli(["adapt", run, "--support", support, "--predict", predict, "--out", tmp_path / "p.csv"],
                         capsys)
    assert code == 0, err
    assert "with 3 steps" in out and "accuracy on the 6 images in class folders" in out
    pixels = image_reader(read_config(run)[1])(tree / "class_07" / "1.png")
    assert pixels.shape == (3, 16, 16) and pixels.dtype == np.uint8
    assert tuple(pixels[:, 8, 8]) == (84, 171, 81)  # the class's colour, unchanged by the resize
    code, _, err = cli(["train", "images", "--root", tree, "--ways", 30, "--out", tmp_path / "r2"], capsys)
    assert code == 2 and len(err.splitlines()) == 1
    assert "folder train split: ways=30 but only 13 classes are available; use ways <= 13" in err
    # a run that could never be meta-tested does not train: 4 test classes for 5-way tasks, validation off
    code, _, err = cli(["train", "images", "--root", tree, "--ways", 5, "--queries", 2, "--set", "val_every=0", "--out",
                        tmp_path / "r5"], capsys)
    assert code == 2 and len(err.splitlines()) == 1 and not (tmp_path / "r5" / "checkpoint.safetensors").exists()
    assert "folder test split: ways=5 but only 4 classes are available" in err and "splits=0.64,0.16,0.2" in err
    code, _, err = cli(["train", "images", "--out", tmp_path / "r3"], capsys)
    assert code == 2 and err == "fastmaml: error: no data folder for folder: pass --root DIR (or --set root=DIR)"
    code, _, err = cli(["train", "sinusoid", "--root", tree, "--out", tmp_path / "r4"], capsys)
    assert code == 2 and "preset 'sinusoid' has no option --root" in err
    # a resumed run keeps its images: another folder beside them is refused, a moved folder is taken (warned)
    other = write_tree(tmp_path / "other", classes=12)
    code, _, err = cli(["train", "--resume", run, "--iterations", 12, "--root", other, *QUIET], capsys)
    assert code == 2 and f"this run trained on the images in {tree}, which are still there" in err
    moved = tree.rename(tmp_path / "moved")
    code, out, err = cli(["train", "--resume", run, "--iterations", 12, "--root", moved, *QUIET], capsys)
    assert code == 0 and "from iteration 10 to 12" in out, err
    assert f"{tree}, the folder this run trained on, is gone; resuming on {moved}" in caplog.text


def test_data_miniimagenet_prepares_the_splits_it_finds(tmp_path, capsys):
    import csv
    import io
    import zipfile

    root = tmp_path / "mini"
    root.mkdir()
    names = {f"n{c}": [f"n{c}{i:04d}.jpg" for i in range(3)] for c in range(2)}
    with open(root / "train.csv", "w", newline="") as f:
        csv.writer(f).writerows([["filename", "label"], *[[n, label] for label, ns in names.items() for n in ns]])
    with zipfile.ZipFile(root / "train.zip", "w") as z:
        for files in names.values():
            for name in files:
                data = io.BytesIO()
                Image.new("RGB", (84, 84), (100, 0, 0)).save(data, "JPEG")
                z.writestr(f"images/{name}", data.getvalue())
    code, out, err = cli(["data", "miniimagenet", "--root", root, "--cache-dir", tmp_path / "c"], capsys)
    assert code == 0, err
    assert "train: 2 classes, 6 images; cache" in out and "val: " in out and "not found; skipped" in out
    assert (tmp_path / "c" / "miniimagenet" / "miniimagenet_train_84.npy").is_file()
    code, _, err = cli(["data", "miniimagenet", "--root", tmp_path / "none"], capsys)
    assert code == 2 and "no mini-ImageNet split could be prepared" in err and len(err.splitlines()) == 1


def test_an_image_folder_run_reads_only_its_own_classes_and_stays_out_of_its_tree(tmp_path, capsys, monkeypatch,
                                                                                   caplog):
    """Found by a review: a class folder added after training (empty, or with a half-copied image) was
    said to be left out and still stopped eval and resume; a run folder or cache inside the tree was
    taken for a class; evals before and after the test images changed were paired by compare; a
    predict folder named like no class was scored silently as unlabelled."""
    from fastmaml.experiments import fewshot

    monkeypatch.setenv("FASTMAML_CACHE", str(tmp_path / "cache"))
    tree = write_tree(tmp_path / "tree", classes=12)
    common = ["--root", tree, "--ways", 2, "--shots", 1, "--queries", 1, "--set", "image_size=16",
              "--set", "val_every=0", "--set", "eval_steps=1", *QUIET]
    code, _, err = cli(["train", "images", *common, "--iterations", 4, "--out", tree / "run"], capsys)
    assert code == 2 and "is inside the image tree" in err and not (tree / "run").exists(), err
    code, _, err = cli(["train", "images", *common, "--iterations", 4, "--out", tmp_path / "r",
                        "--set", f"cache_dir={tree / 'cache'}"], capsys)
    assert code == 2 and "cache_dir" in err and "is inside the image tree" in err, err
    runs = [tmp_path / "a", tmp_path / "b"]
    for seed, run in enumerate(runs):
        code, _, err = cli(["train", "images", *common, "--iterations", 4, "--out", run, "--set", f"seed={seed}"],
                           capsys)
        assert code == 0, err

    def fresh_process():
        fewshot._load_split.cache_clear()
        fewshot._folder_splits.cache_clear()

    (tree / "zz_new").mkdir()  # being copied in: empty, then one broken image
    fresh_process()
    assert cli(["eval", runs[0], "--tasks", 2, "--no-progress"], capsys)[0] == 0
    (tree / "zz_new" / "a.png").write_bytes(b"not yet a png")
    fresh_process()
    code, out, err = cli(["train", "--resume", runs[0], "--iterations", 6, *QUIET], capsys)
    assert code == 0 and "from iteration 4 to 6" in out, err
    shutil.rmtree(tree / "zz_new")

    test_class = json.loads((runs[0] / "config.json").read_text())["config"]["test_classes"][0]
    for image in (tree / test_class).iterdir():  # the test images change between the two evals
        Image.new("RGB", (24, 24), (0, 0, 0)).save(image)
    fresh_process()
    assert cli(["eval", runs[1], "--tasks", 2, "--no-progress"], capsys)[0] == 0
    code, _, err = cli(["compare", *runs], capsys)
    assert code == 2 and "test_images_sha1" in err and "meta-tested on different tasks" in err, err

    support, predict = tmp_path / "support", tmp_path / "predict"
    classes = json.loads((runs[0] / "config.json").read_text())["config"]["test_classes"][:2]
    for folder in (support / classes[0], support / classes[1], predict / classes[0], predict / "Other"):
        folder.mkdir(parents=True)
        Image.new("RGB", (24, 24), (50, 60, 70)).save(folder / "x.png")
        Image.new("RGB", (24, 24), (70, 60, 50)).save(folder / "y.png")
    (predict / classes[0] / "gone.png").symlink_to(tmp_path / "nowhere.png")
    caplog.clear()
    with caplog.at_level("WARNING"):
        code, out, err = cli(["adapt", runs[0], "--support", support, "--predict", predict, "--out",
                              tmp_path / "p.csv"], capsys)
    assert code == 0, err
    assert "accuracy on the 2 images in class folders" in out
    assert "the images in Other are not scored: no support class has that name" in caplog.text
    assert "1 broken link(s) in --predict" in caplog.text and "not classified: only files with" not in caplog.text


def test_an_image_folder_run_keeps_its_split_when_class_folders_come_and_go(tmp_path, capsys, monkeypatch, caplog):
    """Eval and resume reuse the split a run recorded when it started: a class folder added later joins
    no split (before, the tree was split again and meta-training classes moved into the meta-test
    split, scored without a word); a removed one is one clear error. Runs that recorded no split
    (older ones) still load; plot and adapt need no data set."""
    from fastmaml.experiments import fewshot

    monkeypatch.setenv("FASTMAML_CACHE", str(tmp_path / "cache"))
    tree, run = write_tree(tmp_path / "tree", classes=12), tmp_path / "run"
    code, _, err = cli(
        ["train", "images", "--root", tree, "--ways", 2, "--shots", 1, "--queries", 1, "--iterations", 4, "--out", run,
         "--set", "image_size=16", "--set", "val_every=2", "--set", "val_tasks=2", "--set", "eval_steps=1", *QUIET],
        capsys,
    )
    assert code == 0, err
    config = json.loads((run / "config.json").read_text())["config"]
    split = {s: config[f"{s}_classes"] for s in ("train", "val", "test")}
    assert sorted(c for names in split.values() for c in names) == sorted(p.name for p in tree.iterdir())  # 0.64 + 0.16 + 0.2 = all
    assert [len(c) for c in split.values()] == [8, 2, 2]

    def fresh_process():  # another fastmaml command: nothing loaded yet
        fewshot._load_split.cache_clear()
        fewshot._folder_splits.cache_clear()

    for c in range(12, 15):  # new class folders: a new split of the tree would move old classes around
        (tree / f"class_{c:02d}").mkdir()
        for i in range(6):
            Image.new("RGB", (24, 24), (10 * c, 5 * i, 90)).save(tree / f"class_{c:02d}" / f"{i}.png")
    fresh_process()
    code, out, err = cli(["eval", run, "--tasks", 2, "--json"], capsys)
    assert code == 0, err
    assert "3 class folder(s) in" in caplog.text and "class_12, class_13, class_14" in caplog.text
    _, loaded = read_config(run)
    for name, classes in split.items():
        assert list(fewshot.load_split(loaded, name).class_names) == classes
    code, out, err = cli(["train", "--resume", run, "--iterations", 6, *QUIET], capsys)
    assert code == 0 and "from iteration 4 to 6" in out, err
    assert json.loads((run / "config.json").read_text())["config"]["test_classes"] == split["test"]

    shutil.rmtree(tree / split["test"][0])
    shutil.rmtree(tree / split["train"][-1])
    fresh_process()
    code, _, err = cli(["eval", run, "--tasks", 2, "--no-progress"], capsys)
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    gone = ", ".join(sorted([split["test"][0], split["train"][-1]]))
    assert f"2 of the 12 class folders in this run's split are gone from {tree}: {gone}; restore them" in err
    code, _, err = cli(["train", "--resume", run, "--iterations", 8, *QUIET], capsys)
    assert code == 2 and "are gone from" in err, err

    code, out, err = cli(["plot", run], capsys)  # plot reads no data set (the run's eval.json is there)
    assert code == 0, err

    # a run that recorded no split (before this was recorded) loads and splits the tree as it is
    text = json.loads((run / "config.json").read_text())
    for name in ("train", "val", "test"):
        del text["config"][f"{name}_classes"]
    (run / "config.json").write_text(json.dumps(text))
    fresh_process()
    code, _, err = cli(["eval", run, "--tasks", 2, "--no-progress"], capsys)
    assert code == 0, err

    # the recorded lists belong to image-folder runs, all three together
    code, _, err = cli(["train", "images", "--root", tree, "--out", tmp_path / "r2", "--set", "train_classes=class_00"],
                       capsys)
    assert code == 2 and "recorded together" in err and "val_classes, test_classes is empty" in err, err


def write_miniimagenet(root: Path, classes: int = 2, per_class: int = 3, corrupt: str = "") -> dict[str, list[str]]:
    """train.csv and train.zip (images/<filename>) of ``classes`` x ``per_class`` 84x84 JPEGs; ``corrupt``
    names one image whose bytes are no image. val.csv and test.csv list images that are not there."""
    import io
    import zipfile

    root.mkdir(exist_ok=True)
    names = {f"n{c}": [f"n{c}{i:04d}.jpg" for i in range(per_class)] for c in range(classes)}
    with zipfile.ZipFile(root / "train.zip", "w") as z:
        for files in names.values():
            for name in files:
                data = io.BytesIO()
                Image.new("RGB", (84, 84), (100, 0, 0)).save(data, "JPEG")
                z.writestr(f"images/{name}", b"not a jpeg" if name == corrupt else data.getvalue())
    for split, rows in (("train", [[n, label] for label, ns in names.items() for n in ns]),
                        ("val", [["v0.jpg", "n8"], ["v1.jpg", "n8"]]), ("test", [["t0.jpg", "n9"], ["t1.jpg", "n9"]])):
        with open(root / f"{split}.csv", "w", newline="") as f:
            csv.writer(f).writerows([["filename", "label"], *rows])
    return names


def test_data_miniimagenet_skips_only_splits_whose_images_are_absent(tmp_path, capsys):
    """Splits whose images are not there yet (the meta-test images here) are skipped, exit 0; a corrupt
    image or a malformed split file fails with its error (before, both were 'skipped' and exit 0)."""
    root, cache = tmp_path / "mini", tmp_path / "c"
    names = write_miniimagenet(root)
    code, out, err = cli(["data", "miniimagenet", "--root", root, "--cache-dir", cache], capsys)
    assert code == 0, err
    assert "train: 2 classes, 6 images" in out and "val: skipped: mini-ImageNet val images not found" in out
    assert "test: skipped: mini-ImageNet test images not found" in out

    write_miniimagenet(root, corrupt=names["n1"][1])
    code, out, err = cli(["data", "miniimagenet", "--root", root, "--cache-dir", cache], capsys)
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "cannot read image" in err and names["n1"][1] in err

    write_miniimagenet(root)
    with open(root / "train.csv", "a") as f:
        f.write(f"{names['n0'][0]},n1\n")  # one image in two classes
    code, out, err = cli(["data", "miniimagenet", "--root", root, "--cache-dir", cache], capsys)
    assert code == 2 and f"lists {names['n0'][0]} twice, on lines 2 and 8" in err, err

    write_miniimagenet(root)
    (root / "images").mkdir()  # the val images in a folder, one of them missing: not 'absent', an error
    (root / "images" / "v0.jpg").write_bytes(b"x")
    code, out, err = cli(["data", "miniimagenet", "--root", root, "--cache-dir", cache], capsys)
    assert code == 2 and "1 of the 2 images listed in" in err and "v1.jpg" in err, err


# ------------------------------------------------------------------------------------------ real Omniglot
REAL_ITERATIONS = 600  # x 8 tasks: about 2 minutes on 2 shared CPU cores; measured 0.69 +- 0.04 (100 tasks)


@pytest.mark.slow
def test_real_omniglot_5way_1shot_learns_far_above_chance(tmp_path, capsys):
    """A short real meta-training: the paper's 5-way 1-shot settings but meta-batch 8 and 600 iterations."""
    if not (REAL_OMNIGLOT / "images_background.zip").is_file():
        pytest.skip(f"real Omniglot not found at {REAL_OMNIGLOT} (the shared/ folder beside the checkout)")
    run = tmp_path / "omniglot"
    code, _, err = cli(
        ["train", "omniglot", "--root", REAL_OMNIGLOT, "--ways", 5, "--shots", 1, "--iterations", REAL_ITERATIONS,
         "--out", run, "--no-progress", "--set", "meta_batch_size=8", "--set", "val_every=0",
         "--set", f"checkpoint_every={REAL_ITERATIONS}"],
        capsys,
    )
    assert code == 0, err
    code, out, err = cli(["eval", run, "--tasks", 100, "--json"], capsys)
    assert code == 0, err
    accuracy = json.loads(out)["metrics"]["maml"]["accuracy"]
    assert accuracy["mean"][0] < 0.3  # before adaptation: chance (0.2)
    assert accuracy["mean"][10] > 0.55, accuracy  # after the 10 meta-test steps: far above chance


def test_original_batch_norm_and_inner_params_train_from_the_cli(tiny_omniglot, tmp_path, capsys):
    """--set norm=original: the batch-norm offsets are meta-learned (they move from zero) but not
    adapted; --set inner_params=head adapts the last layer only (ANIL); eval names both."""
    from safetensors.torch import load_file

    from fastmaml.engine.experiment import get_preset, make_maml
    from fastmaml.experiments import fewshot

    experiment = fewshot.build(get_preset("omniglot").make_config(root=str(tiny_omniglot), norm="original"))
    maml = make_maml(experiment)  # norm=original alone leaves the offsets out of the inner loop
    assert list(maml.outer_params()) == [f"features.{i}.bias" for i in (3, 8, 13, 18)]
    assert "features.1.bias" in maml.params() and "head.weight" in maml.params()
    run = tmp_path / "run"
    code, _, err = cli(["train", "omniglot", "--root", tiny_omniglot, "--ways", 5, "--shots", 1, "--iterations", 4,
                        "--out", run, "--set", "meta_batch_size=4", "--set", "val_every=0", "--set", "norm=original",
                        "--set", "inner_params=head", *QUIET], capsys)
    assert code == 0, err
    weights = load_file(run / "checkpoint.safetensors")
    offsets = [k for k in weights if k.startswith("maml/model.features.") and k.endswith(".bias")
               and weights[k].shape == (64,) and not k.replace(".bias", ".weight") in weights]
    assert len(offsets) == 4 and all(weights[k].abs().sum() > 0 for k in offsets)  # meta-learned: moved from zero
    code, out, err = cli(["eval", run, "--tasks", 6, "--steps", 1], capsys)
    assert code == 0, err
    assert out.startswith("omniglot-5way-1shot, conv 4x64, stride 2, the original's batch norm, inner loop adapts "
                          "head, at iteration 4:"), out
    code, _, err = cli(["train", "omniglot", "--root", tiny_omniglot, "--iterations", 4, "--out", tmp_path / "bad",
                        "--set", "norm=original", "--set", "inner_params=features.3", *QUIET], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "picks only parameters this model meta-learns without adapting (features.3.bias" in err, err


def test_anil_reuses_the_features_from_the_cli_and_trains_as_without(tiny_omniglot, tmp_path, capsys):
    """--set inner_params=head with 2 inner steps: the trainer's MAML computes the conv body's features
    once per task (reuse_features, the default), and 4 iterations end with the weights that
    --set reuse_features=false (the whole net at every inner step) ends with, up to float32 rounding."""
    from safetensors.torch import load_file

    common = ["--root", tiny_omniglot, "--ways", 5, "--shots", 1, "--iterations", 4, "--set", "meta_batch_size=4",
              "--set", "val_every=0", "--set", "inner_params=head", "--set", "inner_steps=2", *QUIET]
    weights = {}
    for reuse in ("true", "false"):
        run = tmp_path / reuse
        code, _, err = cli(["train", "omniglot", "--out", run, "--set", f"reuse_features={reuse}", *common], capsys)
        assert code == 0, err
        weights[reuse] = load_file(run / "checkpoint.safetensors")
    assert weights["true"].keys() == weights["false"].keys()
    # the conv biases before batch norm have a meta-gradient of zero, which float32 computes as noise
    # (1e-8 to 1e-4) that differs between the two; Adam turns noise into steps of +-lr: left out
    noise = {f"maml/model.features.{i}.bias" for i in (1, 5, 9, 13)}
    compared = [k for k, v in weights["true"].items() if k.startswith("maml/") and v.is_floating_point()
                and k not in noise]
    assert len(compared) == 14
    for key in compared:
        torch.testing.assert_close(weights["true"][key], weights["false"][key], rtol=1e-4, atol=1e-5)

    from fastmaml.engine.experiment import get_preset, make_maml
    from fastmaml.experiments import fewshot

    grads = []
    for reuse in (True, False):
        torch.manual_seed(0)
        experiment = fewshot.build(get_preset("omniglot").make_config(
            root=str(tiny_omniglot), inner_params=("head",), inner_steps=2, reuse_features=reuse))
        maml = make_maml(experiment)
        maml.meta_backward(experiment.sample(torch.Generator().manual_seed(0), "train", 2))
        assert maml._split == reuse
        grads.append(torch.cat([p.grad.reshape(-1) for p in maml.parameters()]))
    assert float((grads[0] - grads[1]).norm() / grads[1].norm()) < 1e-5


def test_the_conv_net_on_worker_threads_resumes_bit_for_bit(tiny_omniglot, tmp_path, capsys):
    """The long Omniglot runs' settings (2 worker threads of one torch thread each, the original's
    batch norm): 6 iterations in one go and 3 + 3 with a resume between end with the same weights,
    Adam moments and random streams, and log the same last loss."""
    from safetensors.torch import load_file

    common = ["--root", tiny_omniglot, "--ways", 5, "--shots", 1, "--set", "meta_batch_size=4", "--set", "val_every=0",
              "--set", "workers=2", "--set", "threads=1", "--set", "norm=original", "--set", "compile=off", *QUIET]
    full, part = tmp_path / "full", tmp_path / "part"
    assert cli(["train", "omniglot", "--iterations", 6, "--out", full, *common], capsys)[0] == 0
    assert cli(["train", "omniglot", "--iterations", 3, "--out", part, *common], capsys)[0] == 0
    code, _, err = cli(["train", "--resume", part, "--iterations", 6, "--no-progress"], capsys)
    assert code == 0, err
    a, b = load_file(full / "checkpoint.safetensors"), load_file(part / "checkpoint.safetensors")
    assert a.keys() == b.keys() and any(k.startswith("maml/model.") for k in a)
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert different == [], different

    def last_row(run):  # a row's loss averages the iterations since the row before: the last rows cover the 6th
        row = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
        return row["step"], row["meta_loss"]

    assert last_row(full) == last_row(part) and last_row(full)[0] == 6


def test_meta_test_tasks_are_the_same_whatever_device_holds_the_images(tiny_omniglot, monkeypatch):
    """On a GPU, sample drew every split's tasks from a CUDA generator, so `fastmaml eval` met other
    tasks than on the CPU while reports and compare took them for the same ones (0 of 100 alike). A
    second CPU device ("cpu:0", which takes the GPU branch) stands in for the GPU here."""
    from fastmaml.engine.experiment import get_preset
    from fastmaml.experiments import fewshot

    config = get_preset("omniglot").make_config(root=str(tiny_omniglot), ways=3)
    drawn = {}
    for device in ("cpu", "cpu:0"):
        monkeypatch.setattr(fewshot, "_device", lambda config, device=device: device)
        experiment = fewshot.build(config)
        drawn[device] = {split: experiment.sample(torch.Generator().manual_seed(7), split, 20)
                         for split in ("train", "val", "test")}
    for split in ("val", "test"):
        assert torch.equal(drawn["cpu"][split].support_x, drawn["cpu:0"][split].support_x)
        assert torch.equal(drawn["cpu"][split].query_x, drawn["cpu:0"][split].query_x)
    # meta-training keeps the device's own generator (seeded from the CPU stream): other tasks
    assert not torch.equal(drawn["cpu"]["train"].support_x, drawn["cpu:0"]["train"].support_x)
