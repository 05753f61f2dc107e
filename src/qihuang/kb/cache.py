"""Derived linking data (noise names, the entity automaton) cached under ``$QIHUANG_HOME/cache``.

Building them from CMeKG takes seconds (a pass over 967k triples, jieba's dictionary, 100k surfaces);
loading the cached copy takes a fraction of a second, so `qihuang kb link` starts fast. A cache file is
keyed by the KB's content (its sources, row counts), the linking resources (lexicon.yaml, kb_schema.yaml),
the code that builds them (link.py, noise.py) and :data:`FORMAT`; any change makes a new key, so a stale
copy is never used.
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qihuang.fileio import atomic_write_bytes
from qihuang.paths import home, resource

FORMAT = 3  # bump when what is cached changes shape (or how it is built)


def fingerprint(kb, extra: str = "") -> str:
    """A key for what ``kb`` holds and how it is linked."""
    h = hashlib.sha256(f"{FORMAT}|{extra}".encode())
    for row in kb.conn.execute("SELECT sha256, n_triples FROM sources ORDER BY id"):
        h.update(repr(row).encode())
    for table in ("entities", "triples", "aliases"):
        h.update(repr(kb.conn.execute(f"SELECT count(*), max(rowid) FROM {table}").fetchone()).encode())
    for name in ("lexicon.yaml", "kb_schema.yaml"):
        h.update(resource(name).read_bytes())
    for module in ("link.py", "noise.py"):  # the code that builds what is cached
        h.update(Path(__file__).with_name(module).read_bytes())
    return h.hexdigest()[:20]


def cached(kb, name: str, build: Callable[[], Any], extra: str = "") -> Any:
    """``build()``, or the copy cached for this KB and these resources."""
    path = home() / "cache" / f"{name}-{fingerprint(kb, extra)}.pkl"
    try:
        return pickle.loads(path.read_bytes())
    except FileNotFoundError:
        pass
    except Exception:  # noqa: BLE001 - a damaged cache file is rebuilt
        pass
    value = build()
    atomic_write_bytes(path, pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))
    return value


def digest(names: frozenset[str]) -> str:
    """A short digest of a set of names (part of a cache key)."""
    h = hashlib.sha256()
    for n in sorted(names):
        h.update(n.encode("utf-8") + b"\0")
    return h.hexdigest()[:16]
