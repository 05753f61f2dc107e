"""Multi-turn dialogues (2–4 turns) about one entity, following a natural order of questions.

A disease dialogue goes e.g. symptoms → department → drugs; a drug dialogue indications → dosage →
adverse reactions. The order per entity type is data (``dialogue.flows`` in phrasings.yaml). The
first question names the entity; follow-ups do not ("那应该挂什么科？"), as people ask.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from qihuang.datagen.kbview import EntityView
from qihuang.datagen.phrasings import followup_for, questions_for
from qihuang.phrasebook import Phrasebook

# (entity view, attribute, rng) -> (answer text, knowledge triples); empty text = nothing to say
AnswerFn = Callable[[EntityView, str, random.Random], tuple[str, list[list[str]]]]


@dataclass(frozen=True)
class Dialogue:
    turns: list[tuple[str, str]]  # (question, answer) in order; the last one is the example's output
    attributes: list[str]
    knowledge: list[list[str]]


def dialogue_attributes(view: EntityView, book: Phrasebook, allowed: set[str] | None = None) -> list[str]:
    """The attributes of ``view`` that a dialogue can visit, in flow order."""
    flows = book.dialogue.get("flows") or {}
    flow = flows.get(view.type) or flows.get("other") or []
    return [a for a in flow if a in view.attrs and (allowed is None or a in allowed)]


def make_dialogue(view: EntityView, book: Phrasebook, rng: random.Random, answer: AnswerFn,
                  allowed: set[str] | None = None) -> Dialogue | None:
    """A 2–4 turn dialogue about ``view`` (None when it has fewer than two attributes in its flow)."""
    avail = dialogue_attributes(view, book, allowed)
    lo = int(book.dialogue.get("min_turns", 2))
    hi = min(int(book.dialogue.get("max_turns", 4)), len(avail))
    if hi < lo:
        return None
    n = rng.randint(lo, hi)
    picked = [avail[i] for i in sorted(rng.sample(range(len(avail)), n))]
    turns: list[tuple[str, str]] = []
    knowledge: list[list[str]] = []
    for k, attr in enumerate(picked):
        text, triples = answer(view, attr, rng)
        if not text:
            return None
        if k == 0:
            question = questions_for(view.name, attr, 1, entity_type=view.type, rng=rng, styles=("patient",),
                                     book=book)[0]
        else:
            question = followup_for(attr, entity_type=view.type, rng=rng, book=book)
        turns.append((question, text))
        knowledge.extend(triples)
    return Dialogue(turns, picked, knowledge)
