"""The linker's second pass: what people write for a KB name that is not the name itself.

:meth:`qihuang.kb.link.Linker.find_entities` finds the KB's own names, aliases and colloquial names in a
question (exact, fast). Real questions often write neither; :func:`refine` then looks at every mention span
and the text around it:

- **a body part and a feeling** (``resources/symptom_words.yaml``): 肚子老是胀 -> 腹胀, 小便时有疼痛感 -> 尿痛,
  眉毛变白 -> 毛发变白, 牙根到耳根部很疼 -> 牙痛 and 耳痛. Candidate names are made from the part's and the
  feeling's forms and kept only when the KB has a symptom or disease of that name; the mention replaces
  the mentions inside its span (小腿 and 疼 become 腿痛). A feeling right after a negation (都不疼) makes a
  negated mention;
- **parts and persons alone are no entities**: the KB's value nodes that are only a body part's written
  form (小腿, 皮肤, 龟头), that the KB cites mostly as a disease's 发病部位 (心肌, 胆囊: ``Lookups.body_parts``)
  or that say who the patient is (新生儿, 孕妇, 年龄) are dropped from a question's mentions (they would
  retrieve the facts of whatever lists them);
- **a name written with one error** in the text that no mention covers (复方甲氧那名胶囊 -> 复方甲氧那明胶囊,
  尼福达 -> 伲福达): the lexical index's one-homophone match (:mod:`qihuang.kb.fuzzy`), over the uncovered
  windows only, names of at least ``MIN_TYPO_LENGTH`` characters; and a long name (≥ ``MIN_EDIT_LENGTH``)
  written with one character left out or one too many (促甲状腺素, 赖氨酸葡锌颗粒), replacing the shorter
  mentions it covers;
- **a generic head with a longer name's modifiers** (手指骨折 -> 指骨骨折, :func:`_specific`), or with the end of a
  longer name or alias that one subject alone has (变异性哮喘 -> 咳嗽性哮喘, :func:`_tail`);
- **a symptom whose sentence says when it comes** (来月经的时候肚子疼 -> 痛经, ``contexts`` in symptom_words.yaml).

Everything it adds is a KB name; nothing is guessed that the KB does not hold.
"""

from __future__ import annotations

import re
from functools import lru_cache

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from qihuang.errors import ConfigError
from qihuang.kb.link import _CLAUSE_END, _is_han
from qihuang.kb.normalize import normalize
from qihuang.kb.types import Mention
from qihuang.paths import resource

_SEPARATORS = frozenset("、和及与或跟的了吗呢")  # between names: no misspelt name to look for in them
_SYMPTOM_TYPES = ("symptom", "disease")
MIN_TYPO_LENGTH = 4  # names matched with one homophone in an uncovered window: at least this long


class SkinWords(BaseModel):
    """``skin`` of ``resources/symptom_words.yaml``: feelings of the skin and the parts the skin covers."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    feelings: tuple[str, ...] = ()
    parts: tuple[str, ...] = ()


class SymptomWords(BaseModel):
    """``resources/symptom_words.yaml`` (see its header)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_gap: int = Field(8, ge=0)
    single_char_gap: int = Field(3, ge=0)
    joiners: tuple[str, ...] = ("",)
    parts: dict[str, tuple[str, ...]]
    feelings: dict[str, tuple[str, ...]]
    persons: tuple[str, ...] = ()
    skin: SkinWords = SkinWords()
    changes: dict[str, tuple[str, ...]] = {}
    degrees: tuple[str, ...] = ()
    measures: tuple[str, ...] = ()
    context_gap: int = Field(10, ge=0)
    contexts: dict[str, dict[str, str]] = {}


@lru_cache(maxsize=1)
def load_symptom_words() -> SymptomWords:
    from qihuang.fileio import read_yaml

    path = resource("symptom_words.yaml")
    data = read_yaml(path, "symptom words")
    try:
        words = SymptomWords.model_validate(data)
    except ValidationError as exc:
        where = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"{path}: {where}") from None
    empty = [k for k, v in {**words.parts, **words.feelings, **words.changes}.items() if not k.strip() or not v]
    if empty:
        raise ConfigError(f"{path}: parts/feelings/changes need a written form and at least one KB form: {empty}")
    stray = [f"skin.parts: {w}" for w in words.skin.parts if w not in words.parts]
    stray += [f"skin.feelings: {w}" for w in words.skin.feelings if w not in words.feelings]
    if stray:
        raise ConfigError(f"{path}: skin lists words that parts/feelings do not: {stray}")
    bad = [f"changes.{k}: {t}" for k, v in words.changes.items() for t in v if t.count("{x}") != 1 or "{" in t.replace("{x}", "")]
    if bad:
        raise ConfigError(f"{path}: a change's name template holds {{x}} once and no other braces: {bad}")
    for symptom, narrower in words.contexts.items():
        for pattern in narrower:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ConfigError(f"{path}: contexts.{symptom}: pattern {pattern!r} is no regular expression ({exc})") from None
    return words


def _alternation(words) -> re.Pattern:
    return re.compile("|".join(re.escape(normalize(w)) for w in sorted(words, key=len, reverse=True)))


class Composer:
    """Body part + feeling -> KB symptom names (see the module doc)."""

    def __init__(self, words: SymptomWords, exists, subject=None):
        self.words = words
        self._exists = exists  # name -> type (symptom/disease) or None
        self._subject = subject or (lambda name: False)  # name -> whether the KB has an entry of its own for it
        self._parts = {normalize(k): v for k, v in words.parts.items()}
        self._feelings = {normalize(k): v for k, v in words.feelings.items()}
        self._part_re = _alternation(words.parts)
        self._feel_re = _alternation(words.feelings)
        self.part_forms = frozenset(normalize(f) for forms in words.parts.values() for f in forms) | set(self._parts)
        self.persons = frozenset(normalize(w) for w in words.persons)
        self._changes = {normalize(k): v for k, v in words.changes.items()}
        self._change_re = _alternation(words.changes) if words.changes else None
        self._degrees = sorted({normalize(w) for w in words.degrees}, key=len, reverse=True)
        self._measures = sorted({normalize(w) for w in words.measures}, key=len, reverse=True)
        self._contexts = {k: [(re.compile(p), name) for p, name in v.items()] for k, v in words.contexts.items()}
        self._skin_parts = frozenset(normalize(w) for w in words.skin.parts)
        self._skin_feelings = frozenset(normalize(w) for w in words.skin.feelings)

    def in_context(self, norm: str, m: Mention) -> Mention:
        """The narrower KB name ``m`` has in its sentence (来月经的时候肚子疼: 腹痛 -> 痛经, see ``contexts``
        in symptom_words.yaml), or ``m`` itself."""
        rules = self._contexts.get(m.name)
        if not rules or m.negated:
            return m
        gap = self.words.context_gap  # the circumstance is told in the symptom's own sentence, near it
        start = next((i + 1 for i in range(m.start - 1, max(0, m.start - gap) - 1, -1) if norm[i] in _SENTENCE_END),
                     max(0, m.start - gap))
        end = min(len(norm), m.end + gap)
        cut = next((i for i in range(m.end, end) if norm[i] in _SENTENCE_END), end)
        for pattern, name in rules:
            etype = self._exists(name)
            if etype and (pattern.search(norm, start, m.start) or pattern.search(norm, m.end, cut)):
                return Mention(name, m.surface, m.start, m.end, etype, True, m.negated, (m.name, *m.forms))
        return m

    def changed(self, norm: str, negation: frozenset[str],
                read: list[tuple[int, int]] = ()) -> list[tuple[int, int, str, str, bool]]:
        """(start, end, name, type, negated) of each thing written with how it changed that the KB names
        (白细胞偏高 -> 白细胞增多, 血压有点高 -> 高血压, 牙龈发炎 -> 牙龈炎): the longest thing right before the
        change word (degree words such as 有点 between; a measure word such as 比率 after the thing left out;
        a body part also in its KB forms) whose name made by one of the change's templates is a KB symptom
        or disease. A negation among the degree words (血糖不高) makes a negated mention. A change word that a
        name of ``read`` (mention spans) already takes in with what comes before it is left as read (血脂高, a
        colloquial name of 高脂血症)."""
        if self._change_re is None:
            return []
        out = []
        for m in self._change_re.finditer(norm):
            if any((e == m.end() and s < m.start()) or (s <= m.start() and m.end() <= e and (s, e) != m.span())
                   for s, e in read):
                continue  # read with what comes before it (血脂高), or part of a longer name (高 of 高血压)
            end, negated = m.start(), False
            while True:
                word = next((d for d in self._degrees if norm.endswith(d, 0, end)), None)
                if word is None:
                    break
                negated = negated or word in negation or any(c in word for c in negation)
                end -= len(word)
            found = self._changed_name(norm, end, m.group(0))
            if found:
                out.append((found[0], m.end(), found[1], found[2], negated))
        return out

    def _changed_name(self, norm: str, end: int, change: str) -> tuple[int, str, str] | None:
        """(start, name, type) of the longest thing ending at ``end`` that names a KB entity with ``change``:
        a name with an entry of its own first (血压高: 高血压, not the value 血压升高), else the first template's."""
        for start in range(max(0, end - MAX_THING), end - 1):
            thing = norm[start:end]
            if not all(_is_han(c) or c.isalnum() for c in thing):
                continue
            for w in self._measures:
                if thing.endswith(w) and len(thing) - len(w) >= 2:
                    thing = thing[:-len(w)]
                    break
            found = [(name, etype) for form in (thing, *self._parts.get(thing, ()))
                     for name in (t.replace("{x}", form) for t in self._changes[change])
                     for etype in [self._exists(name)] if etype]
            if found:
                name, etype = next((f for f in found if self._subject(f[0])), found[0])
                return start, name, etype
        return None

    def name_for(self, part: str, feeling: str) -> tuple[str, str] | None:
        """The KB name of ``feeling`` on ``part``: the part's forms joined to the feeling's, else, for a
        feeling of the skin on a part the skin covers, 皮肤 joined to the feeling's forms (后背痒 -> 皮肤瘙痒)."""
        skin = ("皮肤",) if part in self._skin_parts and feeling in self._skin_feelings else ()
        for p in (*self._parts[part], *skin):
            for f in self._feelings[feeling]:
                for j in self.words.joiners:
                    etype = self._exists(p + j + f)
                    if etype:
                        return p + j + f, etype
        return None

    def part_words(self, norm: str, inner: list[int]) -> list[tuple[int, int]]:
        """Spans of the body parts of ``norm`` written as words of their own (jieba's: 舌头 of 舌头疼) that
        hold one of the offsets ``inner`` inside them."""
        spans = [m.span() for m in self._part_re.finditer(norm) if any(m.start() < i < m.end() for i in inner)]
        if not spans:
            return []
        starts, ends = _word_bounds(norm)
        return [(s, e) for s, e in spans if s in starts and e in ends]

    def compose(self, norm: str, negation: frozenset[str]) -> list[tuple[int, int, str, str, bool]]:
        """(start, end, name, type, negated) of each part-feeling pair the KB names, in text order."""
        parts = list(self._part_re.finditer(norm))
        if not parts or not self._feel_re.search(norm):
            return []
        bounds = _word_bounds(norm)
        out = []
        for m in parts:
            s, e = m.span()
            single = e - s == 1
            if s not in bounds[0]:
                continue  # a part starts a word (jieba's)
            gap = self.words.single_char_gap if single else self.words.max_gap
            limit = e
            while limit < len(norm) and limit - e <= gap + 4 and norm[limit] not in _CLAUSE_END:
                limit += 1
            # the first feeling in reach that the KB names with the part (小腿发麻又疼: 腿痛 where the KB has no
            # 腿麻木); a part inside a longer word counts only with its feeling right after it (耳朵痛 is one
            # word; 手术后很痛 has no 手)
            for f in self._feel_re.finditer(norm, e, limit):
                if f.start() - e > gap:
                    break
                if (e not in bounds[1] and f.start() != e) or (single and f.start() not in bounds[0]):
                    continue
                found = self.name_for(m.group(0), f.group(0))
                if found:
                    before = norm[e:f.start()]
                    negated = any(before.endswith(c) or before[:-1].endswith(c) for c in negation)  # 都不疼, 不太痛
                    out.append((s, f.end(), found[0], found[1], negated))
                    break
        return out


_SENTENCE_END = frozenset("。.;；!！?？\n")
MAX_THING = 8  # characters of the thing a change word is written after (白细胞偏高: 白细胞)


@lru_cache(maxsize=256)
def _word_bounds(norm: str) -> tuple[frozenset[int], frozenset[int]]:
    """Start and end offsets of jieba's words of ``norm``."""
    import jieba

    starts, ends, pos = set(), set(), 0
    for w in jieba.lcut(norm, HMM=False):
        starts.add(pos)
        pos += len(w)
        ends.add(pos)
    return frozenset(starts), frozenset(ends)


def refine(kb, text: str, mentions: list[Mention]) -> list[Mention]:
    """``mentions`` of ``text`` with composed symptoms added, parts and persons dropped, and names written
    with one error found in uncovered text (see the module doc)."""
    norm = normalize(text)
    comp = kb.lookups.composer
    # a name that starts inside a body part's word is misread (舌头疼: no 头疼)
    inside = comp.part_words(norm, [m.start for m in mentions])
    kept = [m for m in mentions if not _part_or_person(kb, m, comp) and not any(s < m.start < e for s, e in inside)]
    from qihuang.kb.lexicon import load_lexicon

    negation = frozenset(load_lexicon().negation.cues)
    composed = comp.compose(norm, negation) + comp.changed(norm, negation, [(m.start, m.end) for m in kept])
    best: dict[str, tuple] = {}
    for s, e, name, etype, neg in composed:  # one mention per name: a non-negated one when there is one
        if name not in best or (best[name][4] and not neg):
            best[name] = (s, e, name, etype, neg)
    for s, e, name, etype, neg in sorted(best.values()):
        kept = [m for m in kept if not (s <= m.start and m.end <= e)]
        if not any(m.start < e and s < m.end for m in kept):
            kept.append(Mention(name, text[s:e], s, e, etype, True, neg))
    kept.sort(key=lambda m: m.start)
    kept = [comp.in_context(norm, _specific(kb, norm, m)) for m in kept]
    asked = kb.linker.question_spans(norm)  # question wording: never part of a misspelt name
    return _edits(kb, text, norm, _typos(kb, text, norm, kept, asked), asked)


_FILLERS = frozenset("性症病型之的")  # characters a longer name adds without meaning (外伤性癫痫 for 脑外伤癫痫)
SPECIFIC_WINDOW = 8  # characters before a mention (in its clause) that may hold a longer name's modifiers


def _specific(kb, norm: str, m: Mention) -> Mention:
    """A generic head (骨折, 癫痫) written with modifiers the KB's more specific name has (手指骨折 ->
    指骨骨折, 脑外伤癫痫 -> 外伤性癫痫): every character the longer name adds (fillers such as 性 aside) is
    in the clause right before the mention. The longest such name wins, then the one the KB says most about."""
    if m.negated or m.type not in _SYMPTOM_TYPES:
        return m
    # the head as linked, or as written when it links to a longer subject (癫痫 of 癫痫病)
    heads = {h: longer for h in dict.fromkeys((m.name, *m.forms)) if (longer := kb.lookups.longer_names(h))}
    if not heads:
        return m
    start = m.start
    while start > 0 and m.start - start < SPECIFIC_WINDOW and norm[start - 1] not in _CLAUSE_END:
        start -= 1
    window = set(norm[start:m.start])  # modifiers come before the head
    best = None
    for head, longer in heads.items():
        for name, etype, size in longer:
            extra = set(name[:-len(head)]) - _FILLERS - set(head)  # 指骨骨折 adds 指 to 骨折
            if extra and extra <= window:
                key = (len(extra), size)
                if best is None or key > best[0]:
                    best = (key, name, etype)
        if best is not None:
            break
    if best is None:
        return _tail(kb, norm, m, start)
    return Mention(best[1], m.surface, m.start, m.end, best[2], True, m.negated, (m.name, *m.forms))


TAIL_EXTENSION = 4  # characters before a generic head that may be the rest of a longer name written shortened


def _tail(kb, norm: str, m: Mention, start: int) -> Mention:
    """A generic head written with the last characters of a longer name before it (变异性哮喘: the end of
    咳嗽变异性哮喘, an alias of 咳嗽性哮喘): the longest such stretch of the clause, at least two characters
    more than the head, that one subject alone ends with."""
    look = kb.lookups
    for k in range(max(start, m.start - TAIL_EXTENSION), m.start - 1):
        written = norm[k:m.end]
        if not all(_is_han(c) for c in written[:m.start - k]):
            continue
        name = look.tail_of(written)
        row = look.row(name) if name and name != m.name else None
        if row:
            return Mention(name, m.surface, m.start, m.end, row[2], True, m.negated, (m.name, *m.forms))
    return m


def _part_or_person(kb, m: Mention, comp: Composer) -> bool:
    key = normalize(m.surface)
    if key in comp.persons or normalize(m.name) in comp.persons:
        return True
    if m.name in kb.lookups.body_parts:  # the KB cites it as where a disease is (心肌, 胆囊), not as a trouble
        return True
    if key in comp.part_forms:  # written as a part: only a disease of that name stays (小便 is no herb 人尿)
        return m.type != "disease"
    if normalize(m.name) not in comp.part_forms:
        return False
    row = kb.lookups.row(m.name)
    return not (row and row[1])  # a subject of that name stays


MIN_EDIT_LENGTH = 5  # names matched with one character more or less than written: at least this long
MAX_EDIT_LENGTH = 16


class EditIndex:
    """Names of at least :data:`MIN_EDIT_LENGTH` characters written with one character left out
    (促甲状腺素 for 促甲状腺激素) or one too many (赖氨酸葡锌颗粒 for 赖氨葡锌颗粒)."""

    def __init__(self, names: dict[str, tuple[str, bool]]):
        self._names = names  # normalized name -> (name, is_subject)
        self._omitted: dict[str, list[str]] = {}  # a name with one character left out -> names
        for key in names:
            if MIN_EDIT_LENGTH <= len(key) <= MAX_EDIT_LENGTH:
                for i in range(len(key)):
                    self._omitted.setdefault(key[:i] + key[i + 1:], []).append(key)

    def find(self, norm: str, start: int, end: int, blocked: bytearray | None = None,
             inside: list[int] | None = None, loose: list[int] | None = None) -> list[tuple[int, int, str]]:
        """(start, end, name) of windows within [start, end) one edit away from a name, longest first.
        ``blocked``: positions no window may cover (cue words); ``inside``: per position, the index of the
        mention it belongs to, or -1 (a window neither starts nor ends inside a mention, nor lies in one);
        ``loose``: prefix counts of the characters no mention covers (a window needs one)."""
        out = []
        for n in range(min(end - start, MAX_EDIT_LENGTH + 1), MIN_EDIT_LENGTH - 2, -1):
            for s in range(start, end - n + 1):
                if blocked is not None and any(blocked[s:s + n]):
                    continue
                if loose is not None and loose[s + n] == loose[s]:
                    continue  # all of it is names already: nothing written wrong in it
                if inside is not None:
                    first, last = inside[s], inside[s + n - 1]
                    if (first >= 0 and s > 0 and inside[s - 1] == first) or \
                            (last >= 0 and s + n < len(inside) and inside[s + n] == last) or (first >= 0 and first == last):
                        continue
                window = norm[s:s + n]
                if window in self._names:
                    continue  # an exact name is the linker's
                hits = [k for k in self._omitted.get(window, ()) if k[0] == window[0]]  # one left out
                if n - 1 >= MIN_EDIT_LENGTH:
                    hits += [k for i in range(1, n - 1) for k in [window[:i] + window[i + 1:]]
                             if k in self._names]  # one too many (not the first or last character)
                for key in hits:
                    out.append((s, s + n, self._names[key][0]))
        return out


def _edits(kb, text: str, norm: str, mentions: list[Mention], asked: list[tuple[int, int]]) -> list[Mention]:
    """Names written with one character more or less (:class:`EditIndex`); such a window replaces the
    shorter mentions inside it (甲状腺素 of 促甲状腺素, 赖氨酸 and 锌颗粒 of 赖氨酸葡锌颗粒)."""
    out = list(mentions)
    blocked = bytearray(len(norm))
    for s, e in asked:
        blocked[s:e] = b"\1" * (e - s)
    owner = [-1] * len(norm)
    for i, m in enumerate(mentions):
        owner[m.start:m.end] = [i] * (m.end - m.start)
    covered = bytearray(blocked)
    for m in mentions:
        covered[m.start:m.end] = b"\1" * (m.end - m.start)
    if not any(not c and _is_han(ch) and ch not in _SEPARATORS for ch, c in zip(norm, covered)):
        return mentions  # every word is a name or question wording: nothing written wrong to look for
    free = "".join(" " if b else c for c, b in zip(norm, blocked))  # question words are never inside a window
    loose = [0]
    for c in covered:
        loose.append(loose[-1] + (not c))
    for r in re.finditer(r"[\u4e00-\u9fffa-z0-9]{%d,}" % (MIN_EDIT_LENGTH - 1), free):
        for s, e, name in kb.lookups.edits.find(norm, r.start(), r.end(), None, owner, loose):
            covered = [m for m in out if s <= m.start and m.end <= e]
            if any(m.start < e and s < m.end for m in out if m not in covered):
                continue
            if any(m.end - m.start >= e - s - 1 and not m.via_alias for m in covered):
                continue  # a name nearly as long written as it is is the better reading (not a shortened one)
            row = kb.lookups.row(name)
            if row is None:
                continue
            out = [m for m in out if m not in covered] + [Mention(name, text[s:e], s, e, row[2], True)]
    return sorted(out, key=lambda m: m.start) if out != mentions else mentions


def _typos(kb, text: str, norm: str, mentions: list[Mention], asked: list[tuple[int, int]]) -> list[Mention]:
    covered = bytearray(len(norm))
    for s, e in [(m.start, m.end) for m in mentions] + asked:  # question words are no names
        covered[s:e] = b"\1" * (e - s)
    runs = [(r.start(), r.end()) for r in re.finditer(r"[\u4e00-\u9fffa-z0-9]{%d,}" % MIN_TYPO_LENGTH, norm)]
    windows = []
    for s, e in runs:
        i = s
        while i < e:
            if covered[i]:
                i += 1
                continue
            j = i
            while j < e and not covered[j]:
                j += 1
            if j - i >= MIN_TYPO_LENGTH:
                windows.append((i, j))
            i = j
    if not windows:
        return mentions
    typos = kb.lookups.lexical.typos
    out = list(mentions)
    for s, e in windows:
        for name, ws, we in typos.find(norm[s:e]):
            if we - ws < MIN_TYPO_LENGTH:
                continue
            row = kb.lookups.row(name)
            if row is None or any(m.start < s + we and s + ws < m.end for m in out):
                continue
            out.append(Mention(name, text[s + ws:s + we], s + ws, s + we, row[2], True))
    return sorted(out, key=lambda m: m.start) if len(out) != len(mentions) else mentions


def composer_for(kb) -> Composer:
    """The composer of ``kb``: candidate names checked against its symptom and disease nodes."""
    names: dict[str, tuple[str, bool]] = {name: (etype, bool(is_subject)) for name, etype, is_subject in kb.conn.execute(
        f"SELECT name, type, is_subject FROM entities WHERE type IN ({','.join('?' * len(_SYMPTOM_TYPES))})",
        _SYMPTOM_TYPES)}
    missing = ("", False)
    return Composer(load_symptom_words(), lambda name: names.get(name, missing)[0] or None,
                    lambda name: names.get(name, missing)[1])


__all__ = ["Composer", "SymptomWords", "composer_for", "load_symptom_words", "refine"]
