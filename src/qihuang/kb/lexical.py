"""BM25 fallback for questions in which linking finds no entity (``bm25s`` over jieba tokens).

One document per subject entity: its name (repeated), its aliases and the first values of a few
attributes (``resources/lexical.yaml``). A question retrieves an entity only when the question writes
its name (or an alias, or a drug's stem) with one typing error, a homophone in one place, in a name of
at least ``typo_min_length`` characters (偏头通 -> 偏头痛; :mod:`qihuang.kb.fuzzy`): sharing characters is
no evidence (司美格鲁肽注射液 is no 贝美格注射液, 瑞德西韦 no 韦瑞德, 西红柿炒鸡蛋 no 鸡蛋花), so unrelated
questions retrieve nothing. The name rule decides, BM25 ranks the names that pass (longest window first,
then score). The index is built on first use and cached in memory and on disk under
``$QIHUANG_HOME/cache/``, keyed by the KB's source hashes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
import unicodedata
from functools import lru_cache
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from qihuang.errors import ConfigError
from qihuang.fileio import atomic_write_bytes
from qihuang.kb.fuzzy import TypoIndex
from qihuang.kb.normalize import normalize
from qihuang.kb.types import Fact
from qihuang.paths import home, resource

log = logging.getLogger(__name__)


class LexicalConfig(BaseModel):
    """``resources/lexical.yaml``."""

    model_config = ConfigDict(extra="forbid")
    fields: list[str]
    values_per_field: int = Field(ge=0)
    name_repeat: int = Field(ge=1)
    typo_min_length: int = Field(ge=2)
    max_entities: int = Field(ge=1)
    stopwords: list[str]


@lru_cache(maxsize=1)
def load_lexical_config(path: str | None = None) -> LexicalConfig:
    """Parse and validate the lexical-fallback settings (errors name the file and field)."""
    file = Path(path) if path else resource("lexical.yaml")
    try:
        cfg = LexicalConfig.model_validate(yaml.safe_load(file.read_text(encoding="utf-8")))
    except ValidationError as e:
        where = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        raise ConfigError(f"{file.name}: {where}") from e
    from qihuang.kb.schema import load_schema

    unknown = [f for f in cfg.fields if f not in load_schema().attributes]
    if unknown:
        raise ConfigError(f"{file.name}: fields: unknown attributes {unknown}")
    return cfg


def _is_word(tok: str) -> bool:
    return any(not unicodedata.category(c).startswith(("P", "S", "Z")) for c in tok)


def tokenize(text: str, stop: frozenset[str] = frozenset()) -> list[str]:
    """jieba search-mode tokens and character bigrams of normalized ``text``, stopwords dropped."""
    import jieba

    norm = normalize(text)
    toks = [t for t in jieba.lcut_for_search(norm) if _is_word(t) and t not in stop]
    chars = [c for c in norm if _is_word(c)]
    grams = ["".join(chars[i:i + 2]) for i in range(len(chars) - 1)]
    return toks + [g for g in grams if g not in stop]


class LexicalIndex:
    """A BM25 index over the KB's subject entities."""

    def __init__(self, retriever, names: list[str], cfg: LexicalConfig, stop: frozenset[str],
                 keys: dict[str, str] | None = None):
        self.retriever, self.names, self.cfg, self.stop = retriever, names, cfg, stop
        self.keys = keys or {}  # normalized surface (name, alias, drug stem) -> entity name
        self.typos = TypoIndex(self.keys, cfg.typo_min_length)
        self._doc = {name: i for i, name in enumerate(names)}

    @staticmethod
    def _stop(kb, cfg: LexicalConfig) -> frozenset[str]:
        cues = {normalize(c) for a in kb.schema.attributes.values() for c in a.cues} | set(kb.schema.shared_cues)
        return frozenset(normalize(w) for w in cfg.stopwords) | cues

    @classmethod
    def build(cls, kb, cfg: LexicalConfig | None = None) -> "LexicalIndex":
        import bm25s

        cfg = cfg or load_lexical_config()
        stop = cls._stop(kb, cfg)
        aliases: dict[int, list[str]] = {}
        for alias, eid in kb.conn.execute("SELECT alias, entity_id FROM aliases ORDER BY rowid"):
            aliases.setdefault(eid, []).append(alias)
        values: dict[int, list[str]] = {}
        if cfg.fields:
            marks = ",".join("?" * len(cfg.fields))
            for eid, value in kb.conn.execute(
                    f"SELECT subject_id, value FROM triples WHERE attribute IN ({marks}) ORDER BY subject_id, weight DESC, id",
                    cfg.fields):
                kept = values.setdefault(eid, [])
                if len(kept) < cfg.values_per_field * len(cfg.fields):
                    kept.append(value)
        names, corpus = [], []
        for eid, name in kb.conn.execute("SELECT id, name FROM entities WHERE is_subject = 1 ORDER BY id"):
            doc = tokenize(name, stop) * cfg.name_repeat
            for text in aliases.get(eid, [])[:10] + values.get(eid, []):
                doc += tokenize(text, stop)
            names.append(name)
            corpus.append(doc or ["\0"])
        retriever = bm25s.BM25()
        retriever.index(corpus, show_progress=False)
        return cls(retriever, names, cfg, stop, _surfaces(kb, aliases))

    @classmethod
    def load_or_build(cls, kb) -> "LexicalIndex":
        """The cached index for ``kb``'s sources, else a new one (then cached on disk)."""
        import jieba

        jieba.initialize()  # the tokenizer the index's queries (and the linker's word checks) use
        cfg = load_lexical_config()
        shas = [r[0] for r in kb.conn.execute("SELECT sha256 FROM sources ORDER BY id")]
        key = hashlib.sha256(json.dumps([shas, cfg.model_dump(), _VERSION], ensure_ascii=False).encode()).hexdigest()[:16]
        path = home() / "cache" / f"lexical-{key}.pkl"
        if path.exists():
            try:
                with path.open("rb") as fh:
                    retriever, names, keys = pickle.load(fh)
                return cls(retriever, names, cfg, cls._stop(kb, cfg), keys)
            except Exception as e:  # a stale or broken cache is rebuilt
                log.warning("rebuilding the lexical index (%s unreadable: %s)", path, e)
        index = cls.build(kb, cfg)
        if shas:
            atomic_write_bytes(path, pickle.dumps((index.retriever, index.names, index.keys)))
        return index

    def match(self, text: str) -> list[tuple[str, float]]:
        """Entities whose name the question writes with one homophone typo, best first (the longest
        window, then the BM25 score of the question against the entity's document)."""
        hits = self.typos.find(normalize(text))
        if not hits:
            return []
        query = [t for t in tokenize(text, self.stop) if t in self.retriever.vocab_dict]
        scores = self.retriever.get_scores(query) if query else None
        ranked = []
        for name, start, end in hits:
            doc = self._doc.get(name)
            score = float(scores[doc]) if scores is not None and doc is not None else 0.0
            ranked.append((start - end, -score, name))
        return [(name, round(-score, 3)) for _n, score, name in sorted(ranked)[: self.cfg.max_entities]]

    def search(self, kb, text: str, asked: list[tuple[str, ...]], max_values: int | None) -> list[Fact]:
        """Facts of the matched entities (asked attributes, else defaults), ``via="lexical"``."""
        from qihuang.kb.retrieve import entity_facts

        facts: list[Fact] = []
        for name, _score in self.match(text):
            row = kb.lookups.row(name)
            if row:
                facts.extend(entity_facts(kb, row[0], name, row[2], asked, max_values, "lexical", name))
        return facts


_VERSION = 2  # of the cached index's contents


def _surfaces(kb, aliases: dict[int, list[str]]) -> dict[str, str]:
    """Written forms of the subject entities a typo may hit: names, aliases and drug stems (the names
    without form and salt words, as the linker links them), each to its entity (names win)."""
    from qihuang.kb.lexicon import load_lexicon
    from qihuang.kb.link import _stems

    forms = load_lexicon().drug_forms
    keys: dict[str, str] = {}
    for eid, name, etype in kb.conn.execute("SELECT id, name, type FROM entities WHERE is_subject = 1 ORDER BY id"):
        norm = normalize(name)
        keys[norm] = name
        for alias in aliases.get(eid, [])[:10]:
            keys.setdefault(normalize(alias), name)
        if etype == "drug":
            for stem in _stems(norm, forms):
                keys.setdefault(stem, name)
    return keys
