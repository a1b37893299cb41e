"""Fixtures for the model tests (the tiny models themselves are in tiny_models.py)."""
import pytest
import torch

from attnsearch.space import MECHANISMS


@pytest.fixture(autouse=True)
def one_thread():
    # tiny float64 ops: intra-op threads only add contention on a shared 2-core machine
    # (measured ~19x slower decode steps with 2 threads under load); restored afterwards
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(params=list(MECHANISMS))
def mechanism_name(request):
    return request.param
