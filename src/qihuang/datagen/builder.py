"""The phrasebook builder behind ``qihuang data build``: knowledge base -> instruction dataset directory.

For every entity and canonical attribute with values it writes questions in several phrasings with
answers composed from the KB values, scenario questions (symptoms -> likely diseases, hedged) and
multi-turn dialogues, each with its knowledge triples and provenance (``entity``, ``attribute``,
``kind``, ``id``); splits are by entity. ``build_dataset`` is the Python API::

    from qihuang.datagen import build_dataset
    stats = build_dataset(kb, "data/qihuang", max_examples=2000, balanced=True, seed=0)
"""

from __future__ import annotations

import gc
import math
import random
import time
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from qihuang.datagen.dialogues import make_dialogue
from qihuang.datagen.io import DatasetWriter, dataset_info, encode_json
from qihuang.datagen.kbview import EntityView, load_view
from qihuang.datagen.scenarios import SymptomIndex, make_scenario
from qihuang.datagen.splits import Deduper, assign_splits, example_id, may_mention, question_key
from qihuang.datagen.phrasings import prepare_values, questions_for, render_answer
from qihuang.errors import ConfigError
from qihuang.phrasebook import Phrasebook, load_phrasebook
from qihuang.records import make_record

KINDS = ("single", "scenario", "dialogue")  # the kinds `data build` makes (qihuang.records.KINDS: all of them)
KNOWLEDGE_MODES = ("answer", "retrieved")


@dataclass
class _Ctx:
    """Everything the per-entity generator needs."""

    book: Phrasebook
    seed: int
    phrasings: int
    single_attrs: set[str] | None
    kinds: tuple[str, ...]
    split_of: dict[str, str]
    index: SymptomIndex | None
    scenarios_per_disease: int
    dialogues_per_entity: int
    quotas: dict[str, int] | None = None  # balanced: examples still wanted per group
    prepared: dict = field(default_factory=dict)
    retrieval: object | None = None  # knowledge="retrieved": the KB whose retrieval writes the blocks

    def open(self, group: str) -> bool:
        return self.quotas is None or self.quotas.get(group, 0) > 0


def build_dataset(kb, out_dir: str | Path, *, max_examples: int | None = None, per_entity: int | None = None,
                  attributes: Iterable[str] | None = None, seed: int = 0, balanced: bool = False,
                  kinds: Iterable[str] = KINDS, test_entities: Iterable[str] | None = None, phrasings: int = 2,
                  scenarios_per_disease: int = 2, dialogues_per_entity: int = 1, dev_ratio: float = 0.05,
                  test_ratio: float = 0.05, sharegpt: bool = False, progress: bool = False,
                  knowledge: str = "answer", phrasebook: str | Path | None = None) -> dict:
    """Build a dataset directory from ``kb`` (a KnowledgeBase, a database path, or None for the default).

    - ``max_examples``: stop after this many examples; ``per_entity``: at most this many per entity.
    - ``attributes``: canonical attribute keys for single-attribute questions and dialogue turns.
    - ``balanced``: about as many examples per attribute (and for scenarios, dialogues), only the
      entity types and attributes useful for question answering (``balanced``/``qa`` in phrasings.yaml).
    - ``kinds``: any of "single", "scenario", "dialogue"; ``phrasings``: questions per entity and attribute.
    - ``test_entities``: names forced into the test split (the rest is split by ``dev_ratio``/``test_ratio``).
    - ``knowledge``: "answer" (the block holds the triples the answer uses) or "retrieved" (single questions
      get the block that grounding retrieves for the question, as at inference, with the answer's triples
      added where retrieval missed them and, for about half of them, a distractor: a few values of another
      attribute of the entity), so the tuned model learns to pick the right facts when retrieval is
      imperfect. The records are otherwise the same as with "answer" (same seed, same questions).
    - ``phrasebook``: a phrasings YAML file of the user's own (default: ``resources/phrasings.yaml``).
    Returns the statistics also written to ``stats.json``.
    """
    kinds = _check_options(kinds, max_examples, per_entity, phrasings)
    if knowledge not in KNOWLEDGE_MODES:
        raise ConfigError(f"knowledge: {knowledge!r} is not one of {', '.join(KNOWLEDGE_MODES)}")
    own = kb is None or isinstance(kb, (str, Path))
    if own:
        from qihuang.kb import KnowledgeBase

        kb = KnowledgeBase.open(kb)
    gc_was_on = gc.isenabled()
    gc.disable()  # a million small objects, none cyclic: the cycle collector would only rescan them
    try:
        return _build(kb, Path(out_dir), max_examples=max_examples, per_entity=per_entity, attributes=attributes,
                      seed=seed, balanced=balanced, kinds=kinds, test_entities=test_entities, phrasings=phrasings,
                      scenarios_per_disease=scenarios_per_disease, dialogues_per_entity=dialogues_per_entity,
                      dev_ratio=dev_ratio, test_ratio=test_ratio, sharegpt=sharegpt, progress=progress,
                      knowledge=knowledge, phrasebook=phrasebook)
    finally:
        if gc_was_on:
            gc.enable()
        if own:
            kb.close()


def _check_options(kinds, max_examples, per_entity, phrasings) -> tuple[str, ...]:
    kinds = tuple(dict.fromkeys(kinds))
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise ConfigError(f"kinds: {bad or 'none given'}; choose from {', '.join(KINDS)}")
    for name, value in (("max_examples", max_examples), ("per_entity", per_entity), ("phrasings", phrasings)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ConfigError(f"{name}: expected a positive integer, got {value!r}")
    return kinds


def check_attributes(attributes: Iterable[str] | None) -> set[str] | None:
    """Validate canonical attribute keys against the KB schema."""
    if attributes is None:
        return None
    from qihuang.kb.schema import ATTRIBUTES

    wanted = {a.strip() for a in attributes if a.strip()}
    unknown = sorted(wanted - set(ATTRIBUTES))
    if unknown or not wanted:
        raise ConfigError(f"attributes: unknown {unknown or 'none given'}; known: {', '.join(ATTRIBUTES)}")
    return wanted


def _build(kb, out_dir: Path, *, max_examples, per_entity, attributes, seed, balanced, kinds, test_entities,
           phrasings, scenarios_per_disease, dialogues_per_entity, dev_ratio, test_ratio, sharegpt, progress,
           knowledge="answer", phrasebook=None) -> dict:
    t0 = time.perf_counter()
    book = load_phrasebook(phrasebook)
    single_attrs = check_attributes(attributes)
    if balanced:
        from qihuang.kb.schema import ATTRIBUTES

        qa = {a for a in ATTRIBUTES if book.get(a).qa and not book.get(a).generic}
        single_attrs = qa if single_attrs is None else single_attrs & qa
    load_attrs = None if single_attrs is None else single_attrs | {"symptoms", "department"}
    views = load_view(kb, load_attrs, progress=progress)
    if balanced and book.balanced_types:
        views = [v for v in views if v.type in book.balanced_types]
    split_of = _splits(views, kb, seed, dev_ratio, test_ratio, test_entities)
    index = SymptomIndex(views) if "scenario" in kinds and (single_attrs is None or "symptoms" in single_attrs) \
        else None
    ctx = _Ctx(book, seed, phrasings, single_attrs, kinds, split_of, index, scenarios_per_disease,
               dialogues_per_entity, retrieval=kb if knowledge == "retrieved" else None)
    if balanced:
        ctx.quotas = _quotas(views, ctx, max_examples)
    t_read = time.perf_counter() - t0
    order = interleave_splits(views, split_of, seed)
    with DatasetWriter(out_dir, sharegpt=sharegpt) as writer:
        stats = _generate(order, ctx, writer, max_examples, per_entity, progress)
        seconds = time.perf_counter() - t0
        stats.update(_summary(kb, stats, seconds, t_read, seed=seed, balanced=balanced, kinds=list(kinds),
                              phrasings=phrasings, max_examples=max_examples, per_entity=per_entity, knowledge=knowledge,
                              attributes=sorted(single_attrs) if single_attrs is not None else None))
        stats["splits"] = dict(writer.counts)
        writer.commit(dataset_info(sharegpt=sharegpt), stats)
    return stats


def interleave_splits(views: list[EntityView], split_of: dict[str, str], seed: int) -> list[EntityView]:
    """Entities in a seeded random order in which the splits are spread evenly (smooth weighted
    round robin), so a build cut short by ``max_examples`` or quotas still has dev and test examples
    in about the split ratios."""
    groups: dict[str, list[EntityView]] = {}
    for v in views:
        groups.setdefault(split_of.get(v.name, "train"), []).append(v)
    rng = random.Random(seed)
    for name in sorted(groups):
        rng.shuffle(groups[name])
    weights = {name: len(vs) for name, vs in groups.items()}
    total = sum(weights.values())
    credit = dict.fromkeys(groups, 0)
    taken = dict.fromkeys(groups, 0)
    order: list[EntityView] = []
    for _ in range(total):
        for name in credit:
            credit[name] += weights[name]
        pick = max((n for n in credit if taken[n] < weights[n]), key=lambda n: (credit[n], n))
        credit[pick] -= total
        order.append(groups[pick][taken[pick]])
        taken[pick] += 1
    return order


def _splits(views, kb, seed, dev_ratio, test_ratio, test_entities) -> dict[str, str]:
    forced = None
    if test_entities is not None:
        known = {v.name for v in views}
        forced, missing = [], []
        for name in test_entities:
            canonical = name if name in known else _canonical(kb, name)
            (forced if canonical in known else missing).append(canonical or name)
        if missing:
            raise ConfigError(f"test_entities: not in the knowledge base (or without usable facts): {missing}")
    return assign_splits([v.name for v in views], seed=seed, dev_ratio=dev_ratio, test_ratio=test_ratio,
                         test_entities=forced)


def _canonical(kb, name: str) -> str | None:
    entity = kb.show(name) if hasattr(kb, "show") else None
    return entity.name if entity is not None else None


def _quotas(views: list[EntityView], ctx: _Ctx, max_examples: int | None) -> dict[str, int]:
    """Balanced quotas: as equal as possible across groups, small groups give their share to the others."""
    avail: Counter[str] = Counter()
    for v in views:
        for a in v.attrs:
            if ctx.single_attrs is None or a in ctx.single_attrs:
                avail[a] += ctx.phrasings if "single" in ctx.kinds else 0
        if ctx.index is not None and v.name in ctx.index.position:
            avail["scenario"] += ctx.scenarios_per_disease
        if "dialogue" in ctx.kinds:
            avail["dialogue"] += ctx.dialogues_per_entity
    groups = sorted((g for g in avail if avail[g] > 0), key=lambda g: avail[g])
    if not groups:
        return {}
    if max_examples is None:
        sizes = sorted(avail[g] for g in groups)
        max_examples = sizes[len(sizes) // 2] * len(groups)
    quotas, left = {}, max_examples
    for i, g in enumerate(groups):
        share = math.ceil(left / (len(groups) - i))
        quotas[g] = min(avail[g], share)
        left -= quotas[g]
    return quotas


def _prepared(ctx: _Ctx, view: EntityView, attr: str) -> tuple:
    """(phrasing, prepared values, knowledge triples, the triples as JSON) of one entity attribute,
    computed once per entity (the phrasings, the dialogue and the preference builder share it)."""
    key = (view.name, attr)
    cached = ctx.prepared.get(key)
    if cached is None:
        phr = ctx.book.get(attr, view.type)
        facts = view.attrs[attr]
        # an answer shows a few values: looking at the first ones is enough (all of them when some
        # value has a sentence of its own, e.g. 传染性 无/有)
        head = facts if phr.value_sentences else facts[: 2 * phr.max_values + 4]
        prepared = prepare_values([f.value for f in head], phr, ctx.book, exclude=view.name,
                                  more=len(head) < len(facts))
        knowledge = [facts[i].triple() for i in prepared.source_indexes()]
        cached = ctx.prepared[key] = (phr, prepared, knowledge, encode_json(knowledge))
    return cached


def _answer(ctx: _Ctx, view: EntityView, attr: str, rng: random.Random, variant: int | None = None):
    """(answer text, knowledge triples) for one attribute of one entity."""
    phr, prepared, knowledge, _ = _prepared(ctx, view, attr)
    return render_answer(view.name, prepared, phr, ctx.book, rng=rng, variant=variant), knowledge


def _record(kind: str, view: EntityView, attribute: str, question: str, answer: str, knowledge: list,
            history: list | None = None, knowledge_json: str | None = None) -> tuple[dict, str, str | None]:
    """(record, its question key for de-duplication, its knowledge as JSON when already encoded)."""
    history = history or []
    key = question_key(question, history)
    record = make_record(kind, question, answer, knowledge=knowledge, entity=view.name, attribute=attribute,
                         history=history, id=example_id(kind, key))  # no single answer pattern: pattern None
    return record, key, knowledge_json


def entity_examples(view: EntityView, ctx: _Ctx) -> Iterator[tuple[str, tuple[dict, str, str | None]]]:
    """(group, (record, question key, knowledge JSON)) for one entity: one question per attribute first,
    then its scenarios and dialogue, then the remaining phrasings (so ``per_entity`` keeps variety)."""
    rng = random.Random((ctx.seed << 32) ^ zlib.crc32(view.name.encode("utf-8")))  # cheap to seed
    ctx.prepared.clear()
    rounds = _singles(view, ctx, rng) if "single" in ctx.kinds else []
    yield from rounds[0] if rounds else ()
    if ctx.index is not None and ctx.open("scenario"):
        yield from _scenarios(view, ctx, rng)
    if "dialogue" in ctx.kinds and ctx.open("dialogue"):
        for _ in range(ctx.dialogues_per_entity):
            dia = make_dialogue(view, ctx.book, rng, lambda v, a, r: _answer(ctx, v, a, r), ctx.single_attrs)
            if dia is not None:
                (q, a), history = dia.turns[-1], [list(t) for t in dia.turns[:-1]]
                yield "dialogue", _record("dialogue", view, ",".join(dia.attributes), q, a, dia.knowledge, history)
    for later in rounds[1:]:
        yield from later


def _singles(view: EntityView, ctx: _Ctx, rng: random.Random) -> list[list[tuple[str, tuple[dict, str, str]]]]:
    """Single-attribute examples, as rounds: round j holds the j-th phrasing of every attribute."""
    name, etype, book = view.name, view.type, ctx.book
    attrs = [a for a in view.attrs if (ctx.single_attrs is None or a in ctx.single_attrs) and ctx.open(a)]
    rng.shuffle(attrs)
    rounds: list[list[tuple[str, tuple[dict, str, str]]]] = []
    for attr in attrs:
        phr, prepared, knowledge, knowledge_json = _prepared(ctx, view, attr)
        if not prepared.shown and prepared.special_value is None:
            continue
        base = int(rng.random() * 8)  # answer pattern of the first phrasing; the others take the next ones
        for j, q in enumerate(questions_for(name, attr, ctx.phrasings, entity_type=etype, rng=rng, book=book)):
            pattern = base + j
            text = render_answer(name, prepared, phr, book, rng=rng, variant=pattern)
            block, block_json = knowledge, knowledge_json
            if ctx.retrieval is not None:
                own = random.Random(zlib.crc32(q.encode("utf-8")) ^ ctx.seed)  # leaves the build's stream alone
                block, block_json = retrieved_knowledge(ctx.retrieval, view, q, knowledge, own), None
            record = make_record("single", q, text, knowledge=block, entity=name, attribute=attr, pattern=pattern,
                                 id=example_id("single", q))
            if j == len(rounds):
                rounds.append([])
            rounds[j].append((attr, (record, q, block_json)))
    return rounds


def retrieved_knowledge(kb, view: EntityView, question: str, answer_triples: list, rng: random.Random) -> list:
    """The knowledge block grounding retrieves for ``question`` (triples), with the answer's triples
    added where retrieval missed them, and for about half the questions a distractor (a few values of
    another attribute of the entity, at a random place)."""
    from qihuang.answer.grounding import ground

    # records hold plain triples, which render as direct facts: indirect ones (rare for these questions)
    # are left out rather than shown without the note they carry at inference
    got = [f.triple() for f in ground(kb, question).facts if f.via == "direct"]
    have = {tuple(t) for t in got}
    block = got + [t for t in answer_triples if tuple(t) not in have]
    if rng.random() < 0.5:
        asked = {t[1] for t in answer_triples}
        others = [a for a, facts in view.attrs.items() if facts and facts[0].relation not in asked]
        extra = [f.triple() for f in view.attrs[rng.choice(others)][:3]] if others else []
        extra = [t for t in extra if tuple(t) not in have]
        at = rng.randrange(len(block) + 1)
        block = block[:at] + extra + block[at:]
    return block


def _scenarios(view: EntityView, ctx: _Ctx, rng: random.Random) -> Iterator[tuple[str, tuple[dict, str, None]]]:
    split = ctx.split_of.get(view.name, "train")
    allowed = lambda name: may_mention(split, ctx.split_of.get(name))  # noqa: E731
    for _ in range(ctx.scenarios_per_disease):
        sc = make_scenario(view, ctx.index, rng, ctx.book, allowed)
        if sc is not None:
            yield "scenario", _record("scenario", view, "scenario", sc.question, sc.answer, sc.knowledge)


def _generate(order: list[EntityView], ctx: _Ctx, writer: DatasetWriter, max_examples: int | None,
              per_entity: int | None, progress: bool) -> dict:
    dedup = Deduper()
    tally: Counter[tuple] = Counter()  # (kind, attribute, entity type, turns): split into stats at the end
    entities = {s: set() for s in writer.splits}
    total = 0
    limit = max_examples if max_examples is not None else float("inf")
    cap = per_entity if per_entity is not None else float("inf")
    quotas = ctx.quotas
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=max_examples or None, desc="building examples", unit=" ex", mininterval=0.5)
    for view in order:
        if total >= limit or (quotas is not None and not any(v > 0 for v in quotas.values())):
            break
        split = ctx.split_of.get(view.name, "train")
        n_entity = 0
        for group, (rec, key, knowledge_json) in entity_examples(view, ctx):
            if (quotas is not None and quotas.get(group, 0) <= 0) or not dedup.add(key):
                continue
            writer.write(split, rec, knowledge_json)
            total += 1
            n_entity += 1
            if quotas is not None:
                quotas[group] -= 1
            tally[(rec["kind"], rec["attribute"], view.type, len(rec["history"]) + 1)] += 1
            if n_entity >= cap or total >= limit:
                break
        if n_entity:
            entities[split].add(view.name)
        if bar is not None:
            bar.update(n_entity)
    if bar is not None:
        bar.close()
    st = _tally_stats(tally)
    st["duplicates_dropped"] = dedup.duplicates
    st["entities_per_split"] = {s: len(v) for s, v in entities.items()}
    return st


def _tally_stats(tally: Counter) -> dict:
    st = {"kinds": Counter(), "attributes": Counter(), "entity_types": Counter(), "turns": Counter(),
          "dialogue_turn_attributes": Counter()}
    for (kind, attribute, entity_type, turns), n in tally.items():
        st["kinds"][kind] += n
        st["attributes"][attribute if kind == "single" else kind] += n
        st["entity_types"][entity_type] += n
        st["turns"][turns] += n
        if kind == "dialogue":
            for a in attribute.split(","):
                st["dialogue_turn_attributes"][a] += n
    return st


def _summary(kb, st: dict, seconds: float, t_read: float, **options) -> dict:
    total = sum(st["kinds"].values())
    singles = set(st["attributes"]) - {"scenario", "dialogue"}
    covered = singles | set(st["dialogue_turn_attributes"])
    return {
        "total": total,
        "kinds": dict(st["kinds"]),
        "attributes": dict(st["attributes"].most_common()),
        "entity_types": dict(st["entity_types"].most_common()),
        "turns": {str(k): v for k, v in sorted(st["turns"].items())},
        "dialogue_turn_attributes": dict(st["dialogue_turn_attributes"].most_common()),
        "canonical_attributes": len(covered),
        "seconds": round(seconds, 3),
        "seconds_reading_kb": round(t_read, 3),
        "examples_per_second": round(total / seconds, 1) if seconds > 0 else None,
        "kb": str(getattr(kb, "path", "")),
        "options": options,
    }
