"""The LLM-assisted builder behind ``qihuang data synth`` (HuaTuo style).

Sample a few KB facts about one entity, ask an OpenAI-compatible chat model for a realistic patient
question and an answer that uses them (as JSON), keep only consistent outputs, and write the same
dataset directory as the template builder. Consistency: the answer states every required value, the
entity is named, and no KB disease/drug/herb/formula is named that is not in the facts (checked with
the KB's entity linker). Replies are cached in ``synth_cache.jsonl`` in the output directory, so a
rerun (after a crash, or with a larger ``n``) only sends what it has not sent before.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import re
import time
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path


from qihuang.datagen.io import DatasetWriter, dataset_info
from qihuang.fileio import atomic_write_text, read_yaml
from qihuang.datagen.kbview import EntityView, load_view
from qihuang.datagen.llm_client import ChatClient, ReplyCache, RequestFailed, api_key_from_env
from qihuang.datagen.splits import assign_splits
from qihuang.datagen.phrasings import clean_value, is_clause
from qihuang.errors import ConfigError
from qihuang.kb.types import Fact
from qihuang.options import SynthOptions
from qihuang.paths import resource
from qihuang.phrasebook import load_phrasebook

CACHE_NAME = "synth_cache.jsonl"
DROPPED_NAME = "synth_dropped.jsonl"
_FENCE = re.compile(r"^```(?:json)?\s*|\s*```$", re.MULTILINE)
_KEYS = {"question": ("question", "问题", "提问"), "answer": ("answer", "回答", "答案")}


@dataclass(frozen=True)
class FactSample:
    """What one request is about: an entity, some of its facts, the values the answer must state."""

    index: int
    entity: str
    entity_type: str
    aliases: tuple[str, ...]
    attributes: tuple[str, ...]
    facts: tuple[Fact, ...]
    required: tuple[str, ...]


@lru_cache(maxsize=4)
def load_prompts(path: str | None = None) -> dict:
    """The synth prompts (``resources/synth_prompts.yaml``), checked."""
    p = Path(path) if path else resource("synth_prompts.yaml")
    raw = read_yaml(p, "synth prompts")
    for key in ("system", "user", "fact_line", "entity_types"):
        if not raw or key not in raw:
            raise ConfigError(f"{p}: missing key {key!r}")
    try:
        raw["user"].format(entity="e", entity_type="t", facts="f", required="r")
        raw["fact_line"].format(subject="s", relation="r", value="v")
    except (KeyError, IndexError, ValueError) as exc:
        raise ConfigError(f"{p}: bad placeholder in user/fact_line: {exc}") from None
    return raw


# ---- sampling ----------------------------------------------------------------------------------
def sample_facts(views: list[EntityView], n: int, seed: int, prompts: dict) -> list[FactSample]:
    """``n`` fact samples. Sample ``i`` depends only on ``seed`` and ``i`` (and the KB), so a rerun
    with a larger ``n`` repeats the first ones exactly and their cached replies are reused."""
    book = load_phrasebook()
    skip = set(prompts.get("skip_attributes") or ())
    qa = {a for a in {k for v in views for k in v.attrs}
          if a not in skip and book.get(a).qa and not book.get(a).generic}
    by_type: dict[str, list[EntityView]] = {}
    for v in views:
        if any(a in qa for a in v.attrs):
            by_type.setdefault(v.type, []).append(v)
    weights = {t: float(w) for t, w in prompts["entity_types"].items() if by_type.get(t)}
    if not weights:
        raise ConfigError("synth: the knowledge base has no entities of the sampled types "
                          f"({', '.join(prompts['entity_types'])}) with question-worthy facts")
    types, w = list(weights), list(weights.values())
    out = []
    for i in range(n):
        rng = random.Random(f"{seed}\x1fsynth\x1f{i}")
        pool = by_type[rng.choices(types, w)[0]]
        out.append(_sample_one(i, pool[int(rng.random() * len(pool))], qa, rng, prompts))
    return out


def _sample_one(i: int, view: EntityView, qa: set[str], rng: random.Random, prompts: dict) -> FactSample:
    attrs = sorted(a for a in view.attrs if a in qa)
    k = rng.randint(1, min(int(prompts.get("max_attributes", 2)), len(attrs)))
    chosen = sorted(rng.sample(attrs, k))
    facts: list[Fact] = []
    required: list[str] = []
    budget = int(prompts.get("max_required", 4))
    for a in chosen:
        for f in view.attrs[a][: int(prompts.get("max_values", 3))]:
            facts.append(f)
            v = clean_value(f.value)
            if v and v not in required and len(required) < budget and not is_clause(v):
                required.append(v)
    return FactSample(i, view.name, view.type, tuple(view.aliases), tuple(chosen), tuple(facts), tuple(required))


def build_messages(sample: FactSample, prompts: dict) -> list[dict]:
    """System + user messages for one sample."""
    facts = "\n".join(prompts["fact_line"].format(subject=f.entity, relation=f.relation, value=f.value)
                      for f in sample.facts)
    label = (prompts.get("type_labels") or {}).get(sample.entity_type, sample.entity_type)
    required = "、".join(f"“{r}”" for r in sample.required) or f"“{sample.entity}”"
    user = prompts["user"].format(entity=sample.entity, entity_type=label, facts=facts, required=required)
    return [{"role": "system", "content": prompts["system"].strip()}, {"role": "user", "content": user}]


# ---- checking replies --------------------------------------------------------------------------
def parse_reply(text: str) -> dict[str, str] | None:
    """``{"question", "answer"}`` from a model reply (code fences and chatter around the JSON
    object tolerated), or None."""
    body = _FENCE.sub("", text.strip())
    start, end = body.find("{"), body.rfind("}")
    if start < 0 or end <= start:
        return None
    try:
        data = json.loads(body[start:end + 1])
    except json.JSONDecodeError:
        return None
    if not isinstance(data, dict):
        return None
    out = {}
    for key, names in _KEYS.items():
        value = next((data[n] for n in names if isinstance(data.get(n), str) and data[n].strip()), None)
        if value is None:
            return None
        out[key] = value.strip()
    return out


def check_consistency(kb, sample: FactSample, qa: dict[str, str], check_types: set[str]) -> tuple[str | None, str]:
    """(reason, detail) why a reply must be dropped, or (None, "") when it is consistent."""
    text = qa["question"] + "\n" + qa["answer"]
    names = (sample.entity, *sample.aliases)
    if not any(n in text for n in names):
        return "missing_entity", sample.entity
    missing = [r for r in sample.required if r not in qa["answer"]]
    if missing:
        return "missing_facts", "、".join(missing)
    allowed = [*names, *(f.value for f in sample.facts)]
    foreign = []
    for m in kb.find_entities(text):
        if m.type not in check_types or m.name in allowed or any(m.surface in a or m.name in a for a in allowed):
            continue
        foreign.append(m.name)
    if foreign:
        return "foreign_entities", "、".join(dict.fromkeys(foreign))
    return None, ""


# ---- running -----------------------------------------------------------------------------------
def synthesize(kb, out_dir: str | Path, options: SynthOptions | None = None, *, api_key: str | None = None,
               progress: bool = False, **fields) -> dict:
    """Write an LLM-synthesized dataset directory from ``kb`` (a KnowledgeBase, a path, or None for the
    default) with ``options`` (:class:`qihuang.options.SynthOptions`; ``fields`` set or override some of
    them); returns the statistics (kept, dropped by reason, requests, retries, cache hits)."""
    o = SynthOptions.of(options, **fields)
    own = kb is None or isinstance(kb, (str, Path))
    if own:
        from qihuang.kb import KnowledgeBase

        kb = KnowledgeBase.open(kb)
    try:
        t0 = time.perf_counter()
        prompts = load_prompts(o.prompts_path)
        samples = sample_facts(load_view(kb, progress=progress), o.n, o.seed, prompts)
        extra = {"temperature": o.temperature}
        if prompts.get("response_format"):
            extra["response_format"] = prompts["response_format"]
        client = ChatClient(o.base_url, o.model, api_key or api_key_from_env(), timeout=o.timeout,
                            retries=o.retries, extra=extra)
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        cache = ReplyCache(out_dir / CACHE_NAME)
        try:
            results = asyncio.run(_run_all(samples, prompts, client, cache, o.concurrency, progress))
        finally:
            cache.close()
        stats = _write(kb, out_dir, results, prompts, o.seed, o.sharegpt, o.dev_ratio, o.test_ratio)
        stats.update(requested=o.n, http=client.counts, seconds=round(time.perf_counter() - t0, 3),
                     model=o.model, base_url=o.base_url)
        from qihuang.fileio import atomic_write_json

        atomic_write_json(out_dir / "stats.json", stats)
        return stats
    finally:
        if own:
            kb.close()


async def _run_all(samples: list[FactSample], prompts: dict, client: ChatClient, cache: ReplyCache,
                   concurrency: int, progress: bool) -> list[tuple[FactSample, str | None, str]]:
    """(sample, reply text or None, how: "cached" | "sent" | failure reason) for every sample."""
    sem = asyncio.Semaphore(concurrency)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(samples), desc="synthesizing", unit=" samples")

    async def one(sample: FactSample):
        payload = client.payload(build_messages(sample, prompts))
        key = cache.key(payload)
        hit = cache.get(key)
        if hit is not None:
            return sample, hit, "cached"
        async with sem:
            try:
                text = await client.complete(payload)
                if parse_reply(text) is None:  # one more try for a reply that is not the JSON asked for
                    client.note("reasked")
                    text = await client.complete(payload)
            except RequestFailed as exc:
                return sample, None, exc.reason
        cache.put(key, text, model=client.model)
        return sample, text, "sent"

    results = []
    async with client:
        tasks = [asyncio.create_task(one(s)) for s in samples]
        try:
            for fut in asyncio.as_completed(tasks):
                results.append(await fut)
                if bar is not None:
                    bar.update(1)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if bar is not None:
                bar.close()
    results.sort(key=lambda r: r[0].index)
    return results


def _write(kb, out_dir: Path, results, prompts: dict, seed: int, sharegpt: bool, dev_ratio: float,
           test_ratio: float) -> dict:
    check_types = set(prompts.get("check_types") or ())
    kept: list[tuple[FactSample, dict]] = []
    dropped: list[dict] = []
    how = Counter(r[2] for r in results if r[1] is not None)
    seen: set[str] = set()
    for sample, text, status in results:
        reason, detail, qa = (status, "", None) if text is None else _judge(kb, sample, text, check_types)
        if reason is None and qa["question"] in seen:
            reason = "duplicate_question"
        if reason is not None:
            dropped.append({"index": sample.index, "entity": sample.entity, "reason": reason, "detail": detail,
                            "reply": text})
            continue
        seen.add(qa["question"])
        kept.append((sample, qa))
    split_of = assign_splits({s.entity for s, _ in kept}, seed=seed, dev_ratio=dev_ratio, test_ratio=test_ratio)
    with DatasetWriter(out_dir, sharegpt=sharegpt) as writer:
        for sample, qa in kept:
            writer.write(split_of[sample.entity], _record(sample, qa))
        stats = {"total": len(kept), "splits": dict(writer.counts), "sent": how.get("sent", 0),
                 "cached": how.get("cached", 0), "dropped": dict(Counter(d["reason"] for d in dropped)),
                 "attributes": dict(Counter(a for s, _ in kept for a in s.attributes).most_common()),
                 "entity_types": dict(Counter(s.entity_type for s, _ in kept).most_common())}
        writer.commit(dataset_info(sharegpt=sharegpt), stats)
    atomic_write_text(out_dir / DROPPED_NAME, "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in dropped))
    return stats


def _judge(kb, sample: FactSample, text: str, check_types: set[str]):
    qa = parse_reply(text)
    if qa is None:
        return "bad_json", text[:200], None
    reason, detail = check_consistency(kb, sample, qa, check_types)
    return reason, detail, qa


def _record(sample: FactSample, qa: dict[str, str]) -> dict:
    digest = hashlib.blake2b(qa["question"].encode("utf-8"), digest_size=8).hexdigest()
    return {"instruction": qa["question"], "input": "", "output": qa["answer"], "history": [],
            "knowledge": [f.triple() for f in sample.facts], "entity": sample.entity,
            "attribute": ",".join(sample.attributes), "kind": "single", "pattern": None, "source": "synth",
            "id": f"y-{digest}"}


def run_synth_cli(args) -> int:
    """``qihuang data synth``."""
    from qihuang.flags import options_from_args

    stats = synthesize(args.db, args.out, options_from_args(SynthOptions, args), progress=not args.json)
    if args.json:
        print(json.dumps(stats, ensure_ascii=False, indent=2))
        return 0
    dropped = ", ".join(f"{k} {v}" for k, v in stats["dropped"].items()) or "none"
    http = stats["http"]
    print(f"kept {stats['total']} of {stats['requested']} samples in {args.out} (dropped: {dropped}); "
          f"{http['requests']} requests sent ({http['retries']} retries), {stats['cached']} replies from cache")
    return 0
