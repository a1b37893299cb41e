"""Fixtures of the fault suite: one Ray cluster per session, storages, and the fault table that
is printed at the end of the run (``pytest tests/reliability -s`` or in the terminal summary)."""
from __future__ import annotations


import pytest

import fault_scenarios

_ROWS: list = []


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray cluster for the whole session; the fault evaluations travel by value."""
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    fault_scenarios.make_pickle_by_value()
    yield ray
    if started:
        ray.shutdown()




@pytest.fixture
def record_row():
    """Add a scenario's row to the fault table printed at the end of the session."""
    return _ROWS.append


def pytest_terminal_summary(terminalreporter):
    if _ROWS:
        terminalreporter.section("fault table (tests/reliability)")
        terminalreporter.write_line(fault_scenarios.format_table(_ROWS))
