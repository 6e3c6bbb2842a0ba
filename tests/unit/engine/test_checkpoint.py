"""Checkpoint files: atomic writes, the previous copy, corrupt files, and the state round trip."""

import os

import pytest
import torch

from fastmaml.engine import checkpoint
from fastmaml.errors import CheckpointError


def test_pack_unpack_round_trips_an_optimizer_state():
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters(), lr=0.01, betas=(0.8, 0.99))
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    tensors = {}
    packed = checkpoint.pack(opt.state_dict(), "opt", tensors)
    assert tensors and all(k.startswith("opt") for k in tensors)
    restored = checkpoint.unpack(packed, tensors)
    fresh = torch.optim.Adam(torch.nn.Linear(3, 2).parameters(), lr=1.0)
    fresh.load_state_dict(restored)
    assert fresh.param_groups[0]["lr"] == 0.01 and tuple(fresh.param_groups[0]["betas"]) == (0.8, 0.99)
    for a, b in zip(opt.state.values(), fresh.state.values()):
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_save_keeps_previous_and_load_latest_falls_back(tmp_path):
    path = tmp_path / "checkpoint.safetensors"
    checkpoint.save(path, {"w": torch.zeros(2)}, {"step": 1})
    checkpoint.save(path, {"w": torch.ones(2)}, {"step": 2})
    tensors, meta = checkpoint.load(path)
    assert meta["step"] == 2 and torch.equal(tensors["w"], torch.ones(2))
    assert checkpoint.load(checkpoint.previous_path(path))[1]["step"] == 1
    assert not list(tmp_path.glob(".*tmp"))  # no temporary files left behind
    path.write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="corrupt"):
        checkpoint.load(path)
    _, meta, used = checkpoint.load_latest(path)
    assert meta["step"] == 1 and used.name == "checkpoint.prev.safetensors"


def test_foreign_safetensors_file_is_rejected(tmp_path):
    import safetensors.torch

    path = tmp_path / "other.safetensors"
    safetensors.torch.save_file({"w": torch.zeros(1)}, str(path))
    with pytest.raises(CheckpointError, match="not a fastmaml checkpoint"):
        checkpoint.load(path)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        checkpoint.load(tmp_path / "missing.safetensors")


def test_replace_atomically_through_a_symbolic_link_updates_the_file_it_links_to(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    run = tmp_path / "run"
    run.mkdir()
    (shared / "config.json").write_text("old")
    (run / "config.json").symlink_to(shared / "config.json")
    checkpoint.replace_atomically(run / "config.json", b"new")
    assert (run / "config.json").is_symlink()  # the link stays a link ...
    assert (shared / "config.json").read_text() == "new"  # ... and the file it links to is replaced
    assert not list(run.glob(".*tmp")) and not list(shared.glob(".*tmp"))


def test_replace_atomically_writes_into_a_named_pipe_instead_of_replacing_it(tmp_path):
    """adapt --out FIFO (or /dev/null, /dev/full) renamed a temporary file onto the path: the pipe's
    reader got nothing and the device node became a regular file (found by a review, as root)."""
    import stat
    import threading

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    checkpoint.replace_atomically(fifo, b"file,prediction\n")
    reader.join(timeout=10)
    assert got == [b"file,prediction\n"]
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    with pytest.raises(IsADirectoryError):
        checkpoint.replace_atomically(tmp_path, b"x")
