"""Entity and attribute linking with Aho-Corasick automata over normalized text."""

from __future__ import annotations

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


class Linker:
    """Finds KB entities (names and aliases) and asked attributes in free text."""

    def __init__(self, entities: ahocorasick.Automaton, cues: ahocorasick.Automaton,
                 object_types: dict[str, str] | None = None, yields_to: dict[str, tuple[str, ...]] | None = None):
        self._entities, self._cues = entities, cues
        self._object_types = object_types or {}  # attribute -> type of its values ("examinations" -> examination)
        self._yields_to = yields_to or {}

    @classmethod
    def build(cls, kb) -> "Linker":
        best: dict[str, tuple[tuple, tuple]] = {}
        stop = {normalize(w) for w in kb.schema.link_stopwords}

        def offer(surface: str, payload: tuple, rank: tuple) -> None:
            key = normalize(surface.strip())
            if len(key) < 2 or key in stop:
                return
            if key not in best or rank > best[key][0]:
                best[key] = (rank, payload)

        for name, etype, is_subject in kb.conn.execute("SELECT name, type, is_subject FROM entities"):
            offer(name, (name, etype, False), (1, is_subject))
        for alias, name, etype, is_subject in kb.conn.execute(
                "SELECT a.alias, e.name, e.type, e.is_subject FROM aliases a JOIN entities e ON e.id = a.entity_id"):
            offer(alias, (name, etype, True), (0, is_subject))
        entities = ahocorasick.Automaton()
        for key, (_rank, payload) in best.items():
            entities.add_word(key, (len(key), key.isascii()) + payload)
        entities.make_automaton()

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
        attributes = kb.schema.attributes
        return cls(entities, cues, {k: a.object_type for k, a in attributes.items() if a.object_type},
                   {k: a.yields_to for k, a in attributes.items() if a.yields_to})

    def find_entities(self, text: str) -> list[Mention]:
        norm = normalize(text)
        matches = []
        for end, (length, is_ascii, name, etype, via_alias) in self._entities.iter(norm):
            start = end - length + 1
            if is_ascii and ((start > 0 and norm[start - 1] in _ASCII_WORD) or
                             (end + 1 < len(norm) and norm[end + 1] in _ASCII_WORD)):
                continue  # "CT" inside "ACTH" is not a mention
            matches.append((start, end + 1, (name, etype, via_alias)))
        return [Mention(name, text[s:e], s, e, etype, via_alias)
                for s, e, (name, etype, via_alias) in _leftmost_longest(matches)]

    def detect_attribute_groups(self, text: str, mentions: list[Mention] | None = None) -> list[tuple[str, ...]]:
        """What ``text`` asks about, in text order: one tuple per cue, of alternative attributes
        (most cues name one; a shared cue such as 作用 names several, the first an entity has is meant).

        A cue wholly inside an entity mention is part of that name (药物性肝炎 does not ask for drugs)
        unless the entity is of the kind the attribute lists (影像学检查 asks for examinations).
        An attribute is dropped when the text also asks for one it yields to (治疗药物: drugs, not treatment).
        """
        norm = normalize(text)
        owner: list[Mention | None] = [None] * len(norm)
        for m in mentions or ():
            for i in range(m.start, min(m.end, len(norm))):
                owner[i] = m
        matches = [(end - length + 1, end + 1, attrs) for end, (length, attrs) in self._cues.iter(norm)]
        groups: list[tuple[str, ...]] = []
        for start, end, attrs in _leftmost_longest(matches):
            holder = owner[start]
            if holder is not None and all(owner[i] is holder for i in range(start, end)) and \
                    not any(self._object_types.get(a) == holder.type for a in attrs):
                continue
            if attrs not in groups:
                groups.append(attrs)
        asked = {a for group in groups for a in group}
        return [g for g in groups if not all(asked & set(self._yields_to.get(a, ())) for a in g)]

    def detect_attributes(self, text: str, mentions: list[Mention] | None = None) -> list[str]:
        """Every attribute ``text`` may ask about (the groups of :meth:`detect_attribute_groups`, flattened)."""
        return flatten(self.detect_attribute_groups(text, mentions))


def flatten(groups: list[tuple[str, ...]]) -> list[str]:
    """The attributes of cue groups, each once, in order."""
    return list(dict.fromkeys(a for group in groups for a in group))
