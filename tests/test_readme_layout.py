"""README's layout tree names every module and benchmark, so a newcomer can find each one."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _layout() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Layout"):]
    start = section.index("```") + 3
    return section[start:section.index("```", start)]


def test_every_module_and_benchmark_is_named_in_the_layout():
    layout = _layout()
    files = [p for p in (ROOT / "src" / "qihuang").rglob("*.py") if p.stem != "__init__"]
    files += list((ROOT / "benchmarks").glob("*.py"))
    missing = [str(p.relative_to(ROOT)) for p in files if not re.search(rf"\b{re.escape(p.stem)}\b", layout)]
    assert missing == []

