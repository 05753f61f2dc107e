"""The SQLite knowledge-base store and its Python API (:class:`KnowledgeBase`)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path

from qihuang.errors import QihuangError
from qihuang.kb.schema import load_schema
from qihuang.kb.types import Entity, Fact, LinkResult, Mention
from qihuang.paths import default_db

# Small named migrations, applied in order once each (recorded in _migrations).
MIGRATIONS: list[tuple[str, str]] = [
    ("0001_initial", """
        CREATE TABLE sources (
            id INTEGER PRIMARY KEY, name TEXT NOT NULL, kind TEXT NOT NULL, sha256 TEXT NOT NULL,
            imported_at TEXT NOT NULL, n_triples INTEGER NOT NULL, UNIQUE(sha256));
        CREATE TABLE entities (
            id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, type TEXT NOT NULL DEFAULT 'other',
            is_subject INTEGER NOT NULL DEFAULT 0);
        CREATE TABLE triples (
            id INTEGER PRIMARY KEY, subject_id INTEGER NOT NULL REFERENCES entities(id),
            relation TEXT NOT NULL, attribute TEXT NOT NULL, value TEXT NOT NULL,
            source_id INTEGER REFERENCES sources(id), UNIQUE(subject_id, relation, value));
        CREATE INDEX triples_by_subject_attr ON triples(subject_id, attribute);
        CREATE TABLE aliases (
            alias TEXT NOT NULL, entity_id INTEGER NOT NULL REFERENCES entities(id),
            relation TEXT NOT NULL, UNIQUE(alias, entity_id));
        CREATE INDEX aliases_by_alias ON aliases(alias);
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    """),
    # how many triples of the same attribute cite a value: most-cited values are listed first
    ("0002_value_weight", "ALTER TABLE triples ADD COLUMN weight INTEGER NOT NULL DEFAULT 0"),
    # reverse and symptom lookups read triples by value ("which diseases list 布洛芬 under 药物治疗")
    ("0003_value_index", "CREATE INDEX triples_by_value ON triples(value, attribute)"),
]

# One order for facts everywhere (show, link, grounding, data building): by attribute, the primary
# relation of the attribute first, then the most-cited values, then import order.


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


def migrate(conn: sqlite3.Connection) -> list[str]:
    """Apply pending migrations; returns the names applied."""
    conn.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)")
    done = {r[0] for r in conn.execute("SELECT name FROM _migrations")}
    applied = []
    for name, sql in MIGRATIONS:
        if name in done:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            for stmt in filter(str.strip, sql.split(";")):
                conn.execute(stmt)
            conn.execute("INSERT INTO _migrations VALUES (?, datetime('now'))", (name,))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        applied.append(name)
    return applied


class KnowledgeBase:
    """An embedded SQLite knowledge base: entities, aliases, triples with canonical attributes."""

    def __init__(self, conn: sqlite3.Connection, path: Path):
        self.conn = conn
        self.path = path
        self.schema = load_schema()
        self._linker = None
        self._lookups = None
        self._rare: dict[int, frozenset[str]] = {}
        self._support: dict[str, int] | None = None
        self._noise: frozenset[str] | None = None
        self._departments = None
        self.hospital = None  # a hospital's own department list (use_departments), else None

    # -- opening -------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path | None = None) -> "KnowledgeBase":
        """Open an existing knowledge base (default ``$QIHUANG_HOME/kb.sqlite``)."""
        path = Path(path) if path else default_db()
        if not path.exists():
            raise QihuangError(f"no knowledge base at {path}: run `qihuang kb import` first")
        conn = _connect(path)
        migrate(conn)
        return cls(conn, path)

    @classmethod
    def create(cls, path: str | Path | None = None) -> "KnowledgeBase":
        """Open a knowledge base, creating an empty one if none exists."""
        path = Path(path) if path else default_db()
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = _connect(path)
        migrate(conn)
        return cls(conn, path)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> "KnowledgeBase":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- importing -----------------------------------------------------------------------
    def import_source(self, source: str | Path = "cmekg", *, skip_bad: bool = False, progress: bool = True):
        """Import a source ("cmekg", or a .jsonl / .csv / .tsv path) in one transaction."""
        from qihuang.kb.importers import import_source

        report = import_source(self, source, skip_bad=skip_bad, progress=progress)
        self._linker, self._lookups, self._rare, self._support, self._noise = None, None, {}, None, None
        self._departments = None
        return report

    # -- queries -------------------------------------------------------------------------
    def _resolve(self, name: str) -> tuple[int, str, str] | None:
        row = self.conn.execute("SELECT id, name, type FROM entities WHERE name = ?", (name.strip(),)).fetchone()
        if row is None:
            row = self.conn.execute(
                "SELECT e.id, e.name, e.type FROM aliases a JOIN entities e ON e.id = a.entity_id "
                "WHERE a.alias = ? ORDER BY e.is_subject DESC, e.id LIMIT 1", (name.strip(),)).fetchone()
        return row

    def _facts_by_id(self, entity_id: int, name: str, attributes: Iterable[str] | None = None,
                     max_values: int | None = None) -> list[Fact]:
        sql = "SELECT relation, attribute, value, weight, id FROM triples WHERE subject_id = ?"
        args: list = [entity_id]
        if attributes is not None:
            attributes = list(attributes)
            sql += f" AND attribute IN ({','.join('?' * len(attributes))})"
            args += attributes
        rows = self.conn.execute(sql, args).fetchall()  # sorted here once: cheaper than ORDER BY and a re-sort
        rank = self.schema.relation_rank
        if attributes is None:  # every attribute (show): by attribute key, primary relation first, then weight
            rows.sort(key=lambda r: (r[1], rank.get(r[0], 99), -r[3], r[4]))
        else:  # the attributes in the order asked (a type's defaults: 适应症 before 不良反应)
            order = {a: i for i, a in enumerate(attributes)}
            rows.sort(key=lambda r: (order.get(r[1], len(order)), rank.get(r[0], 99), -r[3], r[4]))
        if max_values is not None:
            kept, seen = [], {}
            for row in rows:
                seen[row[1]] = seen.get(row[1], 0) + 1
                if seen[row[1]] <= max_values:
                    kept.append(row)
            rows = kept
        return [Fact(name, attr, rel, value) for rel, attr, value, _w, _id in rows]

    def show(self, name: str) -> Entity | None:
        """An entity with all its facts (by name or alias), or None."""
        row = self._resolve(name)
        if row is None:
            return None
        entity_id, canonical, etype = row
        aliases = [r[0] for r in self.conn.execute(
            "SELECT alias FROM aliases WHERE entity_id = ? ORDER BY rowid", (entity_id,))]
        return Entity(canonical, etype, aliases, self._facts_by_id(entity_id, canonical))

    def facts(self, entity: str, attributes: list[str] | None = None, max_values: int | None = None) -> list[Fact]:
        """Facts of an entity, optionally restricted to canonical attributes."""
        row = self._resolve(entity)
        return [] if row is None else self._facts_by_id(row[0], row[1], attributes, max_values)

    def entity_type(self, name: str) -> str | None:
        row = self._resolve(name)
        return row[2] if row else None

    def rare_values(self, min_support: int = 3) -> frozenset[str]:
        """Names that are only ever values (no entry of their own) and are cited by fewer than
        ``min_support`` triples. In CMeKG these are mostly extraction noise (结合, 常见的, 有疼痛,
        哮喘等), not medical names: an answer that uses such a word names nothing. On a large KB
        :meth:`noise_names` contains these (default ``min_support``), less the targets of colloquial names."""
        if min_support not in self._rare:
            subjects = {n for (n,) in self.conn.execute("SELECT name FROM entities WHERE is_subject = 1")}
            self._rare[min_support] = frozenset(
                v for v, n in self._value_support().items() if n < min_support and v not in subjects)
        return self._rare[min_support]

    def _value_support(self) -> dict[str, int]:
        if self._support is None:
            from qihuang.kb.noise import value_support

            self._support = value_support(self.conn)
        return self._support

    def noise_names(self) -> frozenset[str]:
        """KB names that are generic words, never linked as entities (the one noise rule shared by
        linking and answer verification; see :mod:`qihuang.kb.noise`): link stopwords, and value-only
        names that are rare in a large KB or no more frequent in the KB than in general Chinese."""
        if self._noise is None:
            from qihuang.kb.lexicon import load_lexicon
            from qihuang.kb.noise import compute_noise

            from qihuang.kb.cache import cached

            rule = load_lexicon().noise
            self._noise = cached(self, "noise", lambda: compute_noise(
                self.conn, self.schema.link_stopwords, self.rare_values(rule.min_support), rule,
                support=self._value_support()))
        return self._noise

    def entity_names(self, type: str | None = None, subjects_only: bool = True) -> list[str]:
        sql, args = "SELECT name FROM entities WHERE 1", []
        if subjects_only:
            sql += " AND is_subject = 1"
        if type:
            sql += " AND type = ?"
            args.append(type)
        return [r[0] for r in self.conn.execute(sql + " ORDER BY id", args)]

    def iter_entities(self, type: str | None = None) -> Iterator[Entity]:
        """All subject entities with their facts, in one streaming pass (fast, for data building)."""
        aliases: dict[int, list[str]] = {}
        for alias, eid in self.conn.execute("SELECT alias, entity_id FROM aliases ORDER BY rowid"):
            aliases.setdefault(eid, []).append(alias)
        sql = ("SELECT e.id, e.name, e.type, t.relation, t.attribute, t.value FROM triples t "
               "JOIN entities e ON e.id = t.subject_id")
        args: list = []
        if type:
            sql += " WHERE e.type = ?"
            args.append(type)
        rank = self.schema.relation_rank
        current: Entity | None = None
        current_id = None
        rows = self.conn.execute(sql + " ORDER BY t.subject_id, t.attribute, t.weight DESC, t.id", args)
        for eid, name, etype, rel, attr, value in rows:
            if eid != current_id:
                if current is not None:
                    current.facts.sort(key=lambda f: (f.attribute, rank.get(f.relation, 99)))
                    yield current
                current, current_id = Entity(name, etype, aliases.get(eid, []), []), eid
            current.facts.append(Fact(name, attr, rel, value))
        if current is not None:
            current.facts.sort(key=lambda f: (f.attribute, rank.get(f.relation, 99)))
            yield current

    def attributes(self) -> dict[str, str]:
        return {k: a.label for k, a in self.schema.attributes.items()}

    def stats(self) -> dict:
        one = lambda sql: self.conn.execute(sql).fetchone()[0]  # noqa: E731
        by_type = dict(self.conn.execute(
            "SELECT type, COUNT(*) FROM entities WHERE is_subject = 1 GROUP BY type ORDER BY 2 DESC"))
        by_attr = dict(self.conn.execute(
            "SELECT attribute, COUNT(*) FROM triples GROUP BY attribute ORDER BY 2 DESC"))
        sources = [dict(zip(("name", "kind", "sha256", "imported_at", "n_triples"), r)) for r in self.conn.execute(
            "SELECT name, kind, sha256, imported_at, n_triples FROM sources ORDER BY id")]
        return {
            "path": str(self.path),
            "entities": one("SELECT COUNT(*) FROM entities WHERE is_subject = 1"),
            "nodes": one("SELECT COUNT(*) FROM entities"),
            "triples": one("SELECT COUNT(*) FROM triples"),
            "aliases": one("SELECT COUNT(*) FROM aliases"),
            "relations": one("SELECT COUNT(DISTINCT relation) FROM triples"),
            "entity_types": by_type,
            "attributes": by_attr,
            "sources": sources,
        }

    # -- linking -------------------------------------------------------------------------
    @property
    def linker(self):
        """The KB's :class:`~qihuang.kb.link.Linker` (built at first use: names, aliases, colloquial
        names, drug stems, minus :meth:`noise_names`; cues plus the learned attribute detector)."""
        if self._linker is None:
            from qihuang.kb.link import Linker

            self._linker = Linker.build(self)
        return self._linker

    def find_entities(self, text: str) -> list[Mention]:
        """KB entities mentioned in ``text``: non-overlapping, longest match first, with offsets, each
        marked ``negated`` when a negation cue scopes over it (没有发烧)."""
        return self.linker.find_entities(text)

    def detect_attributes(self, text: str) -> list[str]:
        """Canonical attributes the wording of ``text`` asks about (cues, else the learned detector)."""
        return self.linker.detect_attributes(text, self.find_entities(text))

    @property
    def lookups(self):
        """Caches for the reverse, symptom, two-hop and lexical lookups (built lazily)."""
        if self._lookups is None:
            from qihuang.kb.retrieve import Lookups

            self._lookups = Lookups(self)
        return self._lookups

    @property
    def departments(self):
        """Department evidence for retrieval (:class:`~qihuang.kb.department_rank.DepartmentIndex`: the
        KB's 就诊科室 values mapped to hospital departments, and the hospital list in use)."""
        if self._departments is None:
            from qihuang.kb.department_rank import DepartmentIndex

            self._departments = DepartmentIndex(self)
        self._departments.hospital = self.hospital
        return self._departments

    def warm(self) -> None:
        """Build now what linking otherwise builds on first use (the linker, the lookups' listings and name
        indexes, the misspelling and body-part indexes, the department evidence, jieba and the homophone
        readings), so that no question waits for it: commands call it at start-up (the BM25 index of the
        no-entity fallback is left to its first use: :attr:`lookups` ``.lexical``)."""
        import jieba

        from qihuang.kb.fuzzy import readings

        jieba.initialize()
        readings("痛")
        self.linker.detect_attributes("预热", [])
        self.lookups.warm()
        self.departments.warm()

    def use_departments(self, path: str | Path | None) -> None:
        """Name only the departments of a hospital's own list in retrieval's facts (a text file, one
        department per line, or a YAML list; see :func:`qihuang.kb.departments.read_hospital`); None goes
        back to the standard list."""
        from qihuang.kb.departments import read_hospital

        self.hospital = read_hospital(path) if path else None

    def link(self, text: str, max_values: int | None = None, history: list[str] | None = None) -> LinkResult:
        """Retrieval's one entry point: entities, asked attributes and the facts that answer ``text``.

        Per named entity, the asked attributes (of a shared cue, the first one the entity has), else the
        default attributes of its type in the schema's order; an entity that is only ever a value
        (布洛芬, 头痛) is answered backwards through the schema's ``inverse`` map; described symptoms give
        ranked candidate diseases; a disease's drugs give their contraindications etc. (two hops); with
        no entity, the entities of ``history`` (earlier user turns, oldest first) or a BM25 fallback.
        Each fact says how it was reached (``Fact.via``); see :mod:`qihuang.kb.retrieve`."""
        from qihuang.kb.retrieve import retrieve

        return retrieve(self, text, max_values=max_values, history=history)
