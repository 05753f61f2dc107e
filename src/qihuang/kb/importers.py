"""Importers: CMeKG (the PyCMeKG pickle), cMeKG-style JSON lines, CSV/TSV triples.

Every source is read as a stream of ``(line, subject, relation, value)``; the whole import runs in
one SQLite transaction, so a failed or interrupted import leaves the previous KB as it was, and
``INSERT OR IGNORE`` on unique keys makes re-importing the same source a no-op.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
import pickle
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

from qihuang.errors import InputError, QihuangError
from qihuang.kb.schema import ALIAS, load_schema

Row = tuple[int, str, str, str]  # (line, subject, relation, value)
BATCH = 50_000
MAX_NODE_LEN = 24  # values longer than this are sentences, not entity names
SUBJECT_KEYS = ("中心词", "entity", "name")
_CSV_HEADERS = ({"subject", "predicate", "object"}, {"head", "relation", "tail"}, {"主体", "关系", "客体"},
                {"头实体", "关系", "尾实体"}, {"实体", "关系", "值"})


@dataclass
class ImportReport:
    source: str
    kind: str
    records: int = 0
    triples_in_source: int = 0
    triples_added: int = 0
    nodes_added: int = 0
    skipped: int = 0
    skip_reasons: dict[str, int] = field(default_factory=dict)
    skip_examples: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


class _Skipper:
    """Raises on the first bad record, or counts and continues with ``--skip-bad``."""

    def __init__(self, skip_bad: bool, report: ImportReport):
        self.skip_bad, self.report, self.reasons = skip_bad, report, Counter()

    def bad(self, reason: str, detail: str, path: str, line: int) -> None:
        if not self.skip_bad:
            raise InputError(f"{reason}: {detail}" if detail else reason, path=path, line=line)
        self.report.skipped += 1
        self.reasons[reason] += 1
        if len(self.report.skip_examples) < 10:
            self.report.skip_examples.append(f"{path}:{line}: {reason}: {detail}".rstrip(": "))


def cmekg_path() -> Path:
    """Location of ``cmekg.pkl`` inside the installed PyCMeKG package (not imported: it pulls torch)."""
    spec = importlib.util.find_spec("pyCMeKG")
    if spec is None or not spec.submodule_search_locations:
        raise QihuangError("the CMeKG source needs the PyCMeKG package: pip install PyCMeKG")
    path = Path(list(spec.submodule_search_locations)[0]) / "model" / "cmekg.pkl"
    if not path.exists():
        raise QihuangError(f"PyCMeKG is installed but {path} is missing")
    return path


def _value_list(values, path: str, line: int, relation: str, skip: _Skipper) -> list[str] | None:
    if isinstance(values, (str, int, float)):
        values = [values]
    if not isinstance(values, list) or not all(isinstance(v, (str, int, float)) for v in values):
        skip.bad("bad value", f"field {relation!r} must be a string or a list of strings", path, line)
        return None
    return [str(v).strip() for v in values if str(v).strip()]


def _rows_from_dict(line: int, subject: str, relations: dict, path: str, skip: _Skipper) -> Iterator[Row]:
    for relation, values in relations.items():
        relation = str(relation).strip()
        if relation in SUBJECT_KEYS or not relation:
            continue
        for value in _value_list(values, path, line, relation, skip) or ():
            yield line, subject, relation, value


def read_cmekg(path: Path, skip: _Skipper) -> Iterator[Row]:
    with open(path, "rb") as fh:
        data = pickle.load(fh)  # trusted: the data file of an installed package
    if not isinstance(data, dict):
        raise InputError("expected a dict entity -> {relation: [values]}", path=str(path))
    for line, (subject, relations) in enumerate(data.items(), 1):
        if not isinstance(subject, str) or not isinstance(relations, dict):
            skip.bad("bad entity", repr(subject)[:40], str(path), line)
            continue
        skip.report.records += 1
        yield from _rows_from_dict(line, subject.strip(), relations, str(path), skip)


def _decoded_lines(path: Path, skip: _Skipper) -> Iterator[tuple[int, str]]:
    with open(path, "rb") as fh:
        for line, raw in enumerate(fh, 1):
            try:
                text = raw.decode("utf-8-sig" if line == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                skip.bad("not UTF-8", f"byte {exc.start} cannot be decoded; save the file as UTF-8", str(path), line)
                continue
            if text.strip():
                yield line, text.rstrip("\r\n")


def read_jsonl(path: Path, skip: _Skipper) -> Iterator[Row]:
    for line, text in _decoded_lines(path, skip):
        try:
            record = json.loads(text)
        except json.JSONDecodeError as exc:
            skip.bad("malformed JSON", exc.msg + f" at column {exc.colno}", str(path), line)
            continue
        if not isinstance(record, dict):
            skip.bad("not an object", "each line must be a JSON object", str(path), line)
            continue
        subject = next((record[k] for k in SUBJECT_KEYS if k in record), None)
        if not isinstance(subject, str) or not subject.strip():
            skip.bad("missing 中心词", "each line needs a non-empty 中心词 (the entity name)", str(path), line)
            continue
        skip.report.records += 1
        yield from _rows_from_dict(line, subject.strip(), record, str(path), skip)


def read_triples(path: Path, skip: _Skipper) -> Iterator[Row]:
    delimiter = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
    for line, text in _decoded_lines(path, skip):
        cells = next(csv.reader([text], delimiter=delimiter))
        if line == 1 and {c.strip().lower() for c in cells} in _CSV_HEADERS:
            continue
        if len(cells) != 3:
            skip.bad("wrong column count", f"expected 3 columns (subject{delimiter!r}predicate"
                     f"{delimiter!r}object), found {len(cells)}", str(path), line)
            continue
        subject, relation, value = (c.strip() for c in cells)
        if not (subject and relation and value):
            skip.bad("empty field", "subject, predicate and object must all be non-empty", str(path), line)
            continue
        skip.report.records += 1
        yield line, subject, relation, value


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def resolve_source(source: str | Path) -> tuple[Path, str]:
    """(path, kind) of a source given as "cmekg" or a file path."""
    if str(source).lower() == "cmekg":
        return cmekg_path(), "cmekg"
    path = Path(source)
    if not path.is_file():
        raise InputError("no such file", path=str(path))
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        return path, "jsonl"
    if suffix in (".csv", ".tsv", ".tab"):
        return path, "triples"
    if suffix == ".pkl":
        return path, "cmekg"
    raise InputError(f"unknown source type {suffix!r}: use 'cmekg', .jsonl, .csv or .tsv", path=str(path))


_READERS = {"cmekg": read_cmekg, "jsonl": read_jsonl, "triples": read_triples}


class _Writer:
    """Turns rows into entity, triple and alias inserts inside one open transaction."""

    def __init__(self, conn, source_id: int):
        self.conn, self.source_id, self.schema = conn, source_id, load_schema()
        self.ids: dict[str, int] = {n: i for i, n in conn.execute("SELECT id, name FROM entities")}
        self.next_id = max(self.ids.values(), default=0) + 1
        self.new_entities: list[tuple[int, str, str]] = []
        self.subjects: set[int] = set()
        self.triples: list[tuple] = []
        self.aliases: list[tuple] = []
        self.nodes_added = self.triples_seen = 0

    def _id(self, name: str, etype: str) -> int:
        eid = self.ids.get(name)
        if eid is None:
            eid = self.ids[name] = self.next_id
            self.next_id += 1
            self.new_entities.append((eid, name, etype))
            self.nodes_added += 1
        return eid

    def add(self, subject: str, relation: str, value: str) -> None:
        attribute = self.schema.attribute_of(relation)
        sid = self._id(subject, "other")
        self.subjects.add(sid)
        self.triples.append((sid, relation, attribute, value, self.source_id))
        self.triples_seen += 1
        spec = self.schema.attributes.get(attribute)
        if attribute == ALIAS:
            if 2 <= len(value) <= 64 and value != subject:
                self.aliases.append((value, sid, relation))
        elif spec and spec.object_type and 2 <= len(value) <= MAX_NODE_LEN:
            self._id(value, spec.object_type)
        if len(self.triples) >= BATCH:
            _flush(self)

    def finish(self) -> int:
        _flush(self)
        self.conn.executemany("UPDATE entities SET is_subject = 1 WHERE id = ?", ((i,) for i in self.subjects))
        rels: dict[int, set[str]] = {}
        for sid, rel in self.conn.execute("SELECT DISTINCT subject_id, relation FROM triples"):
            rels.setdefault(sid, set()).add(rel)
        self.conn.execute("CREATE TEMP TABLE value_weight AS SELECT attribute, value, COUNT(*) AS n "
                          "FROM triples GROUP BY attribute, value")
        self.conn.execute("CREATE UNIQUE INDEX temp.value_weight_key ON value_weight(attribute, value)")
        self.conn.execute("UPDATE triples SET weight = (SELECT n FROM value_weight w WHERE "
                          "w.attribute = triples.attribute AND w.value = triples.value)")
        self.conn.execute("DROP TABLE temp.value_weight")
        inferred = ((self.schema.infer_type(r), sid) for sid, r in rels.items())
        self.conn.executemany("UPDATE entities SET type = ? WHERE id = ?", ((t, i) for t, i in inferred if t != "other"))
        return self.nodes_added


def _flush(writer: _Writer) -> None:
    """Write the buffered rows (one batch; the transaction stays open)."""
    c = writer.conn
    c.executemany("INSERT OR IGNORE INTO entities (id, name, type) VALUES (?, ?, ?)", writer.new_entities)
    c.executemany("INSERT OR IGNORE INTO triples (subject_id, relation, attribute, value, source_id) "
                  "VALUES (?, ?, ?, ?, ?)", writer.triples)
    c.executemany("INSERT OR IGNORE INTO aliases (alias, entity_id, relation) VALUES (?, ?, ?)", writer.aliases)
    writer.new_entities, writer.triples, writer.aliases = [], [], []


def import_source(kb, source: str | Path, *, skip_bad: bool = False, progress: bool = True) -> ImportReport:
    """Import ``source`` into ``kb`` atomically and idempotently."""
    t0 = time.perf_counter()
    path, kind = resolve_source(source)
    report = ImportReport(source="cmekg" if str(source).lower() == "cmekg" else str(path), kind=kind)
    skip = _Skipper(skip_bad, report)
    conn = kb.conn
    before = conn.execute("SELECT COUNT(*) FROM triples").fetchone()[0]
    sha = _sha256(path)
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("INSERT OR IGNORE INTO sources (name, kind, sha256, imported_at, n_triples) "
                     "VALUES (?, ?, ?, datetime('now'), 0)", (report.source, kind, sha))
        source_id = conn.execute("SELECT id FROM sources WHERE sha256 = ?", (sha,)).fetchone()[0]
        writer = _Writer(conn, source_id)
        rows = _READERS[kind](path, skip)
        for _line, subject, relation, value in tqdm(rows, desc=f"import {path.name}", unit=" triples",
                                                    disable=not progress, mininterval=0.5):
            writer.add(subject, relation, value)
        report.nodes_added = writer.finish()
        report.triples_in_source = writer.triples_seen
        report.triples_added = conn.execute("SELECT COUNT(*) FROM triples").fetchone()[0] - before
        conn.execute("UPDATE sources SET n_triples = ? WHERE id = ?", (report.triples_in_source, source_id))
        if report.triples_in_source == 0:
            raise InputError("no triples found", path=str(path))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    report.skip_reasons = dict(skip.reasons)
    report.seconds = round(time.perf_counter() - t0, 2)
    return report
