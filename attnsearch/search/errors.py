"""The search service's own error type, in a module of its own so that light readers (the
``show`` table, the CLI) can raise and catch it without importing Optuna."""
from __future__ import annotations


class StudyError(ValueError):
    """A study cannot be created, found or resumed as asked (one line, no password)."""


__all__ = ["StudyError"]
