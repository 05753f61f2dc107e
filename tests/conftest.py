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


@pytest.fixture(scope="session")
def _default_model_cache(tmp_path_factory):
    """The default model converted from its GGUF once per session (~30 s)."""
    from pathlib import Path

    mp = pytest.MonkeyPatch()
    mp.setenv("QIHUANG_HOME", str(tmp_path_factory.mktemp("default_model_home")))
    try:
        from qihuang.models.load import resolve_model

        return Path(resolve_model("default"))
    finally:
        mp.undo()


@pytest.fixture
def default_model(_default_model_cache, qihuang_home):
    """Makes ``"default"`` resolve without converting again in this test's QIHUANG_HOME
    (a symlink to the session's converted copy). Returns the name ``"default"``.
    Use only in tests marked ``integration``."""
    link = qihuang_home / "models" / _default_model_cache.name
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(_default_model_cache, target_is_directory=True)
    return "default"


@pytest.fixture(scope="module")
def tiny_db(tmp_path_factory):
    """A fresh tiny fixture KB (tests/fixtures/tiny_kb.jsonl) per test module; yields its path."""
    from kb_fixture import make_tiny_kb

    path = tmp_path_factory.mktemp("kb") / "kb.sqlite"
    make_tiny_kb(path).close()
    return path
