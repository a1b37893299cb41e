"""Fixtures for the search service tests: one Ray cluster per session, study spaces, storages."""
from __future__ import annotations

import uuid

import pytest

from search_spaces import TEST_SPACE  # noqa: E402 (shared with the test modules)


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray cluster for the whole test session (starting one costs seconds)."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()




@pytest.fixture
def study_name(request):
    """A study name no other test (or earlier run against the same PostgreSQL) uses."""
    return f"{request.node.name[:40]}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def test_space():
    from attnsearch import search

    return search.load_space(dict(TEST_SPACE))
