"""Linking and intent figures on the linking helper's own dev questions (tests/fixtures/retrieval_dev_link.jsonl).

    QIHUANG_HOME=/work/qh python benchmarks/link_dev.py [--db KB] [--split tune|held|all] [--no-intent] [--sweep]

Per split: entity recall (gold entities found; a gold name counts as found when a mention names it, lists
it among its forms, or is its drug stem), entity accuracy@1 (the first mention is the first gold entity),
negation accuracy (per gold-entity mention), abstain (no-entity questions link nothing), and attribute
precision / recall / F1 (micro; of a group of alternatives, the first attribute that a linked entity or
one of its forms has counts).
``--sweep`` prints attribute P/R/F1 on the tune split for a range of detector thresholds, of the detector
alone (cues off: how it does on wordings it was not trained on) and combined with the cues.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from qihuang.kb import KnowledgeBase
from qihuang.kb.lexicon import load_lexicon
from qihuang.kb.intent import mask_mentions
from qihuang.kb.link import _stems

DATA = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "retrieval_dev_link.jsonl"


def _matches(mention, gold: str, forms) -> bool:
    return gold in (mention.name, *mention.forms) or gold in _stems(mention.name, forms)


def _effective(kb: KnowledgeBase, groups, mentions) -> set[str]:
    names = dict.fromkeys(n for m in mentions for n in (m.name, *m.forms))
    subjects = [n for n in names if kb.facts(n, max_values=1)]
    out = set()
    for group in groups:
        having = [a for a in group if any(kb.facts(s, [a], max_values=1) for s in subjects)]
        out.add(having[0] if having else group[0])
    return out


def evaluate(kb: KnowledgeBase, rows: list[dict], detector_only=None) -> dict:
    """Figures on ``rows``; with ``detector_only`` (an IntentDetector) the attributes come from it alone."""
    stem = load_lexicon().drug_forms
    c = dict(ent_gold=0, ent_found=0, top1=0, top1_n=0, neg_ok=0, neg_n=0, abst_ok=0, abst_n=0, tp=0, fp=0, fn=0)
    errors = []
    for r in rows:
        mentions = kb.find_entities(r["question"])
        if detector_only is not None:
            found = detector_only.predict(mask_mentions(r["question"], mentions)) if mentions else []
            groups = [tuple(a for a, _p in found)] if found else []
        else:
            groups = kb.linker.detect_attribute_groups(r["question"], mentions)
        if not r["entities"]:
            c["abst_n"] += 1
            c["abst_ok"] += not mentions
            if mentions:
                errors.append(("abstain", r["question"], [m.name for m in mentions]))
            continue
        for g in r["entities"]:
            c["ent_gold"] += 1
            hit = [m for m in mentions if _matches(m, g, stem)]
            c["ent_found"] += bool(hit)
            if not hit:
                errors.append(("entity", r["question"], g, [m.name for m in mentions]))
            if hit:
                c["neg_n"] += 1
                ok = hit[0].negated == (g in r.get("negated", []))
                c["neg_ok"] += ok
                if not ok:
                    errors.append(("negation", r["question"], g))
        c["top1_n"] += 1
        c["top1"] += bool(mentions) and _matches(mentions[0], r["entities"][0], stem)
        pred, gold = _effective(kb, groups, mentions), set(r["attributes"])
        c["tp"] += len(pred & gold)
        c["fp"] += len(pred - gold)
        c["fn"] += len(gold - pred)
        if pred != gold:
            errors.append(("attribute", r["question"], sorted(gold), sorted(pred)))
    p = c["tp"] / max(c["tp"] + c["fp"], 1)
    rec = c["tp"] / max(c["tp"] + c["fn"], 1)
    return {"n": len(rows), "entity_recall": c["ent_found"] / max(c["ent_gold"], 1),
            "entity_acc@1": c["top1"] / max(c["top1_n"], 1), "negation_acc": c["neg_ok"] / max(c["neg_n"], 1),
            "abstain_recall": c["abst_ok"] / max(c["abst_n"], 1), "attr_precision": p, "attr_recall": rec,
            "attr_f1": 2 * p * rec / max(p + rec, 1e-9), "errors": errors}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--split", default="all", choices=["tune", "held", "all"])
    ap.add_argument("--no-intent", action="store_true", help="cues alone (no learned detector)")
    ap.add_argument("--sweep", action="store_true", help="attribute F1 on the tune split per threshold")
    ap.add_argument("--errors", action="store_true", help="list every miss")
    ap.add_argument("--db", help="KB file (default: $QIHUANG_HOME/kb.sqlite)")
    args = ap.parse_args()
    rows = [json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines() if line.strip()]
    kb = KnowledgeBase.open(args.db)
    t0 = time.perf_counter()
    linker = kb.linker
    print(f"linker built in {time.perf_counter() - t0:.1f} s")
    detector = linker.intent
    if args.no_intent:
        linker.intent = None
    if args.sweep:
        tune = [r for r in rows if r["split"] == "tune"]
        for th in (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.7):
            alone = evaluate(kb, tune, detector.with_threshold(th))
            linker.intent = detector.with_threshold(th)
            res = evaluate(kb, tune)
            print(f"threshold {th:.2f}: detector alone P {alone['attr_precision']:.3f} R {alone['attr_recall']:.3f} "
                  f"F1 {alone['attr_f1']:.3f} | cues + detector F1 {res['attr_f1']:.3f}")
        linker.intent = detector
    splits = ["tune", "held"] if args.split == "all" else [args.split]
    for split in splits:
        res = evaluate(kb, [r for r in rows if r["split"] == split])
        errors = res.pop("errors")
        print(split, json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in res.items()}))
        if args.errors:
            for e in errors:
                print("   ", *e)


if __name__ == "__main__":
    main()
