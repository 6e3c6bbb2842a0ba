"""Which devices a run may name: one clear error for each kind of device this process cannot use
(the GPUs and accelerators faked, as this machine may have none)."""

import pytest
import torch

from fastmaml.engine.distributed import check_device, cuda_or_cpu
from fastmaml.errors import ConfigError


def test_a_cuda_index_must_be_a_gpu_of_this_machine(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    check_device("cuda")
    check_device("cuda:1")
    with pytest.raises(ConfigError, match=r"shows 2 CUDA GPU\(s\), cuda:0 to cuda:1; choose one"):
        check_device("cuda:2")


def test_no_gpu_no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    hint = r"sees no CUDA GPU; run on the CPU instead \(--device cpu, or --set device=cpu\)"
    with pytest.raises(ConfigError, match=hint):
        check_device("cuda")


@pytest.mark.parametrize("available", [True, False])
def test_another_accelerator_is_taken_where_torch_has_it(monkeypatch, available):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: available)
    if available:
        check_device("mps")
    else:
        with pytest.raises(ConfigError, match="has no MPS device; run on the CPU instead"):
            check_device("mps")


@pytest.mark.parametrize("device, message", [("tpu", "unknown device"), ("meta", "not one fastmaml runs on"),
                                             ("cpu:0", None), ("cpu", None)])
def test_names(device, message):
    if message is None:
        check_device(device)
    else:
        with pytest.raises(ConfigError, match=message):
            check_device(device)


def test_a_trained_run_is_used_on_this_machine_s_gpu_or_cpu(monkeypatch):
    """Where eval and adapt put a run trained elsewhere: its GPU if this machine has it, the first GPU
    if not (trained on cuda:5, used on one GPU), the CPU without CUDA."""
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert [cuda_or_cpu(d) for d in ("cuda", "cuda:1", "cuda:5", "cpu")] == ["cuda", "cuda:1", "cuda", "cpu"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert [cuda_or_cpu(d) for d in ("cuda", "cuda:1", "cpu")] == ["cpu", "cpu", "cpu"]
