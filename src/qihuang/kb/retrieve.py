"""The lookups behind :meth:`KnowledgeBase.link`: direct, reverse, symptom -> disease, two-hop, history, lexical.

``retrieve(kb, text)`` links the question (entities and asked attributes, :mod:`qihuang.kb.link`, then the
linker's second pass :mod:`qihuang.kb.variants`: body part + feeling, misspelt and more specific names) and
then, per entity the question names:

- **direct**: a subject entity's asked attributes, else its type's default attributes in the schema's
  order (a drug's 适应症 before its 不良反应);
- **reverse**: an entity that is only ever a value (布洛芬, 头痛, 神经内科) is answered backwards through
  the schema's ``inverse`` map: "布洛芬能治什么病" -> the diseases whose 药物治疗 lists 布洛芬, ranked by
  how often the KB cites them, bounded; a drug named only as a value is otherwise answered through the
  product that holds it (布洛芬的副作用 -> 布洛芬片, cited through its 成份);
- **symptom**: two or more described symptoms (or one with nothing else to answer it) give ranked
  candidate diseases by IDF-weighted overlap with their symptoms, negated symptoms subtracted and never
  evidence; the evidence triples and the asked attribute of the top candidates (科室, 检查) follow, and
  for 吃什么药 the drugs whose 适应症 list the symptoms. Candidates are hedged: ``confident`` needs two
  matched symptoms, weak candidates only say where to go and what to check, nothing is a diagnosis;
- **two_hop**: a disease's drugs, then those drugs' 禁忌 / 不良反应 / 相互作用 / 用法 when asked;
- **history**: with no entity in the question, the entities of the latest earlier user turn that has one;
- **lexical**: with no entity at all, BM25 over entity names and fact text (:mod:`qihuang.kb.lexical`),
  thresholded so that unrelated questions retrieve nothing.

An asked attribute a named entity lacks is reported in ``LinkResult.missing``; when nothing else answers,
that entity's default facts stand in. Last, :mod:`qihuang.kb.department_rank` puts departments as hospitals
name them on symptom descriptions and department questions.

Every :class:`Fact` says how it was reached (``via``) and from which entity of the question (``anchor``).
"""

from __future__ import annotations

import heapq
import math
import re
from collections import defaultdict
from itertools import combinations

from qihuang.kb import department_rank
from qihuang.kb.link import PRODUCT_TYPES, flatten
from qihuang.kb.normalize import normalize
from qihuang.kb.schema import ALIAS
from qihuang.kb.types import Fact, LinkResult, Mention
from qihuang.kb.variants import refine

# attributes of a drug that a question about a disease's drugs may ask for (two hops)
DRUG_ATTRIBUTES = ("contraindications", "adverse_reactions", "interactions", "dosage", "precautions")
# what a symptom description asks about its candidate diseases when it names no attribute
SYMPTOM_DEFAULT = ("department",)
# what a symptom description that asks nothing in words is taken to ask: the diseases it may be (why it comes
# is asked in words, 怎么回事 / 什么原因: the labelling guide's "related_diseases (+ cause)")
SYMPTOM_ASKS = ("related_diseases",)
MAX_CANDIDATES = 8  # candidate diseases reported
TOP_CANDIDATES = 3  # candidates whose facts are retrieved
TWO_HOP_DRUGS = 3  # drugs of a disease followed to their own facts
REVERSE_LIMIT = 10  # subjects listed by a reverse lookup when max_values is not given
MIN_EVIDENCE = 2  # matched symptoms a candidate needs to be "confident"
WEAK_ATTRIBUTES = frozenset({"department", "examinations"})  # all a weak candidate may contribute
TOP_DRUGS = 5  # drugs indicated for described symptoms
MAX_DESCRIBED = 8  # described symptoms scored (the first ones)
MIN_TAIL = 4  # characters of a name written without its first ones (kb/variants.py)
_LISTING = re.compile(r"[、，,；;和及与伴或]")  # a name with these lists several things
# share of the KB's diseases that must list a named subject as a symptom for it to count as a described
# symptom (CMeKG: 3 of 6,292; 胸痛 is listed by 396, 疱疹 by 8, 过敏性鼻炎 by 2)
SYMPTOM_LISTING_SHARE = 0.0004
PART_RATIO = 2.0  # a value cited as 发病部位 this many times as often as otherwise is a body part (Lookups.body_parts)
FACT_CACHE = 4096  # entity fact queries remembered per KB (:meth:`Lookups.facts`)


class Lookups:
    """Per-KB caches for the lookups (built lazily, dropped on import)."""

    def __init__(self, kb):
        self.kb = kb
        self._rows: dict[str, tuple[int, int, str] | None] = {}
        self._all_rows = False  # every entity's row is in ``_rows`` (:meth:`warm`)
        self._facts: dict[tuple, list[Fact]] = {}  # (id, attributes, max_values) -> facts, the most recent first out
        self._prominence: dict[str, int] | None = None
        self._prominence_id: dict[int, int] | None = None
        self._products: dict[str, str | None] = {}
        self._names: dict[str, dict[int, str]] = {}
        self._listings: dict[tuple[str, str], dict[str, dict[int, str]]] = {}
        self._lexical = None
        self._composer = None
        self._body_parts: frozenset[str] | None = None
        self._edits = None
        self._longer: dict[str, list[tuple[str, str, int]]] | None = None
        self._tails: dict[str, set[str]] | None = None
        self._type_attributes: dict[str, frozenset[str]] | None = None

    def warm(self) -> None:
        """Build the caches every kind of question reads (:meth:`KnowledgeBase.warm`)."""
        for cache in ("prominence_by_id", "type_attributes", "edits", "composer", "body_parts"):
            getattr(self, cache)
        self._rows.update((name, (eid, is_subject, etype)) for eid, name, is_subject, etype in self.kb.conn.execute(
            "SELECT id, name, is_subject, type FROM entities"))  # ~60k rows on CMeKG, ~17 MB
        self._all_rows = True
        self.longer_names("")
        self.tail_of("")
        self.listing("", "symptoms", "disease")
        self.listing("", "indications", "drug")

    def row(self, name: str) -> tuple[int, int, str] | None:
        """(id, is_subject, type) of an entity by canonical name."""
        if name not in self._rows:
            if self._all_rows:
                return None
            self._rows[name] = self.kb.conn.execute(
                "SELECT id, is_subject, type FROM entities WHERE name = ?", (name,)).fetchone()
        return self._rows[name]

    def facts(self, entity_id: int, name: str, attributes: list[str] | None, max_values: int | None) -> list[Fact]:
        """``KnowledgeBase._facts_by_id``, remembered for the :data:`FACT_CACHE` most recent entity queries (a
        disease's drugs, a candidate disease, a popular entity are asked for again and again); a new list each call."""
        key = (entity_id, name, None if attributes is None else tuple(attributes), max_values)
        found = self._facts.pop(key, None)
        if found is None:
            found = self.kb._facts_by_id(entity_id, name, attributes, max_values)
            if len(self._facts) >= FACT_CACHE:
                del self._facts[next(iter(self._facts))]
        self._facts[key] = found
        return list(found)

    @property
    def prominence(self) -> dict[str, int]:
        """How many triples cite each subject entity as their value (how widely the KB refers to it)."""
        if self._prominence is None:
            self._prominence = dict(self.kb.conn.execute(
                "SELECT t.value, COUNT(*) FROM triples t JOIN entities e ON e.name = t.value "
                "WHERE e.is_subject = 1 GROUP BY t.value"))
        return self._prominence

    @property
    def type_attributes(self) -> dict[str, frozenset[str]]:
        """The attributes each entity type has: those at least ``intent.type_min_share`` of its subject
        entities have (cached on disk with the linker's data)."""
        if self._type_attributes is None:
            from qihuang.kb.cache import cached
            from qihuang.kb.lexicon import load_lexicon

            share = load_lexicon().intent.type_min_share
            self._type_attributes = cached(self.kb, f"type-attributes-{share}", lambda: _type_attributes(self.kb, share))
        return self._type_attributes

    def longer_names(self, name: str) -> list[tuple[str, str, int]]:
        """Subject diseases and symptoms whose name ends with ``name`` and is longer: (name, type, number of
        triples), for a generic head written with a specific name's modifiers (kb/variants.py)."""
        if self._longer is None:
            subjects = {n: (t, k) for n, t, k in self.kb.conn.execute(
                "SELECT e.name, e.type, count(t.id) FROM entities e JOIN triples t ON t.subject_id = e.id "
                "WHERE e.is_subject = 1 AND e.type IN ('disease', 'symptom') GROUP BY e.id")}
            names = set(r[0] for r in self.kb.conn.execute("SELECT name FROM entities"))
            index: dict[str, list[tuple[str, str, int]]] = defaultdict(list)
            for n, (t, k) in subjects.items():
                for cut in range(1, len(n) - 1):
                    if n[cut:] in names:
                        index[n[cut:]].append((n, t, k))
            self._longer = dict(index)
        return self._longer.get(name, [])

    def tail_of(self, written: str) -> str | None:
        """The one subject disease or symptom whose name or alias ends with ``written`` (at least
        :data:`MIN_TAIL` characters) and is longer: a name written without its first characters (变异性哮喘 of
        咳嗽变异性哮喘, an alias of 咳嗽性哮喘); None when no subject or several are written so."""
        if self._tails is None:
            rows = self.kb.conn.execute(
                "SELECT e.name, e.name FROM entities e WHERE e.is_subject = 1 AND e.type IN ('disease', 'symptom') "
                "UNION SELECT a.alias, e.name FROM aliases a JOIN entities e ON e.id = a.entity_id "
                "WHERE e.is_subject = 1 AND e.type IN ('disease', 'symptom')")
            tails: dict[str, set[str]] = defaultdict(set)
            for surface, name in rows:
                for cut in range(1, len(surface) - MIN_TAIL + 1):
                    tails[surface[cut:]].add(name)
            self._tails = dict(tails)
        found = self._tails.get(written)
        return next(iter(found)) if found and len(found) == 1 else None

    @property
    def edits(self):
        """Long names written with one character more or less (:class:`qihuang.kb.variants.EditIndex`):
        subjects, and drugs and examinations only named as values; none that lists several things."""
        if self._edits is None:
            from qihuang.kb.normalize import normalize
            from qihuang.kb.variants import EditIndex

            names: dict[str, tuple[str, bool]] = {}
            for name, is_subject in self.kb.conn.execute(  # value-only symptoms are often phrases (胸闷、气急)
                    "SELECT name, is_subject FROM entities WHERE type != 'other' AND (is_subject = 1 OR "
                    "type IN ('drug', 'examination')) ORDER BY is_subject DESC, id"):
                if not _LISTING.search(name):
                    names.setdefault(normalize(name), (name, bool(is_subject)))
            self._edits = EditIndex(names)
        return self._edits

    @property
    def body_parts(self) -> frozenset[str]:
        """Value-only symptom nodes the KB cites as a disease's 发病部位 at least :data:`PART_RATIO` times as
        often as in any other way (心肌: 8 to 3, 脾脏: 10 to 8 is not), i.e. body parts, not troubles."""
        if self._body_parts is None:
            counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
            for value, is_part, n in self.kb.conn.execute(
                    "SELECT t.value, t.attribute = 'body_part', count(*) FROM triples t JOIN entities e ON e.name = t.value "
                    "WHERE e.is_subject = 0 AND e.type = 'symptom' GROUP BY t.value, t.attribute = 'body_part'"):
                counts[value][0 if is_part else 1] += n
            self._body_parts = frozenset(v for v, (part, other) in counts.items() if part >= PART_RATIO * max(other, 1))
        return self._body_parts

    @property
    def composer(self):
        """Body part + feeling -> symptom names (:mod:`qihuang.kb.variants`)."""
        if self._composer is None:
            from qihuang.kb.variants import composer_for

            self._composer = composer_for(self.kb)
        return self._composer

    @property
    def lexical(self):
        if self._lexical is None:
            from qihuang.kb.lexical import LexicalIndex

            self._lexical = LexicalIndex.load_or_build(self.kb)
        return self._lexical

    # -- reverse ---------------------------------------------------------------------------
    def reverse(self, name: str, wanted: str, limit: int) -> list[Fact]:
        """Triples whose value is ``name`` and whose attribute, read backwards, answers ``wanted``:
        most-cited subjects first, at most ``limit``."""
        sources = self.kb.schema.reverse_sources(wanted)
        if not sources:
            return []
        rows = self.kb.conn.execute(
            "SELECT e.name, t.attribute, t.relation FROM triples t JOIN entities e ON e.id = t.subject_id "
            f"WHERE t.value = ? AND t.attribute IN ({','.join('?' * len(sources))}) ORDER BY t.id",
            (name, *sources)).fetchall()
        rank, prom = self.kb.schema.relation_rank, self.prominence
        best: dict[str, tuple] = {}
        for subject, attr, rel in rows:  # one fact per subject: its primary relation
            key = (rank.get(rel, 99), -prom.get(subject, 0))
            if subject not in best or key < best[subject][0]:
                best[subject] = (key, attr, rel)
        ordered = sorted(best.items(), key=lambda kv: kv[1][0])[:limit]
        return [Fact(s, attr, rel, name, "reverse", name) for s, (_k, attr, rel) in ordered]

    # -- drugs of a disease -> the drug's own facts -------------------------------------------
    def product_for(self, drug: str) -> str | None:
        """The subject entity that holds a drug's own facts: the drug itself, else the shortest-named
        product whose 成份 is the drug and whose name contains it (布洛芬 -> 布洛芬片)."""
        if drug not in self._products:
            row = self.row(drug)
            if row and row[1]:
                self._products[drug] = drug
            else:
                hit = self.kb.conn.execute(
                    "SELECT e.name FROM triples t JOIN entities e ON e.id = t.subject_id WHERE t.value = ? "
                    "AND t.attribute = 'ingredients' AND instr(e.name, ?) > 0 ORDER BY length(e.name), e.id LIMIT 1",
                    (drug, drug)).fetchone()
                self._products[drug] = hit[0] if hit else None
        return self._products[drug]

    # -- symptoms -> candidate diseases (and drugs indicated for them) -----------------------------
    def names_of(self, etype: str) -> dict[int, str]:
        """Subject entities of a type, by id."""
        if etype not in self._names:
            self._names[etype] = dict(self.kb.conn.execute(
                "SELECT id, name FROM entities WHERE type = ? AND is_subject = 1", (etype,)))
        return self._names[etype]

    def listing(self, value: str, attribute: str = "symptoms", etype: str = "disease") -> dict[int, str]:
        """Subjects of ``etype`` (by id) whose ``attribute`` lists ``value``, with the relation that lists
        it. All listings of an attribute are read in one pass on first use (CMeKG: ~100k symptom triples,
        a fraction of a second)."""
        key = (attribute, etype)
        if key not in self._listings:
            names, rank = self.names_of(etype), self.kb.schema.relation_rank
            listings: dict[str, dict[int, str]] = defaultdict(dict)
            for val, sid, rel in self.kb.conn.execute(
                    "SELECT value, subject_id, relation FROM triples WHERE attribute = ? ORDER BY id", (attribute,)):
                if sid in names:
                    held = listings[val].get(sid)
                    if held is None or rank.get(rel, 99) < rank.get(held, 99):
                        listings[val][sid] = rel
            self._listings[key] = dict(listings)
        return self._listings[key].get(value, {})

    def overlap(self, values: list[str], negated: list[str], attribute: str, etype: str,
                limit: int) -> list[tuple[str, int, float, dict[str, str], list[str]]]:
        """Subjects whose ``attribute`` lists the most of ``values``, best first: (name, matched count,
        score, {value: relation}, negated values it lists). Ranked by the number matched, then by the
        sum of IDF of the matched values minus that of the negated values the subject lists (a negated
        value is never evidence), then by how often the KB cites the subject."""
        n = max(len(self.names_of(etype)), 1)
        idf = lambda listing: math.log(1 + n / len(listing)) if listing else 0.0  # noqa: E731
        given = [(v, listing, idf(listing)) for v in list(dict.fromkeys(values))[:MAX_DESCRIBED]
                 for listing in [self.listing(v, attribute, etype)]]
        against_given = [(v, listing, idf(listing)) for v in dict.fromkeys(negated)
                         for listing in [self.listing(v, attribute, etype)]]
        names, prom = self.names_of(etype), self.prominence_by_id
        groups: list[tuple[int, float, frozenset[str], set[int]]] = []  # (matched, score, negated, subjects)
        keys = [listing.keys() for _v, listing, _w in given]
        for k in range(len(given), 0, -1):  # subjects that list exactly these values share one score
            for combo in combinations(range(len(given)), k):
                members = set(keys[combo[0]]).intersection(*(keys[i] for i in combo[1:]))
                members.difference_update(*(keys[i] for i in range(len(given)) if i not in combo))
                base = sum(given[i][2] for i in combo)
                for part, against in _split(members, against_given):
                    score = base - sum(w for v, _l, w in against_given if v in against)
                    if part and score > 0:
                        groups.append((k, score, against, part))
            if sum(len(g[3]) for g in groups) >= limit:
                break
        groups.sort(key=lambda g: (-g[0], -g[1]))
        out: list[tuple[str, int, float, dict[str, str], list[str]]] = []
        for matched, score, against, members in groups:  # most cited first, then by id
            for sid in heapq.nlargest(limit - len(out), sorted(members), key=prom.get):
                out.append((names[sid], matched, score, {v: listing[sid] for v, listing, _w in given if sid in listing},
                            [v for v, _l, _w in against_given if v in against]))
            if len(out) >= limit:
                break
        return out

    @property
    def prominence_by_id(self) -> dict[int, int]:
        """:attr:`prominence` keyed by entity id (a plain ``dict.get`` ranks thousands of ties fast)."""
        if self._prominence_id is None:
            prom = self.prominence
            self._prominence_id = {eid: prom.get(name, 0) for eid, name in self.kb.conn.execute(
                "SELECT id, name FROM entities WHERE is_subject = 1")}
        return self._prominence_id

    def candidates(self, symptoms: list[str], negated: list[str]) -> tuple[list[dict], dict[str, dict[str, str]]]:
        """Candidate diseases for described symptoms (see :meth:`overlap`), best first, and the evidence
        relation of each matched symptom per disease."""
        ranked = self.overlap(symptoms, negated, "symptoms", "disease", MAX_CANDIDATES)
        out = [{"disease": d, "score": round(score, 3), "evidence": list(ev), "negated": neg,
                "confident": matched >= MIN_EVIDENCE} for d, matched, score, ev, neg in ranked]
        return out, {d: ev for d, _m, _s, ev, _n in ranked}


def _type_attributes(kb, share: float) -> dict[str, frozenset[str]]:
    sizes = dict(kb.conn.execute("SELECT type, count(*) FROM entities WHERE is_subject = 1 GROUP BY type"))
    out: dict[str, set[str]] = defaultdict(set)
    for etype, attribute, n in kb.conn.execute(
            "SELECT e.type, t.attribute, COUNT(DISTINCT t.subject_id) FROM triples t "
            "JOIN entities e ON e.id = t.subject_id GROUP BY e.type, t.attribute"):
        if n >= share * sizes.get(etype, 0):
            out[etype].add(attribute)
    return {t: frozenset(a) for t, a in out.items()}


def _split(members: set[int], against: list[tuple[str, dict, float]]) -> list[tuple[set[int], frozenset[str]]]:
    """``members`` split by which negated values' listings they are in: [(part, those values)]."""
    parts = [(members, frozenset())]
    for v, listing, _w in against:
        keys = listing.keys()
        parts = [piece for part, neg in parts
                 for piece in ((part - keys, neg), (part & keys, neg | {v}))]
    return parts


def _asked_groups(groups: list[tuple[str, ...]]) -> list[tuple[str, ...]]:
    return [g for g in ([a for a in g if a != ALIAS] for g in groups) if g]


def entity_facts(kb, entity_id: int, name: str, etype: str, asked: list[tuple[str, ...]], max_values: int | None,
                 via: str = "direct", anchor: str = "") -> list[Fact]:
    """An entity's asked attributes (per cue group, the first one it has), else its type's defaults."""
    if not asked:
        found = kb.lookups.facts(entity_id, name, kb.schema.defaults_for(etype), max_values)
    else:
        found = kb.lookups.facts(entity_id, name, [a for g in asked for a in g], max_values)
        present = {f.attribute for f in found}
        chosen = {next((a for a in g if a in present), None) for g in asked}
        found = [f for f in found if f.attribute in chosen]
    if via == "direct" and not anchor:
        return found
    return [Fact(f.entity, f.attribute, f.relation, f.value, via, anchor) for f in found]


def _reverse(kb, name: str, etype: str, asked: list[tuple[str, ...]], limit: int) -> list[Fact]:
    """Reverse facts for a value entity: per cue group the first attribute that finds any, else the
    type's defaults, each that finds any."""
    look = kb.lookups
    facts: list[Fact] = []
    for group in asked or [(a,) for a in kb.schema.defaults_for(etype)]:
        for wanted in group:
            found = look.reverse(name, wanted, limit)
            if found:
                facts.extend(found)
                break
    return facts


def _value_drug(kb, name: str, asked: list[tuple[str, ...]], limit: int, max_values: int | None) -> list[Fact]:
    """A drug named only as a value (布洛芬): per cue group, reverse facts where the inverse map answers
    it (能治什么病 -> the diseases that list it), else the facts of the product that holds the drug
    (布洛芬片, cited through its 成份; ``via="two_hop"``, anchor the drug)."""
    look = kb.lookups
    facts: list[Fact] = []
    rest: list[tuple[str, ...]] = []
    for group in asked or [(a,) for a in kb.schema.defaults_for("drug")]:
        found = next((hit for hit in (look.reverse(name, w, limit) for w in group) if hit), [])
        facts += found
        if not found:
            rest.append(group)
    product = look.product_for(name) if rest else None
    row = look.row(product) if product else None
    if row and row[1]:
        own = entity_facts(kb, row[0], product, "drug", rest, max_values, "two_hop", name)
        if own:
            facts += [Fact(product, "ingredients", "成份", name, "two_hop", name)] + own
    return facts


def _two_hop(kb, disease: str, disease_id: int, wanted: list[str], max_values: int | None) -> list[Fact]:
    """The disease's drugs (the first hop, cited) and the asked drug attributes of up to
    :data:`TWO_HOP_DRUGS` of them (the second hop), each reached through the product that holds them
    (cited through its 成份). Every hop is anchored at the disease, the question's entity."""
    look = kb.lookups
    facts: list[Fact] = []
    followed = 0
    for hop in look.facts(disease_id, disease, ["drugs"], None)[:40]:
        product = look.product_for(hop.value)
        row = look.row(product) if product else None
        if row is None:
            continue
        own = look.facts(row[0], product, wanted, max_values)
        if not own:
            continue
        facts.append(Fact(hop.entity, hop.attribute, hop.relation, hop.value, "two_hop", disease))
        if product != hop.value:
            facts.append(Fact(product, "ingredients", "成份", hop.value, "two_hop", disease))
        facts.extend(Fact(f.entity, f.attribute, f.relation, f.value, "two_hop", disease) for f in own)
        followed += 1
        if followed >= TWO_HOP_DRUGS:
            break
    return facts


def _symptom_facts(kb, candidates: list[dict], evidence: dict[str, dict[str, str]],
                   asked: list[tuple[str, ...]], max_values: int | None) -> list[Fact]:
    """Evidence triples and asked attributes of the best candidates that have them. When some candidate
    is confident, only confident ones are used; weak ones (one matched symptom) only ever give where to
    go and what to check (:data:`WEAK_ATTRIBUTES`), never drugs or treatments."""
    look = kb.lookups
    facts: list[Fact] = []
    # where to go is part of every answer to a symptom description, whatever else it asks
    wanted = list(asked) + [(a,) for a in SYMPTOM_DEFAULT if not any(a in g for g in asked)]
    any_confident = any(c["confident"] for c in candidates)
    taken = 0
    for cand in candidates:  # the best candidates that have what is asked (a 科室 for 挂什么科)
        if any_confident and not cand["confident"]:
            break
        want = wanted if cand["confident"] else [g for g in wanted if set(g) & WEAK_ATTRIBUTES]
        if not want:
            break
        disease = cand["disease"]
        anchor = "、".join(cand["evidence"])
        row = look.row(disease)
        own = entity_facts(kb, row[0], disease, "disease", want, max_values, "symptom", anchor) if row else []
        if not own:
            continue
        facts.extend(Fact(disease, "symptoms", rel, s, "symptom", anchor) for s, rel in evidence[disease].items())
        facts.extend(own)
        taken += 1
        if taken >= TOP_CANDIDATES:
            break
    return facts


def _indicated_drugs(kb, symptoms: list[str], negated: list[str]) -> list[Fact]:
    """Drugs whose 适应症 list the most of the described symptoms (all of them when some do), cited
    backwards: (布洛芬片, 适应症, 头痛), ``via="reverse"``, anchor the symptoms matched."""
    ranked = kb.lookups.overlap(symptoms, negated, "indications", "drug", TOP_DRUGS)
    best = ranked[0][1] if ranked else 0
    facts: list[Fact] = []
    for drug, matched, _score, ev, _neg in ranked:
        if matched < best:
            break
        facts.extend(Fact(drug, "indications", rel, s, "reverse", "、".join(ev)) for s, rel in ev.items())
    return facts


def _unanswered(kb, asked: list[tuple[str, ...]], found: list[Fact]) -> list[tuple[str, ...]]:
    """The cue groups none of ``found`` answers (directly, by two hops, or backwards)."""
    answered = {f.attribute for f in found} | {kb.schema.inverse.get(f.attribute, "") for f in found
                                                  if f.via == "reverse"}
    if any(f.via == "two_hop" for f in found):
        answered |= {"drugs"}
    return [g for g in asked if not answered & set(g)]


def _two_hop_wanted(asked: list[tuple[str, ...]], found: list[Fact]) -> list[str]:
    """Drug attributes to follow from a disease to its drugs: asked together with drugs, in a cue group
    the disease's own facts left unanswered (不舒服 of a disease is its symptoms, not adverse reactions)."""
    if not any("drugs" in g for g in asked):
        return []
    present = {f.attribute for f in found}
    return [a for g in asked if not present & set(g) for a in g if a in DRUG_ATTRIBUTES]


def _history_mentions(kb, history: list[str] | None) -> list[Mention]:
    """The entities of the latest earlier turn that names any (offsets index that turn)."""
    for turn in reversed(history or []):
        if isinstance(turn, str) and turn.strip():
            found = [m for m in kb.find_entities(turn) if not getattr(m, "negated", False)]
            if found:
                return found
    return []


def _described_symptoms(kb, named: list[Mention], rows: dict) -> list[str]:
    """The symptoms a question describes: value-only symptom mentions, and when there is one of those,
    also the named subjects that diseases commonly list as symptoms (胸痛, 腹泻 have entries of their own in
    CMeKG: "胸痛，大汗，有濒死感" describes three symptoms; :data:`SYMPTOM_LISTING_SHARE` of the diseases at
    least, so that 过敏性鼻炎, listed by two, is what "过敏性鼻炎老打喷嚏" is about), unless some other subject is named."""
    plain = [m.name for m in named if m.type == "symptom" and not (rows[m.name] and rows[m.name][1])]
    if not plain:
        return []
    look = kb.lookups
    subjects = [m.name for m in named if m.name not in plain and rows[m.name] and rows[m.name][1]]
    least = max(1.0, SYMPTOM_LISTING_SHARE * len(look.names_of("disease")))
    listed = [n for n in subjects if len(look.listing(n)) >= least]
    return plain if len(listed) < len(subjects) else [m.name for m in named if m.name in plain or m.name in listed]


def _lookup(kb, mentions: list[Mention], asked: list[tuple[str, ...]], max_values: int | None,
            via: str) -> tuple[list[Fact], list[dict], list[tuple[str, str]]]:
    look = kb.lookups
    limit = max_values or REVERSE_LIMIT
    negated = list(dict.fromkeys(m.name for m in mentions if getattr(m, "negated", False)))
    named = [m for m in dict((m.name, m) for m in mentions).values() if m.name not in negated]
    rows = {m.name: look.row(m.name) for m in named}
    symptoms = _described_symptoms(kb, named, rows)
    facts: list[Fact] = []
    answered: set[str] = set()
    missing: list[tuple[str, str]] = []
    stand_in: list[tuple[int, Mention, str]] = []
    for m in named:
        row = rows[m.name]
        if row is None or m.name in symptoms:
            continue
        if row[1]:
            anchor = m.name if via != "direct" else ""
            found = entity_facts(kb, row[0], m.name, m.type, asked, max_values, via, anchor)
            hops = _two_hop_wanted(asked, found) if m.type == "disease" else []
            if hops:
                found += _two_hop(kb, m.name, row[0], hops, max_values)
            if not found and asked:
                found = _reverse(kb, m.name, m.type, asked, limit)
            lacking = _unanswered(kb, asked, found) if asked else []
            if lacking:  # what the KB does not hold is said; when nothing else answers, the entity's facts stand in
                missing += [(m.name, g[0]) for g in lacking]
                if not found:
                    stand_in.append((row[0], m, anchor))
        elif m.type == "drug":
            found = _value_drug(kb, m.name, asked, limit, max_values)
        else:
            found = _reverse(kb, m.name, m.type, asked, limit)
        if found:
            answered.add(m.name)
        facts.extend(found)
    if not facts and stand_in:  # nothing answers what is asked: the first such entity's own facts
        eid, m, anchor = stand_in[0]
        facts = entity_facts(kb, eid, m.name, m.type, [], max_values, via, anchor)
        answered.add(m.name)
    candidates: list[dict] = []
    about = answered | {m.name for m in named if m.name not in symptoms and rows[m.name] and rows[m.name][1]}
    if symptoms and not about:
        # symptoms next to an entity the question is about (布洛芬缓释胶囊会引起头痛恶心吗) are no description;
        # one symptom asked about directly ("头痛吃什么药") is answered backwards when the KB can;
        # several, or one the KB cannot answer backwards, are a description: candidate diseases
        reverse = _reverse(kb, symptoms[0], "symptom", asked, limit) if len(symptoms) == 1 and asked else []
        if reverse:
            facts.extend(reverse)
        else:
            candidates, evidence = look.candidates(symptoms, negated)
            if any("drugs" in g for g in asked):  # drugs indicated for the symptoms, not the candidates' drugs
                drugs = _indicated_drugs(kb, symptoms, negated)
                facts.extend(drugs)
                # the candidates' departments only when no drug answers and nothing else is asked
                asked = [g for g in asked if "drugs" not in g] or ([] if drugs else [(a,) for a in SYMPTOM_DEFAULT])
            if asked or not facts:
                facts.extend(_symptom_facts(kb, candidates, evidence, asked, max_values))
    return facts, candidates, missing


def retrieve(kb, text: str, max_values: int | None = None, history: list[str] | None = None) -> LinkResult:
    """Entities, asked attributes, facts and (for symptom descriptions) candidate diseases for ``text``."""
    linker = kb.linker
    mentions = refine(kb, text, linker.find_entities(text))
    groups = linker.detect_attribute_groups(text, mentions, question=True)
    attributes = flatten(groups)
    asked = _asked_groups(groups)
    via = "direct"
    if not mentions and history and asked:  # a follow-up asks something ("那应该吃什么药？"); "今天适合爬山吗" does not
        mentions = _history_mentions(kb, history)
        via = "history"
    candidates: list[dict] = []
    missing: list[tuple[str, str]] = []
    described = linker.described_asks(text, mentions)  # 怎么回事: which diseases, and why (X是什么病 asks about X)
    if described and "adverse_reactions" in attributes and any(m.type in PRODUCT_TYPES and not m.negated for m in mentions):
        described = []  # 吃了X后呕吐，这是怎么了: what X does, not which disease it is
    if described:
        groups += [(a,) for a in described if a not in attributes]
        attributes, asked = flatten(groups), _asked_groups(groups)
    if mentions:
        facts, candidates, missing = _lookup(kb, mentions, asked, max_values, via)
    else:
        facts = kb.lookups.lexical.search(kb, text, asked, max_values)
    if candidates and not groups:  # symptoms described, nothing asked: which diseases
        groups = [(a,) for a in SYMPTOM_ASKS]
        attributes = flatten(groups)
    elif (candidates and "cause" in attributes and "related_diseases" not in attributes
          and not any(m.type == "disease" and not getattr(m, "negated", False) for m in mentions)):
        # why described troubles come is which diseases they may be (the labelling guide's reading); a named
        # disease is what such a question asks about (扁桃体炎会引起发烧吗)
        groups = groups + [("related_diseases",)]
        attributes = flatten(groups)
    elif "cause" in attributes and "related_diseases" not in attributes and (like := _symptoms_named(kb, mentions)):
        # 腰痛是什么原因: a CMeKG disease that other diseases list as a symptom, asked why, asks which diseases
        # it may come from, too (answered backwards: the diseases listing it)
        groups = groups + [("related_diseases",)]
        attributes = flatten(groups)
        facts = facts + [f for f in _pointed_to(kb, like, max_values) if f not in facts]
    if attributes and set(attributes) <= _RESULT_ASKS and _abnormal_result(text, mentions):
        # 谷丙转氨酶偏高，问题大吗: a test result out of range asks what it points to (which diseases), too
        groups = groups + [("related_diseases",)]
        attributes = flatten(groups)
        tests = [m for m in mentions if not m.negated and m.type in ("examination", "symptom")]
        facts = facts + [f for f in _pointed_to(kb, tests, max_values) if f not in facts]
    if facts:
        attributes = _reported(kb, groups, facts, mentions, candidates)
    facts = department_rank.apply(kb, text, mentions, candidates, groups, facts)  # hospital departments
    return LinkResult(text, mentions, attributes, facts, candidates, abstained=not facts, missing=missing)


def _symptoms_named(kb, mentions: list[Mention]) -> list[Mention]:
    """The question's named diseases and symptoms when every one of them is one the KB treats as a symptom
    (:meth:`DepartmentIndex.symptom_like`: 腰痛, 牙痛, 尿频); [] when some other entity is named."""
    live = [m for m in mentions if not getattr(m, "negated", False)]
    like = [m for m in live if m.type in ("disease", "symptom") and kb.departments.symptom_like(m.name)]
    return like if like and len(like) == len(live) else []


_RESULT_ASKS = frozenset({"prognosis", "complications", "examinations"})  # 严重吗, 有什么影响, 正常吗
_CHANGED = re.compile(r"(?:偏高|偏低|升高|增高|降低|减低|过高|过低|超标|太高|太低|阳性|异常|高|低)$")
_OUT_OF_RANGE = re.compile(r"(?:[有些点一很较太稍略]{0,3})(?:偏高|偏低|升高|增高|降低|减低|过高|过低|超标|太高|太低|高|低|阳性|异常)")


def _abnormal_result(text: str, mentions: list[Mention]) -> bool:
    """A test (an examination, or a value the KB names with how it changed: 白细胞增多 for 白细胞偏高) written
    with a result out of range right after it."""
    norm = normalize(text)
    for m in mentions:
        if m.negated:
            continue
        if m.type == "examination" and _OUT_OF_RANGE.match(norm, m.end):
            return True
        if m.via_alias and m.type == "symptom" and _CHANGED.search(normalize(m.surface)):
            return True
    return False


def _pointed_to(kb, mentions: list[Mention], max_values: int | None) -> list[Fact]:
    """The diseases each mention points to: those whose examinations or symptoms list it (reverse facts
    answering related_diseases): what a test out of range or a symptom asked why may come from."""
    limit = max_values or REVERSE_LIMIT
    return [f for m in mentions for f in kb.lookups.reverse(m.name, "related_diseases", limit)]


# asked of whatever a question names, however few entities of its type the KB gives them: its other names,
# and what to mind (注意事项, diet, care: 支气管炎能吃猪肉吗 asks it although neither diseases nor herbs have it)
ASKED_OF_ANY = frozenset({ALIAS, "precautions"})


def _reported(kb, groups: list[tuple[str, ...]], facts: list[Fact], mentions: list[Mention],
              candidates: list[dict]) -> list[str]:
    """The attributes a question is taken to ask, given what was retrieved: each cue group of
    alternatives narrowed to those the facts answer (:func:`_answered`), and, when the question is only
    about subject entities, the groups that some named entity's type (or a two-hop fact's) has (区别 of two drugs, 功能 in a
    misspelt 甲状腺功能亢进症, 药物 in 药物相互作用 are not asked); all of them when none is left."""
    groups = _answered(groups, facts, kb.schema.inverse)
    look = kb.lookups
    rows = [look.row(m.name) for m in mentions if not getattr(m, "negated", False)]
    if mentions:
        types = None if candidates or not all(r and r[1] for r in rows) else {r[2] for r in rows}
    else:  # lexical: the entities matched
        types = {r[2] for r in (look.row(f.entity) for f in facts) if r}
    if types:  # a disease's drugs answer for the drugs' attributes (two hops)
        types |= {r[2] for r in (look.row(f.entity) for f in facts if f.via == "two_hop") if r}
        has = set().union(*(look.type_attributes.get(t, ()) for t in types))
        groups = [g for g in groups if ASKED_OF_ANY & set(g) or has & set(g)] or groups
        # of a group's alternatives, those the named types have (治疗 of a disease is its treatment, not the
        # indications a drug has)
        groups = [tuple(a for a in g if a in has or a in ASKED_OF_ANY) or g for g in groups]
        if types & PRODUCT_TYPES:  # 拉莫三嗪片可以治疗癫痫吗: 治疗 next to a drug asks what the drug treats
            groups = [("indications",) if {"treatment", "indications"} <= set(g) else g for g in groups]
    return flatten(groups)


# a cue group that asks this first, answered by the drugs alone, still asks it: 怎么治 asks how it is treated
# even where the KB holds only the drugs (the labelling guide: "如何治疗 -> treatment, add drugs only if medicine
# is asked"); 治疗 of a drug stays its indications
_ASKED_AS_WRITTEN = frozenset({"treatment"})


def _answered(groups: list[tuple[str, ...]], facts: list[Fact], inverse: dict[str, str]) -> list[tuple[str, ...]]:
    """Each cue group of alternatives narrowed to those the facts answer (a fact's attribute; for a
    reverse fact also the attribute it answers backwards: 布洛芬 <- 药物治疗 answers 适应症); a group
    none answers is kept whole. 甲硝唑片治疗哪些病 asks for 适应症, not 治疗."""
    answered: set[str] = set()
    for f in facts:
        if f.via == "symptom" and f.attribute == "symptoms":
            continue  # a candidate's evidence, not an answer
        answered.add(f.attribute)
        if f.via == "reverse" and f.attribute in inverse:
            answered.add(inverse[f.attribute])
    out = []
    for g in groups:
        narrowed = tuple(a for a in g if a in answered) or g
        if g[0] in _ASKED_AS_WRITTEN and "indications" not in narrowed and (g[0] in narrowed or narrowed == ("drugs",)):
            narrowed = g[:1]  # the drugs answer how it is treated; what was asked stays
        out.append(narrowed)
    return out
