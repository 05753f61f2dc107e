"""Which hospital departments a question calls for, ranked by the KB's evidence and the patient's group.

Evidence, all read from the KB (its 就诊科室 values mapped to standard departments,
:meth:`~qihuang.kb.departments.DepartmentBook.map_value`):

- a **named disease** (a subject the question names that has departments of its own: 腰痛, 荨麻疹; a
  value-only disease borrows those of the disease named by it plus a suffix: 癫痫 -> 癫痫病): its departments;
- a **described symptom** or body part (头晕, 风团, 外阴; and the shorter values inside it: 皮肤瘙痒 -> 瘙痒):
  the departments of the diseases whose symptoms or 发病部位 list it, P(department | symptom), sharpened
  against how common each department is in the KB (儿科 and 骨科 are everywhere) and weighted by how many
  diseases list it (a value listed once says little);
- the **candidate diseases** of a symptom description (``Lookups.candidates``), by their departments;
- the question's **wording**: two-character words that the KB's disease names and symptom / body-part values
  tie to one department (月经 -> 妇科, 牙齿 -> 口腔科; :attr:`DepartmentIndex.cues`, derived from the KB).

The patient's group (:func:`~qihuang.kb.departments.patient_groups`) then re-ranks: a child goes to 儿科
first (unless the evidence points to a specialty children are sent to directly, 眼科 or 皮肤科: then 儿科
comes second), a newborn to 新生儿科, a pregnancy to 产科; 儿科 and its kin are never named for an adult,
妇科 never for a man, 男科 never for a woman; an elderly patient also gets 老年医学科. When nothing more
specific is known a symptom description gets 全科医学科, said as such.

:func:`apply` is the hook at the end of :func:`qihuang.kb.retrieve.retrieve`. A symptom description (or a
question that asks where to go) gets the ranked departments in place of the KB-worded department facts,
each a :class:`Fact` with ``via="department"`` whose relation says what it rests on (the KB's wording when
the hospital's differs, 按症状, 按用词, 按人群, 无更具体依据) and whose anchor names the question's entities
behind it; elsewhere a KB-worded department fact is only renamed.
"""

from __future__ import annotations

import re

import json
from collections import defaultdict
from dataclasses import dataclass, field
from typing import NamedTuple

from qihuang.kb.departments import ROOT, DepartmentBook, Hospital, Patient, load_book, patient_groups
from qihuang.kb.types import Fact, Mention

# someone's own complaint: a person, an age or a when (data-building questions about a disease have none)
_PATIENT = re.compile(r"我|本人|自己|孩子|宝宝|小孩|儿子|女儿|老公|老婆|爸|妈|爷爷|奶奶|姥|家人|朋友|同事|岁|个月大|"
                      r"最近|这几天|这两天|一直|老是|总是|经常|有时|突然|今天|昨天|前几天|[天周月年]了")

SYMPTOM_RELATION = "常见就诊科室（按症状）"
LOOKED_UP = ("symptom", "reverse", "department")  # facts reached from the symptoms themselves
EVIDENCE_ATTRIBUTES = ("symptoms", "body_part")  # a value listed here says where its diseases are seen
TOP = 3  # departments named per question
CONDITIONS = ("disease", "symptom")  # entity types a complaint can name as what the patient has
# departments that say how general or how urgent, not which organ (the KB's 内科 is internal medicine in
# general; 急诊 is decided by urgency, i.e. by triage): a named disease may carry them, symptom evidence not
SETTINGS = (ROOT, "急诊科")
NAMED_WEIGHT = 1.0  # a named disease's own departments
SYMPTOM_NAMED_WEIGHT = 0.5  # ... when the name is also a symptom other diseases list (腹痛, 胸痛, 腰痛)
CANDIDATE_WEIGHT = 0.25  # the candidate diseases together
RELIABILITY = 10.0  # a value listed by n diseases weighs n / (n + RELIABILITY)
SHARPEN = 0.5  # P(d | symptom) / P(d) ** SHARPEN: common departments need more evidence
MIN_LISTED = 3  # subjects that must list a symptom for it to make a symptom description
MIN_DESCRIBED = 2  # next to a drug (or other non-disease) the question is about, symptoms that make one
SYMPTOM_RATIO = 10.0  # a named disease is symptom-like when listed as a symptom this many times as often ...
AS_DISEASE = ("complications", "related_diseases", "cause", "risk_factors")  # ... as it is cited as a disease
AS_OTHER = ("body_part", "susceptible_population")  # a value listed mostly here is no symptom (心肌, 新生儿)
MIN_SHARE = 0.15  # departments with less than this share of the best one's evidence are not named
MIN_PART = 0.01  # a department below this share of one piece of evidence is left out of it (speed)
PART_SHARE = 0.5  # of a described symptom's weight, what the shorter values inside it carry together
NEAR_LONGER = 2  # a name without departments borrows those of a disease named by it plus this many characters
CUE_WEIGHT = 0.5  # a word of the question that the KB's symptom and body-part wording ties to a department
CUE_MIN_SUBJECTS = 8  # a cue is seen in at least this many subjects' wording
CUE_MIN_SHARE = 0.5  # ... which are mostly (this share) in one department
CUE_MIN_LIFT = 3.0  # ... this many times more often than that department overall
BODY_WORD_SUBJECTS = 20  # a body word of departments.yaml weighs as a KB cue seen in this many subjects' wording


class Source(NamedTuple):
    """Why a department is named: the fact's entity and relation, and the question entities behind it."""

    entity: str
    relation: str
    anchors: tuple[str, ...]


@dataclass
class Ranked:
    """One ranked department: its score and its evidence (source -> contribution)."""

    name: str
    score: float = 0.0
    sources: dict[Source, float] = field(default_factory=dict)
    group: str = ""  # the patient group that put it here ("child", "pregnant" ...), else ""
    named: bool = False  # a named disease's own department (not only symptom evidence)


class DepartmentIndex:
    """Per-KB department evidence (built lazily, dropped with the KB's other caches)."""

    def __init__(self, kb, book: DepartmentBook | None = None, hospital: Hospital | None = None):
        self.kb = kb
        self.book = book or load_book()
        self.hospital = hospital
        self._of_disease: dict[int, list[tuple[str, str, str]]] | None = None
        self._prior: dict[str, float] | None = None
        self._listed: dict[str, tuple[int, dict[str, float]]] = {}
        self._cues: dict[str, tuple[int, dict[str, float]]] | None = None
        self._listings: dict[str, tuple[int, ...]] | None = None
        self._cited: dict[str, tuple[int, int, int]] | None = None
        self._own: dict[str, tuple[str, list[tuple[str, str, str]]]] = {}
        self._symptoms: dict[str, frozenset[str]] = {}
        self._kinds: dict[str, str | None] = {}

    def warm(self) -> None:
        """Build the evidence tables, and the department distribution of every listed value (one pass over
        the listings: a fraction of a second on CMeKG), so that no question builds them (:meth:`KnowledgeBase.warm`)."""
        for cache in ("prior", "cited", "cues"):
            getattr(self, cache)
        for value in self.listings:
            self.listed(value)

    @property
    def of_disease(self) -> dict[int, list[tuple[str, str, str]]]:
        """Subject id -> [(standard department, KB value, KB relation)], primary first."""
        if self._of_disease is None:
            out: dict[int, list[tuple[str, str, str]]] = defaultdict(list)
            for sid, rel, value in self.kb.conn.execute(
                    "SELECT subject_id, relation, value FROM triples WHERE attribute = 'department' ORDER BY id"):
                held = {d for d, _v, _r in out[sid]}
                out[sid] += [(d, value, rel) for d in self.book.map_value(value) if d not in held]
            self._of_disease = {k: v for k, v in out.items() if v}
        return self._of_disease

    @property
    def prior(self) -> dict[str, float]:
        """Share of the KB's department-bearing subjects seen in each department."""
        if self._prior is None:
            counts: dict[str, float] = defaultdict(float)
            for depts in self.of_disease.values():
                for d, _v, _r in depts:
                    counts[d] += 1 / len(depts)
            total = sum(counts.values()) or 1.0
            self._prior = {d: c / total for d, c in counts.items()}
        return self._prior

    def listed(self, value: str) -> tuple[int, dict[str, float]]:
        """(how many subjects with departments list ``value`` as a symptom or body part, P(department |
        value) sharpened by :data:`SHARPEN` and normalized)."""
        if value not in self._listed:
            of = self.of_disease
            sids = self.listings.get(value, ())
            dist: dict[str, float] = defaultdict(float)
            for sid in sids:
                for d, _v, _r in of[sid]:
                    dist[d] += 1 / len(of[sid])
            self._listed[value] = (len(sids), _sharpen(dist, self.prior))
        return self._listed[value]

    @property
    def listings(self) -> dict[str, tuple[int, ...]]:
        """Value -> the subjects with departments that list it as a symptom or body part (one pass)."""
        if self._listings is None:
            of = self.of_disease
            subjects: dict[str, set[int]] = defaultdict(set)
            marks = ",".join("?" * len(EVIDENCE_ATTRIBUTES))
            for sid, value in self.kb.conn.execute(
                    f"SELECT subject_id, value FROM triples WHERE attribute IN ({marks})", EVIDENCE_ATTRIBUTES):
                if sid in of:
                    subjects[value].add(sid)
            self._listings = {v: tuple(ids) for v, ids in subjects.items()}
        return self._listings

    @property
    def cited(self) -> dict[str, tuple[int, int, int]]:
        """Value -> how many subjects (of any type) list it as a symptom, cite it as a disease (a
        complication, related disease, cause or risk factor), and as a body part or population: one pass."""
        if self._cited is None:
            role = {"symptoms": 0, **{a: 1 for a in AS_DISEASE}, **{a: 2 for a in AS_OTHER}}
            seen: dict[str, tuple[set[int], set[int], set[int]]] = defaultdict(lambda: (set(), set(), set()))
            for sid, attribute, value in self.kb.conn.execute(
                    f"SELECT subject_id, attribute, value FROM triples WHERE attribute IN ({','.join('?' * len(role))})",
                    tuple(role)):
                seen[value][role[attribute]].add(sid)
            self._cited = {v: (len(a), len(b), len(c)) for v, (a, b, c) in seen.items()}
        return self._cited

    @property
    def cues(self) -> dict[str, tuple[int, dict[str, float]]]:
        """Two-character words of the KB's disease names and symptom / body-part values that mostly
        belong to one department (月经 -> 妇科, 牙齿 -> 口腔科): word -> (subjects whose wording has it,
        P(department | word) sharpened and normalized); cached on disk with the KB's other derived data."""
        if self._cues is None:
            from qihuang.kb.cache import cached

            self._cues = cached(self.kb, "department-cues", self._build_cues, extra=_book_key(self.book))
        return self._cues

    def _build_cues(self) -> dict[str, tuple[int, dict[str, float]]]:
        of = self.of_disease
        wording: dict[int, set[str]] = defaultdict(set)
        for sid, name in self.kb.conn.execute("SELECT id, name FROM entities WHERE is_subject = 1"):
            if sid in of:
                wording[sid].add(name)
        marks = ",".join("?" * len(EVIDENCE_ATTRIBUTES))
        for sid, value in self.kb.conn.execute(
                f"SELECT subject_id, value FROM triples WHERE attribute IN ({marks})", EVIDENCE_ATTRIBUTES):
            if sid in of:
                wording[sid].add(value)
        counts: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        seen: dict[str, int] = defaultdict(int)
        for sid, texts in wording.items():
            depts = of[sid]
            for gram in {t[i:i + 2] for t in texts for i in range(len(t) - 1)}:
                seen[gram] += 1
                for d, _v, _r in depts:
                    counts[gram][d] += 1 / len(depts)
        prior = self.prior
        out = {}
        for gram, n in seen.items():
            if n < CUE_MIN_SUBJECTS:
                continue
            dist = counts[gram]
            total = sum(dist.values())
            top, c = max(dist.items(), key=lambda kv: kv[1])
            if c / total >= CUE_MIN_SHARE and c / total / max(prior.get(top, 0.0), 1e-4) >= CUE_MIN_LIFT:
                out[gram] = (n, _sharpen(dist, prior))
        for word, depts in self.book.body_words.items():  # the team's body words, where the KB says nothing
            if word not in out:
                out[word] = (BODY_WORD_SUBJECTS, {d: (1.0 if i == 0 else 0.5) / (1 + 0.5 * (len(depts) - 1))
                                                  for i, d in enumerate(depts)})
        return out

    def parts(self, value: str) -> list[tuple[str, float]]:
        """``value`` and the shorter values inside it that subjects list as symptoms or body parts
        (皮肤瘙痒 -> 瘙痒, 皮肤), with the share of the value's evidence weight each carries: the KB often
        lists the general wording (瘙痒) where a question uses a specific one."""
        listings = self.listings
        inner = [v for v in dict.fromkeys(value[i:j] for i in range(len(value))
                                           for j in range(i + 2, len(value) + 1) if j - i < len(value))
                 if len(listings.get(v, ())) >= MIN_LISTED]
        if not inner:
            return [(value, 1.0)]
        return [(value, 1.0 - PART_SHARE)] + [(v, PART_SHARE / len(inner)) for v in inner]

    def kind(self, name: str) -> str | None:
        """The entity type of a KB name (None when unknown)."""
        if name not in self._kinds:
            row = self.kb.conn.execute("SELECT type FROM entities WHERE name = ?", (name,)).fetchone()
            self._kinds[name] = row[0] if row else None
        return self._kinds[name]

    def symptoms_of(self, name: str) -> frozenset[str]:
        """The symptoms a subject lists (empty for a value-only name)."""
        if name not in self._symptoms:
            self._symptoms[name] = frozenset(v for (v,) in self.kb.conn.execute(
                "SELECT t.value FROM triples t JOIN entities e ON e.id = t.subject_id "
                "WHERE e.name = ? AND t.attribute = 'symptoms'", (name,)))
        return self._symptoms[name]

    def symptom_of(self, name: str) -> tuple[int, int, int]:
        """(subjects that list ``name`` as a symptom, that cite it as a disease, as a body part or population)."""
        return self.cited.get(name, (0, 0, 0))

    def described(self, name: str) -> bool:
        """Whether ``name`` can make a symptom description: the KB lists it as a symptom of at least
        :data:`MIN_LISTED` subjects, or of some and more often as a symptom than as a body part or a
        population (龟头或阴茎部疼痛 is a symptom; 心肌 and 新生儿, typed symptoms too, are a body part and a population)."""
        as_symptom, _as_disease, as_other = self.symptom_of(name)
        return as_symptom >= MIN_LISTED or as_symptom > as_other

    def symptom_like(self, name: str) -> bool:
        """Whether the KB treats ``name`` as a symptom rather than a disease: listed as a symptom by at least
        :data:`MIN_LISTED` subjects and :data:`SYMPTOM_RATIO` times as often as it is cited as a disease
        (腰痛, 腹泻, 胸痛 are CMeKG diseases that other diseases list as symptoms; 糖尿病 and 肺炎 are not)."""
        as_symptom, as_disease, _other = self.symptom_of(name)
        return as_symptom >= MIN_LISTED and as_symptom >= SYMPTOM_RATIO * as_disease

    def own(self, name: str) -> tuple[str, list[tuple[str, str, str]]]:
        """(the subject whose 就诊科室 answer for ``name``, its departments): ``name`` itself when it has
        some, else for a disease the shortest disease subject whose name starts with it, at most
        :data:`NEAR_LONGER` characters longer (癫痫 -> 癫痫病, 脑梗 -> 脑梗死); ("", []) when none."""
        if name not in self._own:
            of = self.of_disease
            row = self.kb.conn.execute("SELECT id, type FROM entities WHERE name = ?", (name,)).fetchone()
            found = (name, of[row[0]]) if row and row[0] in of else ("", [])
            if not found[1] and row and row[1] == "disease" and len(name) >= 2:
                for sid, other in self.kb.conn.execute(  # names starting with ``name`` (a range of the index)
                        "SELECT id, name FROM entities WHERE name > ? AND name < ? AND type = 'disease' "
                        "AND is_subject = 1 AND length(name) <= ? ORDER BY length(name), id",
                        (name, name + chr(0x10FFFF), len(name) + NEAR_LONGER)):
                    if sid in of:
                        found = (other, of[sid])
                        break
            self._own[name] = found
        return self._own[name]


def _sharpen(dist: dict[str, float], prior: dict[str, float]) -> dict[str, float]:
    """P(department | evidence) divided by P(department) ** SHARPEN, normalized; :data:`SETTINGS` are
    left out."""
    sharp = {d: c / max(prior.get(d, 0.0), 1e-4) ** SHARPEN for d, c in dist.items() if d not in SETTINGS}
    total = sum(sharp.values())
    return {d: c / total for d, c in sharp.items() if c >= MIN_PART * total} if total else {}


def _book_key(book: DepartmentBook) -> str:
    """A key for the cue table: the department data (its fields in a fixed order) and the cue parameters."""
    import hashlib

    data = json.dumps(book.model_dump(mode="json"), ensure_ascii=False, sort_keys=True)
    params = (EVIDENCE_ATTRIBUTES, SHARPEN, MIN_PART, CUE_MIN_SUBJECTS, CUE_MIN_SHARE, CUE_MIN_LIFT, sorted(SETTINGS),
              BODY_WORD_SUBJECTS)
    return hashlib.sha256((data + repr(params)).encode()).hexdigest()[:12]


def _kb_relation(relation: str, value: str, department: str) -> str:
    """The KB relation of a department triple, with the KB's own wording when the hospital's differs."""
    return relation if value == department else f"{relation}（知识库：{value}）"


def rank(index: DepartmentIndex, named: list[str], described: list[str], candidates: list[dict],
         patient: Patient, text: str = "") -> list[Ranked]:
    """Departments for a question, best first (see the module docstring); [] when there is no evidence.
    ``named``: question entities with departments of their own; ``described``: the described symptoms
    (a name in both is weighed as a symptom, :data:`SYMPTOM_NAMED_WEIGHT`)."""
    scores: dict[str, float] = defaultdict(float)
    added: list[tuple[Source, dict[str, float], float]] = []  # each department's sources are made for the ranked ones only

    def add(source: Source, dist: dict[str, float], weight: float) -> None:
        for d, p in dist.items():
            scores[d] += weight * p
        added.append((source, dist, weight))

    own = set()
    for name in named:
        subject, depts = index.own(name)
        weight = SYMPTOM_NAMED_WEIGHT if name in described else NAMED_WEIGHT
        for i, (d, value, rel) in enumerate(depts):
            add(Source(subject, _kb_relation(rel, value, d), (name,)), {d: 1.0 if i == 0 else 0.9}, weight / len(depts))
            own.add(d)
    for value in described:
        source = Source(value, SYMPTOM_RELATION, (value,))
        for part, share in index.parts(value):
            n, dist = index.listed(part)
            add(source, dist, share * n / (n + RELIABILITY))
    usable = [c for c in candidates if c.get("confident")] or candidates
    total = sum(c.get("score", 0.0) for c in usable) or 1.0
    for cand in usable:
        subject, depts = index.own(cand["disease"])
        anchors = tuple(cand.get("evidence") or ()) or (cand["disease"],)
        for d, value, rel in depts:
            add(Source(subject, _kb_relation(rel, value, d), anchors), {d: 1.0},
                CANDIDATE_WEIGHT * cand.get("score", 0.0) / total / len(depts))
    cues = index.cues
    for gram in dict.fromkeys(text[i:i + 2] for i in range(len(text) - 1)):
        if gram in cues:
            n, dist = cues[gram]
            add(Source("", f"“{gram}”", ()), dist, CUE_WEIGHT * n / (n + RELIABILITY))
    best = max(scores.values(), default=0.0)
    kept = [(d, score) for d, score in sorted(scores.items(), key=lambda kv: -kv[1])
            if score >= MIN_SHARE * best and score > 0]
    sources: dict[str, dict[Source, float]] = {d: {} for d, _s in kept}
    for source, dist, weight in added:
        for d, p in dist.items():
            if d in sources:
                held = sources[d]
                held[source] = held.get(source, 0.0) + weight * p
    ranked = [Ranked(d, score, sources[d], named=d in own) for d, score in kept]
    return _by_group(index.book, ranked, patient)


def _excluded(patient: Patient, evidence: bool = True) -> set[str]:
    """The department families not named for this patient: 妇科 for a man, 男科 for a woman, 儿科 and its kin
    for an adult. Symptom ``evidence`` (儿科 because many children's diseases list 发热) counts for no one
    but a child; a disease's own 就诊科室 (百日咳 -> 儿科) only yields to a patient known to be an adult."""
    adult = (patient.age is not None and "child" not in patient) or bool({"pregnant", "elderly"} & patient.groups)
    drop = {"child"} if ("child" not in patient if evidence else adult) else set()
    if "male" in patient:
        drop |= {"female", "obstetric"}
    if "female" in patient:
        drop.add("male")
    return drop


def _by_group(book: DepartmentBook, ranked: list[Ranked], patient: Patient) -> list[Ranked]:
    """Re-rank for the patient's group (module docstring); a child's department that only a named disease
    gives, for a patient of unknown age, comes after the others."""
    strict, lenient = _excluded(patient), _excluded(patient, evidence=False)
    out = [r for r in ranked if book.family(r.name) not in (lenient if r.named else strict)]
    out.sort(key=lambda r: book.family(r.name) in strict)  # stable: the rest keep their order
    g = book.groups
    for key in ("pregnant", "newborn", "child"):
        if key not in patient:
            continue
        dept = getattr(g, key).department
        if dept is None:
            continue
        out = [r for r in out if r.name != dept]
        at = 1 if key == "child" and out and out[0].name in g.child.direct else 0
        out.insert(at, Ranked(dept, group=key))
        break
    if "elderly" in patient and g.elderly.department and all(r.name != g.elderly.department for r in out):
        out.insert(min(len(out), TOP - 1), Ranked(g.elderly.department, group="elderly"))
    return out


# ---- the retrieval hook -------------------------------------------------------------------------
def apply(kb, text: str, mentions: list[Mention], candidates: list[dict], groups: list[tuple[str, ...]],
          facts: list[Fact]) -> list[Fact]:
    """``facts`` with departments as hospitals name them (the hook at the end of retrieval).

    A symptom description (a described symptom that at least :data:`MIN_LISTED` subjects list as a symptom
    that no other named entity explains, or a disease with departments named in someone's own complaint
    asking what it is, whether it is normal or what to do) or a question that asks for a department gets
    the ranked departments (at most :data:`TOP`; 全科医学科 when nothing more specific is known) in place of
    the KB-worded department facts retrieval found: first, or after the facts that answer what the question asks
    (头痛吃什么药: the drugs first). Otherwise a department fact whose KB wording is not the hospital's is
    replaced by the hospital's (the KB wording kept in its relation), or dropped when it names none. With a
    hospital list (:meth:`KnowledgeBase.use_departments`) only its departments are named, each through its
    nearest parent the hospital has."""
    index: DepartmentIndex = kb.departments
    live = [m for m in mentions if not getattr(m, "negated", False)]
    names = list(dict.fromkeys(m.name for m in live))
    symptoms = [m.name for m in live if m.type == "symptom" or index.symptom_like(m.name)]
    symptoms += [s for c in candidates for s in c.get("evidence") or [] if s not in symptoms]
    real = [n for n in symptoms if n in names and index.described(n)]
    # a named disease whose own facts answer what is asked is the question's topic (不稳定性心绞痛怎么治疗),
    # not a symptom someone describes, unless the question speaks of a patient (我腰痛怎么办)
    topic = {f.entity for f in facts if f.via == "direct" and any(f.attribute in g for g in groups)}
    if topic and not _PATIENT.search(text) and not any("related_diseases" in g for g in groups):
        real = [n for n in real if n not in topic]
    # someone's own complaint asking what it is, whether it is normal, what to do or where to go
    # (孩子脸上长斑点是怎么回事) is a symptom description whatever type the KB gives the condition it names: a
    # disease named there (with departments of its own) is what the patient has or fears, and its departments
    # follow the answer
    complaint = _describes_by_words(text, groups)
    if complaint:
        real += [n for n in names if n not in real and index.kind(n) in CONDITIONS and index.own(n)[1]]
    # a symptom that another named entity explains is no description: a value of its facts (布洛芬缓释胶囊的
    # 副作用有恶心吗) or one of its own symptoms (过敏性鼻炎老打喷嚏吃什么药)
    describes = bool(real) and (bool(candidates) or _describes(index, real, names, symptoms, facts))
    asked = any("department" in g for g in groups)
    if not names and not facts and complaint:
        return _by_wording(index, text, patient_groups(text, index.book))
    if not names or not (describes or (asked and facts)):  # (a lexical match names no question entity)
        if not any(f.attribute == "department" for f in facts):
            return facts
        return _mapped(index, facts, patient_groups(text, index.book))
    named = [n for n in names if index.own(n)[1]]
    # a named disease is evidence through its own departments; a described symptom (one the candidates
    # rest on, or one the KB treats as a symptom: 腹痛 next to 腰痛) through the diseases that list it
    described = [n for n in names if n not in named or (describes and n in symptoms)]
    patient = patient_groups(text, index.book)
    ranked = rank(index, named, described, candidates, patient, text)
    out = _facts_of(index, ranked, patient, [n for n in names if n in symptoms] + [n for n in names if n not in symptoms])
    if not out:
        out = _fallback(index, real or names)
    rest = [f for f in facts if f.attribute != "department"]
    at = 0 if asked else _answering(kb, rest, groups)
    return rest[:at] + out + rest[at:]


_WORDING_ASKS = frozenset({"related_diseases", "cause", "treatment", "department", "prognosis"})  # 怎么回事, 怎么办, 挂什么科, 正常吗


def _describes_by_words(text: str, groups: list[tuple[str, ...]]) -> bool:
    """A question that links to nothing in the KB but is someone's complaint (a patient word: 我, 孩子, 最近,
    an age) asking what it is, whether it is normal, what to do or where to go: its departments may still come
    from its wording."""
    return bool(_PATIENT.search(text)) and any(a in _WORDING_ASKS for g in groups for a in g)


def _by_wording(index: DepartmentIndex, text: str, patient: Patient) -> list[Fact]:
    """Departments from the question's wording alone (腋下长了小疙瘩 -> 皮肤科 by 腋下), each fact anchored at
    the words it rests on; [] when no word of the question ties to a department (no 全科医学科 guessed for a
    question the KB knows nothing of)."""
    ranked = rank(index, [], [], [], patient, text)
    words = [text[i:i + 2] for i in range(len(text) - 1) if text[i:i + 2] in index.cues]
    return _facts_of(index, ranked, patient, list(dict.fromkeys(words))) if ranked and words else []


def _describes(index: DepartmentIndex, real: list[str], names: list[str], symptoms: list[str],
               facts: list[Fact]) -> bool:
    """Whether the described symptoms make a description although retrieval found no candidates. A symptom
    another named entity explains is no evidence of one: a value of its facts (布洛芬缓释胶囊的副作用有恶心吗)
    or one of its own symptoms (过敏性鼻炎老打喷嚏吃什么药). A named disease is the patient's history (我腰椎间盘
    突出，手脚经常麻木); next to a drug or another entity the question is about, one unexplained symptom is
    context (阿奇霉素片吃了肚子疼，副作用都有啥), :data:`MIN_DESCRIBED` make a description."""
    others = [f for f in facts if f.via not in LOOKED_UP and f.entity not in symptoms]
    explained = {f.value for f in others}.union(*(index.symptoms_of(n) for n in names if n not in symptoms))
    unexplained = [n for n in real if n not in explained]
    about = any(index.kind(f.entity) != "disease" for f in others)
    return len(unexplained) >= (MIN_DESCRIBED if about else 1)


def _answering(kb, facts: list[Fact], groups: list[tuple[str, ...]]) -> int:
    """How many leading facts answer an attribute the question asks (a reverse fact: the one it answers)."""
    wanted = {a for g in groups for a in g}
    inverse = kb.schema.inverse
    n = 0
    while n < len(facts) and (facts[n].attribute in wanted or (
            facts[n].via == "reverse" and inverse.get(facts[n].attribute) in wanted)):
        n += 1
    return n


def _mapped(index: DepartmentIndex, facts: list[Fact], patient: Patient) -> list[Fact]:
    """Each department fact as the hospital names it: kept as it is when that is the KB's wording, else
    with the hospital's department (the KB wording in the relation, ``via="department"``); none of a family
    the patient's group excludes (小儿神经科 is 神经内科 for a patient known to be an adult)."""
    out: list[Fact] = []
    drop = _excluded(patient, evidence=False)
    for f in facts:
        if f.attribute != "department":
            out.append(f)
            continue
        for std in index.book.map_value(f.value):
            if index.book.family(std) in drop:
                continue
            placed = _place(index, std)
            if placed is None:
                continue
            name, moved = placed
            fact = f if name == f.value else Fact(f.entity, f.attribute, f"{f.relation}（知识库：{f.value}{moved}）",
                                                  name, "department", f.anchor or f.entity)
            if fact not in out:
                out.append(fact)
    return out


def _place(index: DepartmentIndex, std: str) -> tuple[str, str] | None:
    """(the name a standard department goes by, "" or how the hospital's list moved it); None when the
    hospital's list has nothing for it."""
    if index.hospital is None:
        return std, ""
    placed = index.hospital.place(std, index.book)
    if placed is None:
        return None
    where, name = placed
    return name, "" if where == std else f"；本院无{std}"


def _facts_of(index: DepartmentIndex, ranked: list[Ranked], patient: Patient, names: list[str]) -> list[Fact]:
    """One fact per department (at most :data:`TOP`), as the hospital names it."""
    out: list[Fact] = []
    seen: set[str] = set()
    for r in ranked:
        placed = _place(index, r.name)
        if placed is None or placed[0] in seen:
            continue
        name, moved = placed
        seen.add(name)
        entity, relation, anchors = _basis(r, patient, names)
        if moved:
            relation = f"{relation[:-1]}{moved}）" if relation.endswith("）") else f"{relation}（{moved[1:]}）"
        out.append(Fact(entity, "department", relation, name, "department", "、".join(anchors)))
        if len(out) >= TOP:
            break
    return out


def _basis(r: Ranked, patient: Patient, names: list[str]) -> tuple[str, str, tuple[str, ...]]:
    """(entity, relation, anchors) of the fact naming ``r``: the source that gave most (a named disease's
    own 就诊科室 triple, a candidate disease's, or a described symptom), the question entities behind
    all its sources, strongest first; a patient group's department rests on the whole question."""
    if r.group:
        label = {"pregnant": "妊娠", "newborn": "新生儿", "child": "儿童", "elderly": "老年"}[r.group]
        word = patient.why.get(r.group) or patient.why.get("age", "")
        return names[0], f"就诊科室（按人群：{label}{'，' + word if word else ''}）", tuple(names)
    ordered = sorted(r.sources, key=r.sources.get, reverse=True)
    anchors = tuple(dict.fromkeys(a for s in ordered for a in s.anchors)) or tuple(names)
    cues = "".join(s.relation for s in ordered if not s.entity)
    top = next((s for s in ordered if s.entity), None)
    if top is None:  # the question's wording alone (白带 -> 妇科), anchored at what it describes
        return anchors[0], f"常见就诊科室（按用词{cues}）", anchors
    if cues and top.relation == SYMPTOM_RELATION:
        return top.entity, f"常见就诊科室（按症状、用词{cues}）", anchors
    return top.entity, top.relation, anchors


def _fallback(index: DepartmentIndex, names: list[str]) -> list[Fact]:
    """全科医学科 (or, with a hospital list that lacks it, its 急诊科) when nothing more specific is known."""
    for std in (ROOT, "急诊科"):
        placed = _place(index, std)
        if placed is not None:
            return [Fact(names[0], "department", "就诊科室（无更具体依据）", placed[0], "department", "、".join(names))]
    return []
