"""A tiny knowledge base for tests, built from tests/fixtures/tiny_kb.jsonl (written for these tests)."""

from __future__ import annotations

from pathlib import Path

from qihuang.kb import KnowledgeBase

TINY_KB_JSONL = Path(__file__).parent / "fixtures" / "tiny_kb.jsonl"


def make_tiny_kb(path: str | Path) -> KnowledgeBase:
    """Create (or reuse) a KB at ``path`` holding the tiny fixture entities."""
    kb = KnowledgeBase.create(path)
    if kb.stats()["triples"] == 0:
        kb.import_source(TINY_KB_JSONL, progress=False)
    return kb


def kb_of_rows(path: str | Path, rows: list[dict]) -> KnowledgeBase:
    """A KB at ``path`` (a ``.sqlite`` file) imported from ``rows`` in the JSON-lines shape, written beside it."""
    import json

    path = Path(path)
    src = path.with_suffix(".jsonl")
    src.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    kb = KnowledgeBase.create(path)
    kb.import_source(src, progress=False)
    return kb
