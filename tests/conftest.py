"""Shared fixtures. Every test gets its own QIHUANG_HOME in a temporary directory."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def qihuang_home(tmp_path, monkeypatch):
    home = tmp_path / "qihuang_home"
    home.mkdir()
    monkeypatch.setenv("QIHUANG_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    return home
