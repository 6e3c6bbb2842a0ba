"""RL tests run tiny tensor ops in Python loops (one per time step): with more than one torch thread
on a busy machine each op waits on its thread pool, and the sampler tests ran 10-40x slower."""

import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
