"""How triage reads a question around a red-flag match: negation, prevention, general questions, time.

The cue words are data: negation comes from the one negation lexicon (``resources/lexicon.yaml``, shared
with linking and verification), the rest from the ``context`` and ``time`` sections of
``resources/red_flags.yaml``. A match counts only when it is

- **not negated**: a negation cue stands right before it in its clause, or before a list that ends with
  it ("没有胸痛、出汗", "不胸闷不出汗也不喘");
- **not prevented**: no prevention word governs it in its clause ("怎么教孩子防溺水", "以防被蛇咬");
- **current**: it is not in a stretch the text puts in the past ("五年前被狗咬过", "上个月…早好了",
  "打完了全程疫苗") or, for a complaint, in one it says has lasted months or years without an acute
  change ("活动后气喘，已经持续了近两年"); a present cue ("今天", "突然", "刚才", "越来越重") starts a
  current stretch again ("高血压十年了，今天突然一边手脚没劲");
- in a sentence that describes someone, not a **general question** (see ``general``).

Time is read in stretches: a sentence is cut at its clause breaks and at every time cue, each stretch
takes the kind of the cue that opens it.

- A past cue covers its own clause, and the clauses after it up to a present cue when the sentence has one
  ("以前吃芒果过敏过，嘴巴肿了，现在还能吃吗"). A past cue of the last weeks ("上个月", "前几天", "当时")
  counts only when the sentence also says it resolved ("早就好了") or a past stretch comes before it
  ("十年前被蛇咬过，当时住了院"); a healing cue ("打完了全程疫苗", "再没犯过") reaches back to the start.
- A duration ("两年了", "持续了三个月") covers its clause and the untagged stretches before it in the
  sentence (a duration follows what it measures); an onward duration ("长期", "三年来", "从小") its clause
  and the untagged stretches after it; a recurrence ("经常", "总是", "偶尔") too, unless a present cue comes
  before it in the sentence ("这两天有点糊涂，总是答非所问" recurs within the current episode).
- A present cue opens a current stretch, and what follows it in the sentence stays current. A match that
  reaches a current stretch is current ("糖尿病十年了，今天一直吐"); a match directly followed by the
  experiential 过 ("惊厥过一次") is past unless a present cue opens its stretch.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass, field

from qihuang.errors import ConfigError
from qihuang.fileio import compile_pattern
from qihuang.kb.lexicon import Negation, load_lexicon

CLAUSE_BREAK = re.compile(r"[，。,.;；!！?？\n：:]")
SENTENCE_BREAK = re.compile(r"[。.;；!！?？\n]")
TIME_CLASSES = ("complaint", "event", "timeless")
"""How a rule reads time: a ``complaint`` is stale when past or long-standing, an ``event`` (a bite, a
poisoning) only when past, a ``timeless`` one (suicidal intent, refusals) never."""

_TIME_KINDS = ("present", "past", "recent_past", "resolved", "healed", "chronic", "chronic_onward", "recurrent")
_STALE_FOR = {"complaint": ("past", "chronic", "recurrent"), "event": ("past",), "timeless": ()}




@dataclass(frozen=True)
class Context:
    """Cues that tell a general question from a person describing what is happening."""

    general: re.Pattern
    anchors: re.Pattern
    always_general: re.Pattern | None = None
    meta: re.Pattern | None = None
    prevention: re.Pattern | None = None


@dataclass(frozen=True)
class TimeCues:
    """The ``time`` section: one pattern per kind of time cue (``age`` spans are not durations)."""

    patterns: dict[str, re.Pattern] = field(default_factory=dict)
    age: re.Pattern | None = None
    experienced: re.Pattern | None = None


def parse_context(raw, path) -> Context | None:
    if raw is None:
        return None
    where = f"{path}: context"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping with 'general' and 'anchors'")
    for key in ("general", "anchors"):
        if key not in raw:
            raise ConfigError(f"{where}: field {key!r} is required (a regular expression)")
    unknown = set(raw) - {"general", "anchors", "always_general", "meta", "prevention"}
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {sorted(unknown)}")
    opt = {k: compile_pattern(raw[k], f"{where}.{k}") for k in ("always_general", "meta", "prevention")
           if raw.get(k)}
    return Context(compile_pattern(raw["general"], f"{where}.general"),
                   compile_pattern(raw["anchors"], f"{where}.anchors"), **opt)


def parse_time(raw, path) -> TimeCues:
    if raw is None:
        return TimeCues()
    where = f"{path}: time"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping of cue kinds to regular expressions")
    unknown = set(raw) - {*_TIME_KINDS, "age", "experienced"}
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {sorted(unknown)}; "
                          f"expected {[*_TIME_KINDS, 'age', 'experienced']}")
    patterns = {k: compile_pattern(raw[k], f"{where}.{k}") for k in _TIME_KINDS if raw.get(k)}
    opt = {k: compile_pattern(raw[k], f"{where}.{k}") for k in ("age", "experienced") if raw.get(k)}
    return TimeCues(patterns, **opt)


def default_negation() -> Negation:
    """The shared negation lexicon."""
    return load_lexicon().negation


class Reading:
    """Normalized text with its clauses, sentences and time stretches, asked about one match at a time."""

    def __init__(self, text: str, context: Context | None, time: TimeCues, negation: Negation | None):
        self.text, self.context, self.time, self.negation = text, context, time, negation
        self.clauses = [0] + [m.end() for m in CLAUSE_BREAK.finditer(text)]
        self.sentences = [0] + [m.end() for m in SENTENCE_BREAK.finditer(text)]
        self._general: dict[int, tuple[bool, bool]] = {}
        self.stretches = _stretches(text, self.clauses, self.sentences, time)
        self._starts = [s for s, _, _ in self.stretches]

    def _clause_start(self, pos: int) -> int:
        return self.clauses[bisect.bisect_right(self.clauses, pos) - 1]

    def negated(self, start: int) -> bool:
        """Whether a negation cue scopes over the match starting at ``start``."""
        return self.negation is not None and self.negation.negates(self.text[self._clause_start(start):start])

    def prevented(self, start: int, end: int | None = None) -> bool:
        """Whether a prevention word governs the match ``start:end``: before it in its clause ("怎么防溺水"),
        or inside it ("热水器，怎么预防煤气中毒")."""
        ctx = self.context
        if ctx is None or ctx.prevention is None:
            return False
        head = self.text[max(self._clause_start(start), start - 10):start]
        inside = end is not None and ctx.prevention.search(self.text, start, end) is not None
        return bool(ctx.prevention.search(head)) or inside

    def stale(self, start: int, end: int, time_class: str) -> bool:
        """Whether the match ``start:end`` is past (or, for a complaint, long-standing)."""
        kinds = _STALE_FOR[time_class]
        if not kinds:
            return False
        kind = self.stretches[bisect.bisect_right(self._starts, start) - 1][2]
        last = self.stretches[bisect.bisect_right(self._starts, max(start, end - 1)) - 1][2]
        if kind in kinds and last != "present":  # "糖尿病十年了，今天一直吐": a match reaching now is current
            return True
        exp = self.time.experienced
        return exp is not None and kind != "present" and bool(exp.match(self.text, end))

    def counts(self, start: int, end: int, time_class: str = "complaint") -> bool:
        """Whether a match counts at all (not negated, prevented or stale)."""
        return not (self.negated(start) or self.prevented(start, end) or self.stale(start, end, time_class))

    def general(self, pos: int, hypothetical: bool = True) -> bool:
        """Whether the sentence at ``pos`` asks about a condition in general: it has a knowledge cue and no
        anchor (a person or a time), or (unless ``hypothetical`` is False) it is hypothetical."""
        ctx = self.context
        if ctx is None:
            return False
        i = bisect.bisect_right(self.sentences, pos) - 1
        if i not in self._general:
            end = self.sentences[i + 1] if i + 1 < len(self.sentences) else len(self.text)
            sent = self.text[self.sentences[i]:end]
            bare = ctx.meta.sub(" ", sent) if ctx.meta is not None else sent
            asks = bool(ctx.general.search(sent)) and not ctx.anchors.search(bare)
            iffy = ctx.always_general is not None and bool(ctx.always_general.search(sent))
            self._general[i] = (asks, iffy)
        asks, iffy = self._general[i]
        return asks or (hypothetical and iffy)

    def all_general(self) -> bool:
        return all(self.general(p) for p in self.sentences if p < len(self.text))

    def current_text(self) -> str:
        """The text without its past and long-standing stretches (a recurrence, "每次喂100ml", is kept: it
        is context, not a duration) and its clauses that open with a negation, after at most three anchors
        ("我爸今天没有发烧"): what the learned backstop reads."""
        keep = "".join(self.text[s:e] for s, e, kind in self.stretches if kind not in ("past", "chronic"))
        return "，".join(p for p in CLAUSE_BREAK.split(keep) if p.strip() and not self._negated_clause(p.strip()))

    def _negated_clause(self, clause: str) -> bool:
        if self.negation is None:
            return False
        anchors = self.context.anchors if self.context is not None else None
        for _ in range(3):
            m = anchors.match(clause) if anchors is not None else None
            if m is None or not m.end():
                break
            clause = clause[m.end():]
        return self.negation.opens(clause)


def _events(sentence: str, offset: int, time: TimeCues) -> list[tuple[int, int, str]]:
    """Time cues of one sentence, leftmost first, overlaps dropped (earlier kinds win ties); ``age`` spans
    are not durations."""
    ages = [m.span() for m in time.age.finditer(sentence)] if time.age is not None else []
    found = []
    for rank, kind in enumerate(_TIME_KINDS):
        pattern = time.patterns.get(kind)
        if pattern is None:
            continue
        for m in pattern.finditer(sentence):
            if kind.startswith("chronic") and any(a < m.end() and m.start() < b for a, b in ages):
                continue
            found.append((m.start(), -(m.end() - m.start()), rank, m.end(), kind))
    out: list[tuple[int, int, str]] = []
    for start, _neg_len, _rank, end, kind in sorted(found):
        if out and start < out[-1][1] - offset:
            continue
        out.append((start + offset, end + offset, kind))
    return out


def _stretches(text: str, clauses: list[int], sentences: list[int],
               time: TimeCues) -> list[tuple[int, int, str | None]]:
    """(start, end, kind) covering ``text``: kind ``past``/``chronic`` for stale stretches, ``present``
    for current ones opened by a present cue, None otherwise."""
    out: list[tuple[int, int, str | None]] = []
    bounds = sentences + [len(text)]
    for s0, s1 in zip(bounds, bounds[1:]):
        if s1 > s0:
            out += _sentence_stretches(text, s0, s1, [c for c in clauses if s0 <= c < s1], time)
    return out or [(0, len(text), None)]


# how far each kind of cue reaches: its clause, plus stretches before (-1) or after (+1) it in the sentence
_REACH = {"past": ("past", ()), "healed": ("past", (-1,)), "chronic": ("chronic", (-1,)),
          "chronic_onward": ("chronic", (1,)), "recurrent": ("recurrent", (1,))}


def _sentence_stretches(text, s0, s1, clause_starts, time):
    events = _events(text[s0:s1], s0, time) if time.patterns else []
    cuts = sorted(set(clause_starts) | {s0} | {e[0] for e in events})
    kind_at = {start: kind for start, _end, kind in events}
    clause_of = lambda pos: bisect.bisect_right(clause_starts, pos) - 1  # noqa: E731
    segs = [(a, b, kind_at.get(a), clause_of(a)) for a, b in zip(cuts, cuts[1:] + [s1]) if b > a]
    kinds = [k for _, _, k, _ in segs]
    tags: list[str | None] = ["present" if k == "present" else None for k in kinds]
    for i, kind in enumerate(kinds):
        if kind == "recurrent" and "present" in kinds[:i]:
            continue  # "这两天有点糊涂，总是答非所问": recurring within the current episode
        if kind in _REACH:
            stale, steps = _REACH[kind]
            tags[i] = stale
            _spread_in_clause(segs, tags, i, stale)
            for step in steps:
                _spread(segs, tags, i, step, stale)
    for i, tag in enumerate(list(tags)):  # "以前吃芒果过敏过，嘴巴肿了，现在还能吃吗": past until the present cue
        later = [k for k in range(i + 1, len(tags)) if kinds[k] == "present"]
        if tag == "past" and later:
            for j in range(i + 1, later[0]):
                tags[j] = _stronger(tags[j], "past")
    for i, kind in enumerate(kinds):  # "十年前被蛇咬过，当时住了院": 当时 goes on with the past
        if kind == "recent_past" and tags[i] is None and _after_past(tags, i):
            tags[i] = "past"
            _spread_in_clause(segs, tags, i, "past")
    if "recent_past" in kinds and "resolved" in kinds[kinds.index("recent_past"):]:
        # "上个月孩子抽搐过一次，后来就好了": from the one cue to the other, past
        last = len(kinds) - 1 - kinds[::-1].index("resolved")
        for i in range(kinds.index("recent_past"), last + 1):
            tags[i] = tags[i] or "past"
    for i in range(1, len(tags)):  # "今天一直吐，呼吸又深又快": what follows a present cue is current too
        if tags[i] is None and tags[i - 1] == "present":
            tags[i] = "present"
    return [(a, b, tags[i]) for i, (a, b, _k, _c) in enumerate(segs)]


def _after_past(tags, i) -> bool:
    """Whether the nearest tagged stretch before ``i`` is past."""
    before = [t for t in tags[:i] if t is not None]
    return bool(before) and before[-1] == "past"


def _spread_in_clause(segs, tags, i, stale):
    """The stretches of ``i``'s clause next to it that no cue opens take its tag."""
    for step in (-1, 1):
        j = i + step
        while 0 <= j < len(segs) and segs[j][3] == segs[i][3] and segs[j][2] is None:
            tags[j] = _stronger(tags[j], stale)
            j += step


def _spread(segs, tags, i, step, stale):
    """Stretches before (step -1) or after (+1) ``i`` in the sentence take its tag, up to a present cue."""
    j = i + step
    while 0 <= j < len(segs) and tags[j] != "present":
        tags[j] = _stronger(tags[j], stale)
        j += step


def _stronger(tag: str | None, stale: str) -> str:
    """A duration or a past event outweighs a recurrence ("老觉得堵得慌，这样有两三年了")."""
    return stale if tag is None or (tag == "recurrent" and stale != "recurrent") else tag
