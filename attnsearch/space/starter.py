"""The commented starter space file that ``attnsearch init`` writes (``starter_space.yaml``)."""
from __future__ import annotations

from pathlib import Path

STARTER_PATH = Path(__file__).with_name("starter_space.yaml")


def starter_text() -> str:
    return STARTER_PATH.read_text()


def write_starter(path: str | Path, overwrite: bool = False) -> Path:
    """Write the starter space to ``path``; refuses to replace an existing file unless asked."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"path: {str(path)!r} is a directory (give a file name such as space.yaml)")
    if path.exists() and not overwrite:
        raise ValueError(f"path: {str(path)!r} already exists (use --force to overwrite it)")
    if not path.parent.is_dir():
        raise ValueError(f"path: folder {str(path.parent)!r} does not exist")
    path.write_text(starter_text())
    return path
