"""Verification of an answer against the facts that were put in its prompt.

``verify(kb, text, facts, question_attributes)`` finds every knowledge-base entity or value the
answer names and classifies each *claim*:

* ``supported``: in the facts, under an attribute the sentence presents it as;
* ``wrong_attribute``: in the facts, but only under other attributes (an adverse reaction given as
  an indication);
* ``unsupported``: a KB entity that is not in the facts, or a value of the facts that the answer
  ties to another entity of the facts (swapped entities).

What is a claim:

* every mention the retrieval linker finds (``kb.find_entities``, the same linker and noise
  filter grounding uses), plus every value of the facts found as a plain substring (values that
  are not linkable entities, e.g. 皮疹 as an adverse reaction);
* not a claim: the names of the question's own entities and of the cited entities, and names
  inside those (硝苯地平 in 硝苯地平缓释片: a model repeating the drug's name); a mention that does
  not start and end on a jieba word boundary (体检 inside 具体检查); a name the KB only has as a
  rare value (``kb.rare_values(min_support)``: extraction noise) unless it is a value of the
  facts; generic words and CMeKG names with a filler glued on (``not_claims``, ``name_fillers``
  in ``resources/verify.yaml``: 不适, 压痛等); a negated mention (``Mention.negated`` from the
  linker, or a negation word right before it, "不会引起X"): recorded as ``negated``, never counted.
  A name copied out of a longer cited value counts as that value.

How a sentence *presents* a value (the first rule that finds a cue wins):

1. in the value's clause (clauses end at ，,): the cues of the nearest stretch before it that has
   no names and has a cue ("与X存在相互作用的药物包括A、B"), together with a cue right after the
   list it ends, with only names and connectors between ("恶心、皮疹等不良反应");
2. only when the clause is *bare* (at most ``BARE_CHARS`` characters besides its names: "还有痛经",
   "1. 头痛"): the same over its whole sentence; then, for a list item, the cue of the list's
   lead-in line ("不良反应包括：" above "1. 皮疹"); then the question's attribute(s), unless they
   list entities of another type than the mention (a department named in an answer about symptoms
   is not presented as a symptom);
3. otherwise no attribute is presented: a value of the facts under any attribute is supported.

Cues are found by the linker's own detection (``kb.linker.detect_attribute_groups``). A cue
also presents the attributes listed for it under ``also_presents`` in
``resources/verify.yaml`` (a drug "治疗" its indications; a drug "引起" its adverse reactions).
The entity a claim is checked for is the nearest cited entity named before it in its sentence
or list item (or the list's lead-in; else any cited entity).
"""

from __future__ import annotations

import re
from bisect import bisect_right
from dataclasses import asdict, dataclass, field, replace

from qihuang.answer.evidence import Evidence, evidence_of
from qihuang.answer.verify_config import VerifyConfig, load_config
from qihuang.kb.lexicon import load_lexicon
from qihuang.kb.normalize import normalize
from qihuang.segment import word_boundaries

STATUSES = ("supported", "wrong_attribute", "unsupported", "negated")
BAD = ("wrong_attribute", "unsupported")
_SENTENCE_END = "。！？!?；;"
_CLAUSE_BREAK = re.compile(r"[，,]")
_PIECE_END = re.compile(r"[。！？!?；;\n]|$")  # jieba segments across none of these (they are tokens of their own)
LONG_VALUE = 4  # a fact value this long is matched without word boundaries (jieba cuts 有全/髋关节 in 有全髋关节置换术)
BARE_CHARS = 4  # a clause with at most this many characters besides its names continues the cue before it
_CJK = re.compile(r"[\u4e00-\u9fff]")
_MASK = "\u25a1"  # stands in for names when looking for cues


# ---------------------------------------------------------------- results


@dataclass
class Claim:
    """One entity or value the answer names, with what the facts say about it."""

    text: str  # as written
    name: str  # the KB name (or the fact value)
    start: int
    end: int
    status: str  # one of STATUSES
    presented: list[str] = field(default_factory=list)  # attributes the sentence presents it as ([] = any)
    cited: list[str] = field(default_factory=list)  # attributes it has in the facts (for ``entity``)
    entity: str | None = None  # the cited entity it was checked for (None: any)
    unit: tuple[int, int] = (0, 0)  # the sentence or list item it sits in
    type: str | None = None  # KB entity type of the mention (None for a plain value)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["unit"] = list(self.unit)
        return d


@dataclass
class Verification:
    """Claims of one answer; ``ok`` when none is wrong_attribute or unsupported.

    ``dropped`` lists the text the policy removed; ``draft`` the counts of the model's first
    draft (before a policy changed it); offsets index the text given to :func:`verify`."""

    claims: list[Claim] = field(default_factory=list)
    policy: str = "flag"
    checked: bool = True  # False: nothing to check against (refused / abstained / no KB)
    dropped: list[str] = field(default_factory=list)
    attempts: int = 1
    draft: dict | None = None

    @property
    def counts(self) -> dict[str, int]:
        return {s: sum(c.status == s for c in self.claims) for s in STATUSES}

    @property
    def ok(self) -> bool:
        return not any(c.status in BAD for c in self.claims)

    @property
    def bad(self) -> list[Claim]:
        return [c for c in self.claims if c.status in BAD]

    def shifted(self, offset: int) -> Verification:
        """The same verification with offsets moved by ``offset`` (text put in front)."""
        moved = [replace(c, start=c.start + offset, end=c.end + offset,
                         unit=(c.unit[0] + offset, c.unit[1] + offset)) for c in self.claims]
        return replace(self, claims=moved)

    def to_dict(self) -> dict:
        return {"ok": self.ok, "checked": self.checked, "counts": self.counts, "policy": self.policy,
                "attempts": self.attempts, "spans": [c.to_dict() for c in self.claims], "dropped": self.dropped,
                "draft": self.draft}


# ---------------------------------------------------------------- units


@dataclass(frozen=True)
class Unit:
    """A sentence or a list item: ``[start, end)``; ``lead`` is a list item's lead-in unit index."""

    start: int
    end: int
    item: bool = False
    lead: int | None = None


def split_units(text: str, config: VerifyConfig | None = None) -> list[Unit]:
    """Sentences (ending at 。！？；, or a line end) and list items (lines starting with a marker)."""
    config = config or load_config()
    units: list[Unit] = []
    pos, last_plain = 0, None
    for line in text.splitlines(keepends=True):
        is_item = bool(config.list_item.match(line))
        lead = last_plain if is_item else None
        start = pos
        for i, ch in enumerate(line):
            if ch in _SENTENCE_END or i == len(line) - 1:
                end = pos + i + 1
                if text[start:end].strip():
                    units.append(Unit(start, end, is_item, lead))
                start = end
        if not is_item and line.strip():
            last_plain = len(units) - 1
        pos += len(line)
    return units


# ---------------------------------------------------------------- verification


class Boundaries:
    """The jieba word boundaries of a text (``pos in boundaries``: as in
    :func:`~qihuang.segment.word_boundaries`), found sentence by sentence when a position of the sentence is
    first asked about: jieba cuts at every sentence end (a token of its own), so a sentence's boundaries are
    the same alone as inside the text, and a sentence without a name is never segmented. Each sentence's are
    remembered in ``memo`` (an answer's checks read the same sentences again)."""

    def __init__(self, text: str, memo: dict | None = None):
        self.text, self.memo = text, memo if memo is not None else {}
        self.ends = [m.end() for m in _PIECE_END.finditer(text)]  # where each sentence ends
        self._found: dict[int, frozenset[int]] = {}

    def __contains__(self, pos: object) -> bool:
        if not isinstance(pos, int) or not 0 <= pos <= len(self.text):
            return False
        i = bisect_right(self.ends, pos)
        start = self.ends[i - 1] if i else 0
        if pos == start or i == len(self.ends):
            return True  # a sentence's start (the end of the one before it) or the text's end
        found = self._found.get(i)
        if found is None:
            piece = self.text[start:self.ends[i]]
            cuts = self.memo.get(("cuts", piece))
            if cuts is None:
                cuts = self.memo[("cuts", piece)] = frozenset(word_boundaries(piece))
            found = self._found[i] = frozenset(start + c for c in cuts)
        return pos in found


class _Checker:
    """Verification of one text (state shared by the steps)."""

    def __init__(self, kb, text: str, evidence: Evidence, question_attributes, exclude, min_support, config):
        self.kb, self.text, self.config = kb, text, config
        self.linker = kb.linker
        self.mentions = kb.find_entities(text)
        self.memo = evidence.memo
        self.cuts = Boundaries(text, self.memo)
        self.index, self.context, self.fact_entities = evidence.index, evidence.context, evidence.entities
        self._all_values, self._index_values = evidence.values, evidence.index_values
        known = getattr(getattr(kb, "schema", None), "attributes", None)
        self.question_attributes = [a for a in question_attributes or [] if a != "alias" and (not known or a in known)]
        self.exclude = set(exclude) | self.fact_entities
        self.excluded_forms = {normalize(n) for n in self.exclude}
        rare = getattr(kb, "rare_values", None)
        self.rare = rare(min_support) if rare and min_support > 1 else frozenset()
        self.units = split_units(text, config)
        self.not_claims = config.not_claims
        self.values = self._value_spans()
        self.name_spans = [(m.start, m.end) for m in self.mentions] + [(s, e) for s, e, _ in self.values]
        chars = list(text)
        for s, e in self.name_spans:
            chars[s:e] = [_MASK] * (e - s)
        self.masked = "".join(chars)
        self.object_types = self.memo.get("object_types")
        if self.object_types is None:
            self.object_types = self.memo["object_types"] = \
                {k: a.object_type for k, a in kb.schema.attributes.items()} if hasattr(kb, "schema") else {}

    def unit_of(self, pos: int) -> int:
        for i, u in enumerate(self.units):
            if u.start <= pos < u.end:
                return i
        return len(self.units) - 1

    def _groups(self, start: int, end: int) -> list[tuple[str, ...]]:
        """The linker's cue groups of [start, end), names masked (a cue inside a name, 继发 in 继发性肾病, is none);
        each masked stretch's remembered in ``memo``."""
        if end <= start:
            return []
        stretch = self.masked[start:end]
        found = self.memo.get(("cues", stretch))
        if found is None:
            found = self.memo[("cues", stretch)] = self.linker.detect_attribute_groups(stretch, [])
        return found

    def presented(self, start: int, end: int, etype: str | None = None) -> list[str]:
        """The attributes the text presents the span [start, end) as (module docstring rule)."""
        u = self.units[self.unit_of(start)]
        breaks = [m.end() + u.start for m in _CLAUSE_BREAK.finditer(self.text[u.start:start])]
        c_start = breaks[-1] if breaks else u.start
        after = _CLAUSE_BREAK.search(self.text, end, u.end)
        c_end = after.start() if after else u.end
        groups = self._before(c_start, start) + self._after(end, c_end)
        if groups:
            return self._widen(groups)
        if not self._bare(c_start, c_end):
            return []
        groups = self._before(u.start, start) + self._after(end, u.end)
        if not groups and u.item and u.lead is not None:
            groups = self._before(self.units[u.lead].start, self.units[u.lead].end)
        if groups:
            return self._widen(groups)
        asked = self._widen(list(self.question_attributes))
        if etype and asked and all(self.object_types.get(a) not in (None, etype) for a in asked):
            return []  # a department named in an answer about symptoms is not presented as a symptom
        return asked

    def _before(self, lo: int, hi: int) -> list[tuple[str, ...]]:
        """The cues of the nearest stretch of [lo, hi) without names that has any ("与X存在相互作用的药物包括")."""
        names = sorted((s, e) for s, e in self.name_spans if lo <= s and e <= hi)
        bounds = [lo, *(x for span in names for x in span), hi]
        for i in range(len(bounds) - 2, -1, -2):
            groups = self._groups(bounds[i], bounds[i + 1])
            if groups:
                return groups
        return []

    def _after(self, end: int, hi: int) -> list[tuple[str, ...]]:
        """The cue right after a list that ends the claim ("恶心、皮疹等不良反应"), if any."""
        groups = self._groups(end, hi)
        return groups[:1] if groups and self._cue_follows(end, hi) else []

    def _cue_follows(self, end: int, hi: int) -> bool:
        """Whether the first cue after ``end`` (before ``hi``) follows it with only names and connectors between."""
        first = self._groups(end, hi)[0]
        cue_start = next((j - 1 for j in range(1, hi - end + 1) if self._groups(end + j, hi)[:1] != [first]),
                         hi - end)
        between = self._strip_names(end, end + cue_start)
        return all(ch in self.config.cue_after_connectors for ch in between if not ch.isspace())

    def _strip_names(self, start: int, end: int) -> str:
        """The text of [start, end) without the names (mentions, fact values) in it."""
        chars = list(self.text[start:end])
        for m in self.mentions:
            for i in range(max(m.start, start), min(m.end, end)):
                chars[i - start] = ""
        rest = normalize("".join(chars))
        for value in self._index_values:
            if len(value) >= 2:
                rest = rest.replace(value, "")
        return rest

    def _bare(self, start: int, end: int) -> bool:
        """Whether the clause is little more than names (a list continued: "还有痛经", "1. 头痛")."""
        rest = self.config.list_item.sub("", self.text[start:end])
        for m in self.mentions:
            if start <= m.start and m.end <= end:
                rest = rest.replace(self.text[m.start:m.end], "")
        values = [v for v in self.index if len(v) >= 2]
        if values:  # normalize() is idempotent: once is enough
            rest = normalize(rest)
            for value in values:
                rest = rest.replace(value, "")
        return len(re.findall(r"\w", rest)) <= BARE_CHARS

    def _widen(self, groups) -> list[str]:
        """The attributes of cue groups, each with the ones it also presents (verify.yaml)."""
        group = [a for g in groups for a in (g if isinstance(g, tuple) else (g,))]
        out = list(dict.fromkeys(group))
        for a in group:
            out += [b for b in self.config.also_presents.get(a, ()) if b not in out]
        return out

    def negated(self, mention, start: int) -> bool:
        if getattr(mention, "negated", False):
            return True
        u = self.units[self.unit_of(start)]
        head = self.text[u.start:start]
        head = head[max(head.rfind(ch) for ch in "，,：:、") + 1:] if head else head
        return load_lexicon().negation.negates(normalize(head), answer=True)  # the one negation lexicon

    def subject(self, pos: int) -> str | None:
        """The nearest cited entity named before ``pos`` in its sentence or list item (else in the
        list's lead-in; None: any cited entity)."""
        u = self.units[self.unit_of(pos)]
        for lo, hi in ((u.start, pos), (self.units[u.lead].start, self.units[u.lead].end) if u.item and
                       u.lead is not None else (0, 0)):
            before = [m for m in self.mentions if lo <= m.start and m.end <= hi and m.name in self.fact_entities]
            if before:
                return before[-1].name
        return None

    def classify(self, text: str, name: str, start: int, end: int, entities: dict[str, set[str]] | None,
                 etype: str | None) -> Claim:
        """The claim's status (module docstring)."""
        presented = self.presented(start, end, etype)
        subject = self.subject(start)
        claim = Claim(text, name, start, end, "unsupported", presented, [], subject,
                      (self.units[self.unit_of(start)].start, self.units[self.unit_of(start)].end), etype)
        if not entities:
            known = self.context.get(normalize(name), {})
            pool = known.get(subject, set()) if subject is not None else set().union(set(), *known.values())
            if pool and not pool & set(presented or pool):
                claim.status, claim.cited = "wrong_attribute", sorted(pool)
            return claim
        if subject is not None and subject not in entities:
            claim.cited = sorted({a for attrs in entities.values() for a in attrs})
            return claim  # a value of another cited entity ascribed to this one: swapped
        pool = entities[subject] if subject is not None else set().union(*entities.values())
        claim.cited = sorted(pool)
        ok = not presented or bool(pool & set(presented))
        claim.status = "supported" if ok else "wrong_attribute"
        return claim

    def _value_spans(self) -> list[tuple[int, int, str]]:
        """Occurrences of the facts' values (longest first, on word boundaries, not overlapping)."""
        norm_text = normalize(self.text)
        values = self._all_values
        taken = bytearray(len(self.text))
        spans = []
        for value in values:
            if len(value) < 2 or value in self.exclude:
                continue
            s = norm_text.find(value)
            while s >= 0:  # non-overlapping occurrences, left to right (no regex compiled per value)
                e = s + len(value)
                if not any(taken[s:e]) and (len(value) >= LONG_VALUE or s in self.cuts and e in self.cuts):
                    taken[s:e] = b"\1" * (e - s)
                    spans.append((s, e, value))
                s = norm_text.find(value, e)
        return spans

    def _unit_span(self, pos: int) -> tuple[int, int]:
        u = self.units[self.unit_of(pos)]
        return u.start, u.end

    def _claim(self, mention, text: str, name: str, s: int, e: int, etype: str | None) -> Claim:
        if self.negated(mention, s):
            return Claim(text, name, s, e, "negated", type=etype, unit=self._unit_span(s))
        entities = self.index.get(normalize(name)) or (self.index.get(normalize(text)) if text != name else None)
        if not entities and mention is not None:
            entities = self._inside_values(normalize(text), normalize(name))
        return self.classify(text, name, s, e, entities, etype)

    def _inside_values(self, *forms: str) -> dict[str, set[str]] | None:
        """Entities/attributes of the fact values that contain the name ("急性肠炎" of "用于胃肠湿热所致的腹泻、
        急性肠炎"): a name copied out of a longer cited value is in the facts."""
        found: dict[str, set[str]] = {}
        for value, entities in self.index.items():
            if len(value) > max(map(len, forms)) and any(f and f in value for f in forms if len(f) >= 2):
                for entity, attrs in entities.items():
                    found.setdefault(entity, set()).update(attrs)
        return found or None

    def _part_of_excluded(self, mention) -> bool:
        """A name inside the question's or a cited entity's name (硝苯地平 in 硝苯地平缓释片, 肾动脉 in 肾动脉闭塞)."""
        forms = {normalize(mention.surface), normalize(mention.name)}
        return any(f in name for f in forms if len(f) >= 2 for name in self.excluded_forms if len(name) > len(f))

    def run(self) -> list[Claim]:
        claims: list[Claim] = []
        values = self.values
        used = bytearray(len(self.text))
        padded = set()
        for m in self.mentions:
            if m.name not in self.exclude and self._padded_value(m):
                padded.add((m.start, m.end))
                continue  # "压痛等" (a CMeKG name with a filler) where the facts have 压痛: the value is the claim
            used[m.start:m.end] = b"\1" * (m.end - m.start)
            if m.name in self.exclude or m.start not in self.cuts or m.end not in self.cuts or \
                    normalize(m.surface) in self.not_claims or normalize(m.name) in self.not_claims or \
                    self._part_of_excluded(m):
                continue
            if any(s <= m.start and m.end <= e and e - s > m.end - m.start for s, e, _ in values):
                continue  # part of a longer value of the facts ("2型糖尿病", a dosage sentence): that is the claim
            known = normalize(m.name) in self.index or normalize(m.surface) in self.index
            if not known and m.name in self.rare and normalize(m.name) not in self.context:
                continue
            claims.append(self._claim(m, m.surface, m.name, m.start, m.end, m.type))
        for s, e, value in values:
            if value in self.not_claims or (s, e) not in padded and any(m.start == s and m.end == e
                                                                         for m in self.mentions):
                continue  # a generic word (masked for cues, no claim), or the mention was the claim (or is excluded)
            if all(not used[i] or self._inside_longer(i, s, e) for i in range(s, e)):
                claims.append(self._claim(None, self.text[s:e], value, s, e, None))
        return self._spread_negation(sorted(claims, key=lambda c: c.start))

    def _spread_negation(self, claims: list[Claim]) -> list[Claim]:
        """"不会引起头痛、恶心": a claim listed right after a negated one is negated too."""
        for prev, cur in zip(claims, claims[1:]):
            between = self.text[prev.end:cur.start]
            if prev.status == "negated" and cur.status != "negated" and between and \
                    all(ch in "、和及或与以 " for ch in between):
                cur.status, cur.presented, cur.cited, cur.entity = "negated", [], [], None
        return claims

    def _padded_value(self, mention) -> bool:
        """A CMeKG name with a filler glued on or a list inside ("压痛等", "恶心、呕吐"): not a name of its own
        (the fact value inside it, if any, is the claim)."""
        surface = normalize(mention.surface)
        if surface in self.index:
            return False
        return any(surface.endswith(x) for x in self.config.name_fillers) or \
            any(surface.startswith(x) for x in self.config.name_prefixes) or any(ch in surface for ch in "、，,")

    def _inside_longer(self, i: int, s: int, e: int) -> bool:
        """Whether character ``i`` belongs only to mentions that lie inside the value span [s, e)."""
        return all(s <= m.start and m.end <= e for m in self.mentions if m.start <= i < m.end)


def verify(kb, text: str, facts, question_attributes: list[str] | None = None, *, exclude: set[str] | None = None,
           min_support: int = 3, context=None, config: VerifyConfig | None = None,
           evidence: Evidence | None = None) -> Verification:
    """Check every KB entity or value ``text`` names against ``facts`` (see the module doc).

    ``question_attributes`` are the attributes the question asks about (the fallback of the
    presentation rule); ``exclude`` names that are not claims (the question's own entities; the
    cited entities are always excluded); ``min_support``: names the KB has only as a value in fewer
    triples than this are noise (1 counts every name); ``context``: the cited entities' other KB facts
    (default: looked up), so that naming one of their values under a wrong attribute is caught even when
    that attribute was not in the prompt (such a value is never ``supported``: it was not cited);
    ``evidence``: ``facts`` and ``context`` already indexed (:func:`evidence_of`), for many texts checked
    against the same facts."""
    if kb is None or not (text or "").strip():
        return Verification([], checked=kb is not None)
    config = config or load_config()
    evidence = evidence or evidence_of(kb, facts, context, config)
    return Verification(_Checker(kb, text, evidence, question_attributes, exclude or set(), min_support, config).run())


def question_names(kb, texts: list[str]) -> set[str]:
    """KB names of the entities mentioned in the question (and earlier turns): not claims."""
    return {m.name for t in texts if t for m in kb.find_entities(t)} if kb is not None else set()


def has_text(text: str) -> bool:
    """Whether ``text`` still says anything (a CJK character or a word)."""
    return bool(_CJK.search(text or "") or re.search(r"[A-Za-z]{2,}", text or ""))
