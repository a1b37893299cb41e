"""Shared constants and helpers of the CLI tests (a plain module: conftest is not importable
by name when several test folders have one)."""
from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

SYNTH_STUDY = "synth"
SYNTH_TRIALS = 12
FAILING_TRIAL = 8


def copy_db(src: Path, dst: Path) -> Path:
    """A consistent copy of a SQLite database in WAL mode (the backup API, not a file copy)."""
    with sqlite3.connect(src) as a, sqlite3.connect(dst) as b:
        a.backup(b)
    return dst


def db_digest(path: Path) -> str:
    """A hash of every row of every table: equal digests mean an unchanged database."""
    with sqlite3.connect(path) as conn:
        return hashlib.sha256("\n".join(conn.iterdump()).encode()).hexdigest()


def assert_user_error(result, *words):
    """Exit code 2, exactly one line on stderr naming the problem, no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert isinstance(result.exception, SystemExit), result.exception
    err = result.stderr.strip()
    assert err.startswith("Error: "), err
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in result.output
    for word in words:
        assert word in err, (word, err)
    return err
