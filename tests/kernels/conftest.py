import pytest
import torch


@pytest.fixture(autouse=True)
def single_cpu_thread():
    """Kernel tests use tiny tensors: one intra-op thread avoids thread-pool hand-offs that cost
    milliseconds per small matmul on a busy shared machine. Restored after each test."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
