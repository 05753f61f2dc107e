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


# --- tiny random models (training area); built once per session -------------------------


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory):
    """Directory of a tiny random Llama model + byte-level BPE tokenizer (pad == eos)."""
    from tiny_models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny_llama"), "llama")


@pytest.fixture(scope="session")
def tiny_qwen2(tmp_path_factory):
    """Directory of a tiny random Qwen2 model + tokenizer (pad == eos)."""
    from tiny_models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny_qwen2"), "qwen2")
