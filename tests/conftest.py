"""Session-wide test settings.

Triton binds each @triton.jit function to the interpreter or the compiler when it is decorated,
so the choice must be made before any test module imports a Triton kernel: without a GPU, every
kernel runs under the interpreter (fp32 NumPy), which is how CI checks them.
"""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture
def sqlite_url(tmp_path):
    return f"sqlite:///{tmp_path / 'study.db'}"


@pytest.fixture
def pg_url():
    """The PostgreSQL test server's URL; skipped without one, except in CI where it must exist."""
    url = os.environ.get("ATTNSEARCH_TEST_PG_URL")
    if not url:
        if os.environ.get("CI"):
            pytest.fail("CI is set but ATTNSEARCH_TEST_PG_URL is not: the PostgreSQL tests must run in CI")
        pytest.skip("ATTNSEARCH_TEST_PG_URL not set (PostgreSQL tests run in CI)")
    return url
