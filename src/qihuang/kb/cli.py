"""``qihuang kb`` subcommands: import, stats, show, link."""

from __future__ import annotations

import argparse
import json

from qihuang.errors import QihuangError


def _print_json(obj) -> None:
    print(json.dumps(obj, ensure_ascii=False, indent=2))


def cmd_import(args) -> int:
    from qihuang.kb import KnowledgeBase

    with KnowledgeBase.create(args.db) as kb:
        report = kb.import_source(args.source, skip_bad=args.skip_bad, progress=not args.json)
        stats = kb.stats()
    if args.json:
        _print_json({"report": report.to_dict(), "entities": stats["entities"], "triples": stats["triples"]})
        return 0
    print(f"imported {report.source}: {report.triples_in_source} triples read, {report.triples_added} new, "
          f"{report.nodes_added} new entities/nodes in {report.seconds}s")
    if report.skipped:
        reasons = ", ".join(f"{k}: {v}" for k, v in report.skip_reasons.items())
        print(f"skipped {report.skipped} bad lines ({reasons})")
        for example in report.skip_examples:
            print("  " + example)
    print(f"knowledge base {stats['path']}: {stats['entities']} entities, {stats['triples']} triples")
    return 0


def cmd_stats(args) -> int:
    from qihuang.kb import KnowledgeBase

    with KnowledgeBase.open(args.db) as kb:
        stats = kb.stats()
    if args.json:
        _print_json(stats)
        return 0
    print(f"{stats['path']}\n  entities {stats['entities']}  nodes {stats['nodes']}  triples {stats['triples']}  "
          f"aliases {stats['aliases']}  relations {stats['relations']}")
    print("  types: " + ", ".join(f"{k} {v}" for k, v in stats["entity_types"].items()))
    print("  attributes: " + ", ".join(f"{k} {v}" for k, v in list(stats["attributes"].items())[:20]))
    return 0


def cmd_show(args) -> int:
    from qihuang.kb import KnowledgeBase

    with KnowledgeBase.open(args.db) as kb:
        entity = kb.show(args.entity)
        labels = kb.attributes()
    if entity is None:
        raise QihuangError(f"no entity named {args.entity!r} in the knowledge base")
    if args.json:
        _print_json(entity.to_dict())
        return 0
    print(f"{entity.name} [{entity.type}]" + (f"  别名: {'、'.join(entity.aliases[:8])}" if entity.aliases else ""))
    for attr, facts in entity.by_attribute().items():
        values = [f.value for f in facts]
        more = f" …(+{len(values) - args.limit})" if len(values) > args.limit else ""
        print(f"  {labels.get(attr, attr)} ({facts[0].relation}): {'、'.join(values[:args.limit])}{more}")
    return 0


def cmd_link(args) -> int:
    from qihuang.kb import KnowledgeBase

    with KnowledgeBase.open(args.db) as kb:
        kb.use_departments(args.departments)
        result = kb.link(args.text, max_values=args.max_values, history=args.history or None)
        labels = kb.attributes()
    if args.json:
        _print_json(result.to_dict())
        return 0
    from qihuang.kb.types import via_note

    print("entities: " + ("; ".join(f"{m.name}[{m.type}] @{m.start}-{m.end}" + (" (negated)" if getattr(
        m, "negated", False) else "") for m in result.entities) or "(none)"))
    print("attributes: " + (", ".join(f"{a} ({labels.get(a, a)})" for a in result.attributes) or "(none)"))
    if result.candidates:
        print("candidate diseases (可能相关，非诊断):")
        for c in result.candidates:
            neg = f"; against: {'、'.join(c['negated'])}" if c["negated"] else ""
            print(f"  {c['disease']}  score {c['score']}{'' if c['confident'] else ' (weak)'}  "
                  f"evidence: {'、'.join(c['evidence'])}{neg}")
    if result.missing:
        print("not in the KB: " + "; ".join(f"{e} {labels.get(a, a)}" for e, a in result.missing)
              + " (the entity's other facts follow)")
    if result.abstained:
        print("facts: (none: nothing retrieved)")
    for f in result.facts:
        note = via_note(f.via, f.anchor, f.relation)
        print(f"  {f.entity} | {f.relation} | {f.value}" + (f"   [{f.via}: {note}]" if note else ""))
    return 0


def _departments_help() -> str:
    from qihuang.options import AnswerOptions  # one help text for every command that takes the list

    return AnswerOptions.model_fields["departments"].description


def register(sub: argparse._SubParsersAction) -> None:
    kb = sub.add_parser("kb", help="import and query the medical knowledge base")
    kbs = kb.add_subparsers(dest="kb_command", metavar="ACTION", required=True)

    def add(name: str, func, help: str) -> argparse.ArgumentParser:
        p = kbs.add_parser(name, help=help)
        p.add_argument("--db", "--kb", dest="db", help="knowledge-base file (default: $QIHUANG_HOME/kb.sqlite)")
        p.add_argument("--json", action="store_true", help="print JSON")
        p.set_defaults(func=func)
        return p

    p = add("import", cmd_import, "import CMeKG or your own KB (JSONL entities, CSV/TSV triples)")
    p.add_argument("--source", default="cmekg", help="'cmekg' (default) or a .jsonl/.csv/.tsv file")
    p.add_argument("--skip-bad", action="store_true", help="skip bad lines and report them instead of failing")
    add("stats", cmd_stats, "counts of entities, triples, types and attributes")
    p = add("show", cmd_show, "all facts about one entity (name or alias)")
    p.add_argument("entity")
    p.add_argument("--limit", type=int, default=12, help="values shown per attribute (text output)")
    p = add("link", cmd_link, "entities, asked attributes and facts found in a question")
    p.add_argument("text")
    p.add_argument("--max-values", type=int, default=10, help="values per attribute in the facts")
    p.add_argument("--history", action="append", metavar="TURN",
                   help="an earlier user turn (repeat, oldest first): its entities answer a question that names none")
    p.add_argument("--departments", metavar="FILE", help=_departments_help())
