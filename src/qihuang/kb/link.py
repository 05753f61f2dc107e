"""Entity and attribute linking with Aho-Corasick automata over normalized text."""

from __future__ import annotations

import re

import ahocorasick

from qihuang.kb.normalize import normalize
from qihuang.kb.types import Mention

_ASCII_WORD = frozenset("abcdefghijklmnopqrstuvwxyz0123456789")


def _leftmost_longest(matches: list[tuple[int, int, object]]) -> list[tuple[int, int, object]]:
    """Non-overlapping spans, longer first, then earlier; returned in text order."""
    taken: list[tuple[int, int, object]] = []
    used = bytearray()
    for start, end, payload in sorted(matches, key=lambda m: (m[0] - m[1], m[0])):
        if len(used) < end:
            used.extend(b"\0" * (end - len(used)))
        if any(used[start:end]):
            continue
        used[start:end] = b"\1" * (end - start)
        taken.append((start, end, payload))
    return sorted(taken, key=lambda m: m[0])


# Tiers of a surface's candidates (higher wins): what a written name most likely means. A drug stem
# (阿莫西林 of 阿莫西林胶囊) links to the product only where the KB has no node of that name; where it has
# one (a value node: 布洛芬, cited by the diseases it treats), the node is linked and the products are
# listed in ``Mention.forms`` (for questions only a product answers: 布洛芬的副作用).
SUBJECT, COLLOQUIAL, ALIAS_SUBJECT, VALUE, STEM, ALIAS_VALUE = 6, 5, 4, 3, 2, 1
_SEPARATORS = frozenset("、和及与或跟 ")
_THINGS = frozenset({"disease", "drug", "herb", "formula", "examination"})  # what "X是什么病" may ask about
_CLAUSE_END = frozenset("，,。.;；!！?？:：\n()（）")
_SENTENCE_PARTS = re.compile(r"[，,。.;；!！?？\n]+")  # the clauses of a story (a parenthesis is inside one)


def _touches(norm: str, start: int, end: int, s: int, e: int) -> bool:
    """Whether the cue [s, e) covers the start of the form [start, end) or stands right next to it, one
    character apart at most, in the same clause (腹泻是什么情况，吃什么药: the comma parts the two asks)."""
    if s <= start < e or s == end or e == start:
        return True
    if s == end + 1:
        return norm[end] not in _CLAUSE_END
    return e == start - 1 and norm[e] not in _CLAUSE_END


class Linker:
    """Finds KB entities (names, aliases, colloquial names, drug stems) and asked attributes in free text."""

    def __init__(self, entities: ahocorasick.Automaton, cues: ahocorasick.Automaton,
                 object_types: dict[str, str] | None = None, yields_to: dict[str, tuple[str, ...]] | None = None,
                 negation: ahocorasick.Automaton | None = None, max_gap: int = 8, intent=None,
                 drug_affixes: tuple[tuple[str, ...], tuple[str, ...]] = ((), ()), min_stem: int = 3,
                 forms: tuple = (), asking=None, descriptive=None):
        self._entities, self._cues = entities, cues
        self._forms, self._asking = forms, asking  # multi-attribute question forms; what marks an asking clause
        self._descriptive = descriptive  # cause wording inside a description (X引起的Y), no question
        self._marked_forms = [bool(MARKS.intersection(p.pattern)) for p, *_rest in forms]  # forms that read mentions
        self._reads_mentions = {d: any(m and f[2] == d for m, f in zip(self._marked_forms, forms)) for d in (False, True)}
        self._asked_for: tuple[str, bytearray | None] = ("", None)  # the last text's asking clauses
        self._forms_for: tuple[str, list] = ("\0", [])  # the last text's question-form spans (of unmarked forms)
        self._object_types = object_types or {}  # attribute -> type of its values ("examinations" -> examination)
        self._yields_to = yields_to or {}
        self._negation, self._max_gap = negation, max_gap
        cues = [w for w, (_n, kind) in negation.items() if kind == "cue"] if negation is not None else []
        self._neg_chars = frozenset(w[0] for w in cues)  # no such character: no negation to look for
        self.intent = intent  # an IntentDetector (kb/intent.py) or None: cues only
        # salt / form words a drug mention's span grows over (盐酸…缓释片): word sets and their lengths, longest first
        self._min_stem = min_stem  # drug mentions shorter than this must be whole words (see _whole_words)
        self._affixes = tuple((frozenset(words), sorted({len(w) for w in words}, reverse=True)) for words in drug_affixes)

    @classmethod
    def build(cls, kb, intent: bool | object = True) -> "Linker":
        """The linker of ``kb``. ``intent``: True trains (or loads) the learned attribute detector,
        False uses the cue lexicon alone, or pass a ready :class:`~qihuang.kb.intent.IntentDetector`."""
        from qihuang.kb.lexicon import load_lexicon

        from qihuang.kb.cache import cached, digest

        lexicon = load_lexicon()
        entities = cached(kb, "entities", lambda: _entity_automaton(kb, lexicon), extra=digest(kb.noise_names()))
        # a cue names one attribute, or (shared_cues) alternatives: the first one an entity has is meant
        cue_map: dict[str, list[str]] = {}
        for key, attr in kb.schema.attributes.items():
            for cue in attr.cues:
                cue_map.setdefault(normalize(cue), []).append(key)
        for cue, attrs in kb.schema.shared_cues.items():
            cue_map[normalize(cue)] = list(attrs)
        cues = ahocorasick.Automaton()
        for cue, attrs in cue_map.items():
            cues.add_word(cue, (len(cue), tuple(attrs)))
        cues.make_automaton()
        if intent is True:
            from qihuang.kb.intent import IntentDetector

            intent = IntentDetector.default()
        attributes = kb.schema.attributes
        return cls(entities, cues, {k: a.object_type for k, a in attributes.items() if a.object_type},
                   {k: a.yields_to for k, a in attributes.items() if a.yields_to},
                   _negation_automaton(lexicon.negation), lexicon.negation.max_gap, intent or None,
                   lexicon.drug_forms.affixes(), lexicon.drug_forms.min_stem,
                   kb.schema.question_forms, kb.schema.asking, kb.schema.descriptive)

    def find_entities(self, text: str) -> list[Mention]:
        """Entity mentions, non-overlapping (longest first), each marked ``negated`` when a negation
        cue before it in its clause scopes over it."""
        norm = normalize(text)
        matches = []
        for end, (length, is_ascii, name, etype, via_alias, forms, is_value) in self._entities.iter(norm):
            start = end - length + 1
            if is_ascii and ((start > 0 and norm[start - 1] in _ASCII_WORD) or
                             (end + 1 < len(norm) and norm[end + 1] in _ASCII_WORD)):
                continue  # "CT" inside "ACTH" is not a mention
            matches.append((start, end + 1, (name, etype, via_alias, forms, is_value)))
        spans = self._grow_drugs(norm, self._whole_words(norm, _leftmost_longest(matches)))
        negated = self._negated(norm, spans) if spans and self._negation is not None and \
            not self._neg_chars.isdisjoint(norm) else set()
        return [Mention(name, text[s:e], s, e, etype, via_alias, s in negated, forms)
                for s, e, (name, etype, via_alias, forms, _v) in spans]

    def _whole_words(self, norm: str, spans: list[tuple[int, int, tuple]]) -> list[tuple[int, int, tuple]]:
        """Drop short drug mentions (fewer than ``min_stem`` characters) that are part of a longer drug
        name: written after an unknown word (jieba segments the text before it into a word its
        dictionary lacks: 阿兹|夫定片, 莫诺|拉韦胶囊), or followed by a few more characters and then a form
        word (瑞思坦胶囊: the stem is 瑞思坦). A known word before (吃瑞思, 我在吃夫定片) is no part of it.
        Likewise a value-only name written right after Latin letters (HPV疫苗: a vaccine the KB lacks), and a
        drug name that starts inside a common word (您好医生: 好医生 is a brand, 您好 a greeting), and a
        one-character disease (痣) that jieba does not read as a word of its own (疖子, 痔疮 are other words)."""
        inside = {i for i, (s, _e, p) in enumerate(spans)
                  if p[4] and s > 0 and norm[s - 1].isascii() and norm[s - 1].isalpha() and (not i or spans[i - 1][1] < s)}
        inside |= _inside_words(norm, [(i, s, e) for i, (s, e, p) in enumerate(spans) if p[1] in PRODUCT_TYPES and
                                       e - s <= BRAND_LENGTH and s > 0 and _is_han(norm[s - 1])])
        inside |= _single_in_word(norm, [(i, s) for i, (s, e, _p) in enumerate(spans) if e - s == 1])
        short = [i for i, (s, e, p) in enumerate(spans) if p[1] == "drug" and e - s < self._min_stem and i not in inside]
        inside |= {i for i in short if self._continues_left(norm, spans[i][0], spans[i - 1][1] if i else 0)
                   or self._continues_right(norm, spans[i][1], spans[i + 1][0] if i + 1 < len(spans) else len(norm))}
        return [span for i, span in enumerate(spans) if i not in inside] if inside else spans

    @staticmethod
    def _continues_left(norm: str, start: int, low: int) -> bool:
        import jieba

        before = norm[low:start]
        if not before or not _is_han(before[-1]):
            return False
        last = jieba.lcut(before)[-1]
        return all(_is_han(c) for c in last) and not jieba.dt.FREQ.get(last)

    def _continues_right(self, norm: str, end: int, high: int) -> bool:
        _prefixes, suffixes = self._affixes
        if _affix_at(norm, end, high, suffixes, before=False):
            return False  # its own form word (瑞思缓释片)
        for gap in range(1, 4):
            if end + gap > high or not _is_han(norm[end + gap - 1]):
                return False
            if _affix_at(norm, end + gap, high, suffixes, before=False):
                return True
        return False

    def _grow_drugs(self, norm: str, spans: list[tuple[int, int, tuple]]) -> list[tuple[int, int, tuple]]:
        """A drug mention's span takes in the salt and form words around it, up to the neighbouring
        mentions; a bare substance written with a form word means its product (盐酸二甲双胍缓释片: one
        mention of 二甲双胍片, not of the value node 二甲双胍)."""
        prefixes, suffixes = self._affixes
        out = []
        for i, (start, end, payload) in enumerate(spans):
            if payload[1] == "drug":
                low = spans[i - 1][1] if i else 0
                high = spans[i + 1][0] if i + 1 < len(spans) else len(norm)
                grown = True
                while grown:
                    grown = False
                    p = _affix_at(norm, start, low, prefixes, before=True)
                    if p:
                        start, grown = start - p, True
                    x = _affix_at(norm, end, high, suffixes, before=False)
                    if x:
                        end, grown = end + x, True
                name, etype, _via, forms, is_value = payload
                if is_value and forms and (start, end) != (spans[i][0], spans[i][1]):
                    payload = (forms[0], etype, True, (name, *forms[1:]), False)
            out.append((start, end, payload))
        return out

    def _negated(self, norm: str, spans: list[tuple[int, int, object]]) -> set[int]:
        """Starts of the spans a negation cue scopes over: the cue precedes the span in the same clause,
        no break word lies between, and at most ``max_gap`` characters that are neither other mentions
        nor list separators (没有发烧、咳嗽和头痛: all three)."""
        covered = bytearray(len(norm))
        for s, e, _ in spans:
            covered[s:e] = b"\1" * (e - s)
        found = [(end - length + 1, end + 1, kind) for end, (length, kind) in self._negation.iter(norm)]
        events = [(s, e, kind) for s, e, kind in _leftmost_longest(found) if not any(covered[s:e])]
        out: set[int] = set()
        for start, _end, _ in spans:
            cue_end = None
            for s, e, kind in events:
                if e > start:
                    break
                cue_end = e if kind == "cue" else None
            if cue_end is None:
                continue
            between = norm[cue_end:start]
            if any(c in _CLAUSE_END for c in between):
                continue
            gap = sum(1 for i, c in enumerate(between, cue_end) if not covered[i] and c not in _SEPARATORS)
            if gap <= self._max_gap:
                out.add(start)
        return out

    def detect_attribute_groups(self, text: str, mentions: list[Mention] | None = None,
                                question: bool = False) -> list[tuple[str, ...]]:
        """What ``text`` asks about, in text order: one tuple per cue, of alternative attributes
        (most cues name one; a shared cue such as 作用 names several, the first an entity has is meant).

        A cue wholly inside an entity mention is part of that name (药物性肝炎 does not ask for drugs)
        unless the entity is of the kind the attribute lists (影像学检查 asks for examinations).
        A cue is dropped when its first attribute yields to another one the text asks for (治疗药物: drugs,
        not treatment).
        ``question``: ``text`` is a user's question (retrieval), not a statement (verification): a story of
        several clauses with no clause that asks then asks nothing through its cues (出现了…的症状).
        When no cue or question form fires and the text names an entity, the learned detector (kb/intent.py)
        may answer: the attributes it gives at least its threshold probability, as one group of alternatives,
        most probable first. Cues win whenever one fires: they are exact, the detector generalizes.
        """
        if question and self._tells_only(normalize(text)):
            return []  # a story of several clauses that asks nothing: no cue or detector asks either
        groups = self._cue_groups(text, mentions)
        # a question form of symptom descriptions (怎么了, 是什么病) asks in words: nothing left to guess
        if not groups and self.intent is not None and mentions and not self.described_asks(text, mentions):
            from qihuang.kb.intent import mask_mentions

            found = self.intent.predict(mask_mentions(text, mentions))
            if found:
                groups = [tuple(a for a, _p in found)]
        return groups

    def _tells_only(self, norm: str) -> bool:
        """Several clauses, none of which asks (a story told, no question put)."""
        return self._asking is not None and self._asking_clauses(norm) is None and \
            len([c for c in _SENTENCE_PARTS.split(norm) if c.strip()]) > 1

    def _cue_groups(self, text: str, mentions: list[Mention] | None) -> list[tuple[str, ...]]:
        norm = normalize(text)
        owner: list[Mention | None] = [None] * len(norm)
        for m in mentions or ():
            for i in range(m.start, min(m.end, len(norm))):
                owner[i] = m
        asks = self._asking_clauses(norm)
        matches = [(end - length + 1, end + 1, attrs) for end, (length, attrs) in self._cues.iter(norm)]
        told = [m.span() for m in self._descriptive.finditer(norm)] if self._descriptive is not None else []
        found: list[tuple[int, int, tuple[str, ...]]] = []
        for start, end, attrs in _leftmost_longest(matches):
            if asks is not None and not asks[start]:
                continue  # 我有咳嗽的症状 describes; 有什么症状 asks
            if any(s <= start < e for s, e in told):
                continue  # 尿酸过高引起的痛风: a cause named, not asked
            holder = owner[start]
            if holder is not None and all(owner[i] is holder for i in range(start, end)) and \
                    not any(self._object_types.get(a) == holder.type for a in attrs):
                continue
            found.append((start, end, attrs))
        # a group whose primary meaning yields to an attribute another cue of its clause asks (治疗药物,
        # 治疗糖尿病的常用药物); in another clause both are asked (怎么治疗啊，可以吃前列康么)
        clause = _clause_ids(norm)
        kept = [(s, e, g) for s, e, g in found
                if not any(o is not g and clause[os_] == clause[s] and
                           set(o) & set(self._yields_to.get(g[0], ())) for os_, _oe, o in found)]
        groups: list[tuple[str, ...]] = []
        for _s, _e, g in kept:
            if g not in groups:
                groups.append(g)
        asked = {a for g in groups for a in g}
        for _start, _end, attrs in self._form_matches(norm, asks, described=False, cues=[(s, e) for s, e, _g in found],
                                                      mentions=mentions):
            for a in attrs:
                if a not in asked:
                    asked.add(a)
                    groups.append((a,))
        return groups

    def cue_spans(self, norm: str) -> list[tuple[int, int]]:
        """[start, end) of every attribute cue in normalized text (question wording, never part of a name)."""
        return [(end - length + 1, end + 1) for end, (length, _attrs) in self._cues.iter(norm)]

    def described_asks(self, text: str, mentions: list[Mention]) -> list[str]:
        """What ``text`` asks through the question forms of symptom descriptions (怎么回事, 是什么病: which
        diseases and why), except where the form asks about a named disease, drug or test right before it
        (急性心肌梗死是什么病 asks what that disease is)."""
        norm = normalize(text)
        things = [m.end for m in mentions if m.type in _THINGS]
        matches = self._form_matches(norm, self._asking_clauses(norm), described=True, cues=self.cue_spans(norm),
                                     mentions=mentions)
        return flatten([a for s, e, a in matches if "病" not in norm[s:e] or not any(s - 2 <= end <= s and not _CLAUSE_END & set(norm[end:s])
                                                             for end in things)])

    def _form_matches(self, norm: str, asks: bytearray | None, described: bool, cues: list[tuple[int, int]],
                      mentions: list[Mention] | None = None) -> list[tuple[int, int, tuple[str, ...]]]:
        """(start, end, attributes) of the first match of every question form (kb_schema.yaml
        ``question_forms``, those for symptom descriptions or the others) in an asking clause and not right
        next to a cue (``cues``: spans), which says what is asked there (治疗什么病, 还能吃别的药吗); none in a
        text that asks nothing (an answer being verified). A form that reads the question's mentions (a
        :data:`MARKS` character in its pattern) counts in any clause of a text that asks: it reads the story
        told (吃了X后…). An attribute the form asks ``only_with`` some entity types needs a mention of one; one
        it asks ``not_with`` some types is not asked next to a mention of one."""
        if asks is None:  # forms read questions only, never statements
            return []
        out = []
        types = None
        marked_text = _marked(norm, mentions) if self._reads_mentions[described] else None
        for (_pattern, attrs, only_described, only_with, not_with), found, marked in zip(
                self._forms, self._all_forms(norm, marked_text), self._marked_forms):
            if only_described != described:
                continue
            if only_with or not_with:
                if types is None:
                    types = {m.type for m in mentions or () if not m.negated}
                attrs = tuple(a for a in attrs if (a not in only_with or only_with[a] & types)
                              and not (a in not_with and not_with[a] & types))
                if not attrs:
                    continue
            for start, end in found:
                if any(_touches(norm, start, end, s, e) for s, e in cues):
                    continue  # a cue over its start or right next to it says what is asked (不能吃 of 能不能吃 does not)
                if asks[start] or marked:
                    out.append((start, end, attrs))
                    break
        return sorted(out, key=lambda x: x[0])

    def _all_forms(self, norm: str, marked: str | None = None) -> list[list[tuple[int, int]]]:
        """Per question form, the spans it matches in ``norm`` (remembered for the last text); a form that
        reads mentions matches ``marked`` (``norm`` with mentions replaced by :data:`MARKS`), or nothing."""
        memo = self._forms_for  # one read: another thread may replace it (a server links in several)
        if norm != memo[0]:
            memo = (norm, [[] if marks else [m.span() for m in p.finditer(norm)]
                           for (p, *_rest), marks in zip(self._forms, self._marked_forms)])
            self._forms_for = memo
        if marked is None or not any(self._marked_forms):
            return memo[1]
        return [[m.span() for m in p.finditer(marked)] if marks else found
                for (p, *_rest), marks, found in zip(self._forms, self._marked_forms, memo[1])]

    def question_spans(self, norm: str) -> list[tuple[int, int]]:
        """[start, end) of the question wording of normalized text: cues, question forms and asking words
        (never part of a name; the second pass does not look for misspelt names there)."""
        spans = self.cue_spans(norm)
        for found in self._all_forms(norm):
            spans += found
        if self._asking is not None:
            spans += [m.span() for m in self._asking.finditer(norm)]
        return spans

    def _asking_clauses(self, norm: str) -> bytearray | None:
        memo = self._asked_for  # one read: another thread may replace it
        if norm == memo[0]:
            return memo[1]
        mask = self._asking_mask(norm)
        self._asked_for = (norm, mask)
        return mask

    def _asking_mask(self, norm: str) -> bytearray | None:
        """Per character, whether its clause asks something (the schema's ``asking`` pattern); None when
        no clause does (a search query such as 糖尿病 饮食 asks as a whole) or no pattern is configured."""
        if self._asking is None:
            return None
        mask = bytearray(len(norm))
        start = 0
        any_asks = False
        for i in range(len(norm) + 1):
            if i == len(norm) or norm[i] in _CLAUSE_END:
                end = i + 1 if i < len(norm) and norm[i] in "?？" else i
                if self._asking.search(norm, start, end):
                    mask[start:min(end, len(norm))] = b"\1" * (min(end, len(norm)) - start)
                    any_asks = True
                start = i + 1
        return mask if any_asks else None

    def detect_attributes(self, text: str, mentions: list[Mention] | None = None) -> list[str]:
        """Every attribute ``text`` may ask about (the groups of :meth:`detect_attribute_groups`, flattened)."""
        return flatten(self.detect_attribute_groups(text, mentions))


# what a question form's pattern writes for a mention of the question (kb_schema.yaml ``question_forms``)
MARKS = frozenset("ⒹⓈ")
_MARK_OF = {"drug": "Ⓓ", "herb": "Ⓓ", "formula": "Ⓓ", "symptom": "Ⓢ"}


def _marked(norm: str, mentions: list[Mention] | None) -> str | None:
    """``norm`` with each drug mention (drug, herb, formula) written as Ⓓ and each symptom as Ⓢ, one mark per
    character (offsets kept); None when there is no such mention."""
    spans = [(m.start, m.end, _MARK_OF[m.type]) for m in mentions or () if m.type in _MARK_OF and not m.negated
             and norm[m.start:m.end] == normalize(m.surface)]  # (a mention of an earlier turn is not of this text)
    if not spans:
        return None
    chars = list(norm)
    for s, e, mark in spans:
        chars[s:e] = mark * (e - s)
    return "".join(chars)


PRODUCT_TYPES = frozenset({"drug", "herb", "formula"})  # what is taken; such names are often ordinary words too (brands)
COMMON_WORD = 100  # jieba dictionary frequency of a common word (as the noise rule's min_word_freq)
BRAND_LENGTH = 4  # product names this short may be ordinary words too (好医生); longer ones are not checked


def _inside_words(norm: str, spans: list[tuple[int, int, int]]) -> set[int]:
    """Of (index, start, end) spans, the indices whose start falls inside a common word (jieba's dictionary
    word of frequency at least :data:`COMMON_WORD`, all Han characters) that begins before it, as jieba
    segments the span with the few characters before it."""
    if not spans:
        return set()
    import jieba

    out = set()
    for i, start, end in spans:
        low = start - 1
        while low > 0 and start - low < 3 and _is_han(norm[low - 1]):
            low -= 1
        for w, s, e in jieba.tokenize(norm[low:end], HMM=False):
            if s < start - low < e and all(_is_han(c) for c in w) and jieba.dt.FREQ.get(w, 0) >= COMMON_WORD:
                out.add(i)
                break
    return out


def _single_in_word(norm: str, spans: list[tuple[int, int]]) -> set[int]:
    """Of (index, start) one-character spans, those jieba segments into a longer word (with two characters
    each side for context)."""
    if not spans:
        return set()
    import jieba

    out = set()
    for i, start in spans:
        low = max(0, start - 2)
        for w, s, e in jieba.tokenize(norm[low:start + 3], HMM=False):
            if s <= start - low < e and len(w) > 1:
                out.add(i)
                break
    return out


def _clause_ids(norm: str) -> list[int]:
    """Per character, the index of its clause (clauses end at punctuation)."""
    out, k = [], 0
    for c in norm:
        out.append(k)
        if c in _CLAUSE_END:
            k += 1
    return out


def _is_han(char: str) -> bool:
    return "\u4e00" <= char <= "\u9fff"


def flatten(groups: list[tuple[str, ...]]) -> list[str]:
    """The attributes of cue groups, each once, in order."""
    return list(dict.fromkeys(a for group in groups for a in group))


def _affix_at(norm: str, pos: int, limit: int, affixes: tuple, before: bool) -> int:
    """Length of the longest affix word ending (``before``) or starting at ``pos`` within ``limit``; 0 if none."""
    words, lengths = affixes
    for n in lengths:
        if before and pos - n >= limit and norm[pos - n:pos] in words:
            return n
        if not before and pos + n <= limit and norm[pos:pos + n] in words:
            return n
    return 0


def _negation_automaton(negation) -> ahocorasick.Automaton:
    auto = ahocorasick.Automaton()
    for kind, words in (("cue", negation.cues), ("break", negation.breaks), ("other", negation.not_negating)):
        for w in words:
            auto.add_word(w, (len(w), kind))
    auto.make_automaton()
    return auto


def _entity_automaton(kb, lexicon) -> ahocorasick.Automaton:
    """Every linkable surface -> its best entity (see the tiers above) and the other nodes it names."""
    cands: dict[str, list[tuple[tuple, str, str, bool]]] = {}  # key -> (rank, name, type, via_alias)
    stop = {normalize(w) for w in kb.schema.link_stopwords}
    noise = kb.noise_names()

    def offer(surface: str, rank: tuple, name: str, etype: str, via_alias: bool) -> None:
        key = normalize(surface.strip())
        # one character names a disease subject only (痣, 疣, 疖; kept as a whole word: Linker._whole_words)
        if (len(key) >= 2 or (_is_han(key) and etype == "disease" and rank[0] == SUBJECT)) and key not in stop:
            cands.setdefault(key, []).append((rank, name, etype, via_alias))

    nodes: dict[str, tuple[str, int]] = {}
    for name, etype, is_subject in kb.conn.execute("SELECT name, type, is_subject FROM entities"):
        nodes[name] = (etype, is_subject)
        if is_subject:
            offer(name, (SUBJECT,), name, etype, False)
        elif name not in noise:
            offer(name, (VALUE,), name, etype, False)
    for surface, name, etype in _name_variants(nodes):
        written = nodes.get(surface)
        if written is None or (not written[1] and written[0] == etype):
            offer(surface, (ALIAS_SUBJECT,), name, etype, True)
    for alias, name, etype, is_subject in kb.conn.execute(
            "SELECT a.alias, e.name, e.type, e.is_subject FROM aliases a JOIN entities e ON e.id = a.entity_id"):
        written = nodes.get(alias)
        # an alias of a subject outranks a value node of the same spelling only when both are of one type
        # (流感 -> 流行性感冒; but 外科, a department, is no 腹部损伤)
        tier = ALIAS_SUBJECT if is_subject and (written is None or written[0] == etype) else ALIAS_VALUE
        offer(alias, (tier,), name, etype, True)
    for surface, target in lexicon.colloquial.items():
        row = kb._resolve(target)
        if row is not None and not nodes.get(surface, ("", 0))[1]:
            offer(surface, (COLLOQUIAL,), row[1], row[2], True)
    forms = lexicon.drug_forms
    for name, size in kb.conn.execute(
            "SELECT e.name, count(*) FROM entities e JOIN triples t ON t.subject_id = e.id "
            "WHERE e.is_subject = 1 AND e.type = 'drug' GROUP BY e.id"):
        for key in _stems(normalize(name), forms):
            written = nodes.get(key)
            if written is None or (not written[1] and written[0] == "drug"):
                offer(key, (STEM, size, -len(name)), name, "drug", True)  # products of one stem: richest first

    for options in cands.values():
        options.sort(key=lambda o: o[0], reverse=True)
    listed = dict(kb.conn.execute("SELECT value, count(*) FROM triples WHERE attribute = 'symptoms' GROUP BY value"))
    diseases = kb.conn.execute("SELECT count(*) FROM entities WHERE type = 'disease' AND is_subject = 1").fetchone()[0]
    least = max(1, int(SPLIT_SHARE * diseases))
    for key in [k for k, o in cands.items()
                if o[0][0][0] == VALUE and o[0][2] == "symptom" and (_splits(k, cands, listed, least)
                                                                   or _joined(k, cands))]:
        del cands[key]  # 头晕乏力, 恶心呕吐: two symptoms, each linked on its own (not 宫颈糜烂, 妊娠高血压)
    # a value-only drug name whose stem names a product (盐酸二甲双胍 -> 二甲双胍 -> 二甲双胍片): its form
    for key, options in cands.items():
        rank, name, etype, _ = options[0]
        if rank[0] == VALUE and etype == "drug" and not any(o[0][0] == STEM for o in options):
            for stem in _stems(key, forms):
                best = cands.get(stem, [((0,),)])[0]
                if best[0][0] == STEM:
                    options.append(best)
                    break
    auto = ahocorasick.Automaton()
    for key, options in cands.items():
        _rank, name, etype, via_alias = options[0]
        also = [n for r, n, _t, _a in options[1:] if r[0] in (STEM, VALUE) and n != name]
        if key in nodes and key != name and key not in noise:
            also.insert(0, key)
        is_value = options[0][0][0] == VALUE
        auto.add_word(key, (len(key), key.isascii(), name, etype, via_alias, tuple(dict.fromkeys(also))[:8], is_value))
    auto.make_automaton()
    return auto


_NAME_SUFFIXES = ("综合征", "检查", "症", "病")  # a subject written without them (支气管扩张 -> 支气管扩张症)
_NAME_PREFIXES = ("急性", "慢性", "原发性", "继发性", "特发性")  # course modifiers a question may leave out
_PARENS = re.compile(r"^(.+?)[(（]([^()（）]+)[)）]$")
_DASHES = re.compile(r"[-‐‑‒–—―·・•]")
_LETTERED = re.compile(r"^(.*[\u4e00-\u9fff])[A-Za-z][A-Za-z0-9]{0,2}$")  # a product's letter (钙尔奇D, 毒毛苷K)


def _name_variants(nodes: dict[str, tuple[str, int]]) -> list[tuple[str, str, str]]:
    """(surface, subject name, type): shorter ways a subject's name is written: without a course modifier
    when no other subject is written so (浅表性胃炎 for 慢性浅表性胃炎; at least 4 characters left), without a
    suffix the name only adds (支气管扩张 for 支气管扩张症, 新生儿听力筛查 for 新生儿听力筛查检查; a stem of at least 3
    characters, or of 2 that the KB holds as a value of the same type: 癫痫 for 癫痫病), the part before a
    parenthesis and a Latin abbreviation inside it (抗甲状腺微粒体抗体 and ATMA of 抗甲状腺微粒体抗体（ATMA）; not 药物治疗 of 胃溃疡合并出血（药物治疗）), a product without the letter that ends its
    name when no other product is written so (钙尔奇 for 钙尔奇D; at least 3 Han characters left), and a name
    with its dashes and middle dots left out."""
    out = []
    modified: dict[str, list[tuple[str, str]]] = {}  # a subject's name without its course modifier -> subjects
    lettered: dict[str, list[tuple[str, str]]] = {}  # a product's name without its letter -> products
    for name, (etype, is_subject) in nodes.items():
        if not is_subject:
            continue
        m = _LETTERED.match(name)
        if m and etype in PRODUCT_TYPES and sum(_is_han(c) for c in m.group(1)) >= 3:
            lettered.setdefault(m.group(1), []).append((name, etype))
        for prefix in _NAME_PREFIXES:
            if name.startswith(prefix) and len(name) - len(prefix) >= 4:
                modified.setdefault(name[len(prefix):], []).append((name, etype))
                break
        for suffix in _NAME_SUFFIXES:
            stem = name[:-len(suffix)]
            # a two-character stem only where the KB has it as a value of the same type (癫痫 for 癫痫病)
            if name.endswith(suffix) and (len(stem) >= 3 or (len(stem) == 2 and nodes.get(stem) == (etype, 0))):
                out.append((stem, name, etype))
                break
        m = _PARENS.match(name)
        if m:
            head, inner = (part.strip() for part in m.groups())
            out += [(part, name, etype) for part in (head, inner) if _names_something(part)
                    and (part is head or part.isascii())]  # inside: an abbreviation (ATMA), not a qualifier (药物治疗)
        if _DASHES.search(name):
            out.append((_DASHES.sub("", name), name, etype))
    # written without 急性/慢性 and kin (浅表性胃炎 for 慢性浅表性胃炎) when one subject alone is left that way
    out += [(rest, *subjects[0]) for rest, subjects in modified.items() if len(subjects) == 1]
    # a product written without its letter (钙尔奇 for 钙尔奇D) when one product alone is left that way
    out += [(rest, *products[0]) for rest, products in lettered.items() if len(products) == 1]
    return out


def _names_something(part: str) -> bool:
    """A parenthesized part that can stand for the name: two Han characters or two letters, not a number or
    a grade (多维元素片（29）, HbH病（中间型）: 29 and 中间型 are not the product or the disease)."""
    han = sum(_is_han(c) for c in part)
    letters = sum(c.isascii() and c.isalpha() for c in part)
    return (han >= 2 or letters >= 2) and not part.endswith(("型", "期", "级", "度", "岁"))


SPLIT_SHARE = 0.002  # share of the KB's diseases that must list each half of a value as a symptom for a split


def _splits(key: str, cands: dict, listed: dict[str, int], least: int = 1) -> bool:
    """``key`` is two symptoms of at least two characters each, written one after the other: two linkable
    names that at least ``least`` diseases each list as a symptom (头晕 and 乏力; not 宫颈 and 糜烂, a body
    part and what it has, nor 妊娠 and 高血压: in CMeKG 3 and 7 diseases list 宫颈 and 妊娠, 345 头晕)."""
    return any(key[:i] in cands and key[i:] in cands and listed.get(_first(cands[key[:i]]), 0) >= least
               and listed.get(_first(cands[key[i:]]), 0) >= least for i in range(2, len(key) - 1))


_JOINED = re.compile(r"^(?:伴有|伴)?(.+?)(?:[和及与或、]|以及)(.+)$|^(?:伴有|伴)(.+)$")


def _joined(key: str, cands: dict) -> bool:
    """``key`` is an extraction fragment that joins linkable names (腹痛和腹泻, 咳痰及咯血; a conjunction written
    out, so no listing count is needed as in :func:`_splits`) or adds 伴 to one (伴瘙痒, 伴有耳鸣): a question
    that writes it names those, each linked on its own."""
    m = _JOINED.match(key)
    if m is None:
        return False
    parts = [p for p in m.groups() if p is not None]
    return all(p in cands for p in parts)


def _first(options: list) -> str:
    """The name a surface's best candidate links to."""
    return options[0][1]


def _stems(name: str, forms) -> list[str]:
    """Shorter names of the same drug: each step of removing form and salt words (盐酸二甲双胍缓释片 ->
    二甲双胍缓释片 / 盐酸二甲双胍 -> 二甲双胍), at least ``forms.min_stem`` characters long."""
    prefixes, suffixes = forms.affixes()
    out: list[str] = []
    frontier = [name]
    while frontier:
        current = frontier.pop()
        for p in prefixes:
            if current.startswith(p) and len(current) - len(p) >= forms.min_stem:
                frontier.append(current[len(p):])
                break
        for x in suffixes:
            if current.endswith(x) and len(current) - len(x) >= forms.min_stem:
                frontier.append(current[:-len(x)])
                break
        if current != name and current not in out:
            out.append(current)
    return out
