"""Where user data lives: ``$QIHUANG_HOME`` (default ``~/.qihuang``)."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """The qihuang data directory, created on first use."""
    root = Path(os.environ.get("QIHUANG_HOME") or Path.home() / ".qihuang").expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root


def default_db() -> Path:
    """The default knowledge-base file, ``$QIHUANG_HOME/kb.sqlite``."""
    return home() / "kb.sqlite"


def models_dir() -> Path:
    """Cached model directories (e.g. the converted default model)."""
    path = home() / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path


def resource(name: str) -> Path:
    """Path of a file shipped in ``qihuang/resources``."""
    return Path(__file__).parent / "resources" / name
