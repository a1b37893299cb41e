"""Fuzz suite: reports how many inputs each fuzz target tried (terminal summary)."""
from __future__ import annotations

from fuzz_inputs import OUTCOMES, TRIED


def pytest_terminal_summary(terminalreporter):
    if TRIED:
        terminalreporter.section("fuzz inputs tried (tests/fuzz)")
        for target, n in sorted(TRIED.items()):
            terminalreporter.write_line(f"{target}: {n}")
        terminalreporter.write_line(f"total: {sum(TRIED.values())}")
        if OUTCOMES:
            terminalreporter.write_line("CLI outcomes: " + ", ".join(f"{k.split('`')[1]} exit {k.rsplit(' ', 1)[1]}: {n}"
                                                                     for k, n in sorted(OUTCOMES.items())))
