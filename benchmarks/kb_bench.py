"""Knowledge-base benchmark: full CMeKG import time, link throughput, show latency.

    python benchmarks/kb_bench.py [--db PATH]

Targets (foundation issue): import <= 30 s, link >= 5,000 questions/s once loaded, show p99 <= 5 ms.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

from qihuang.kb import KnowledgeBase

PHRASES = ["{}吃什么药？", "{}有哪些症状", "得了{}挂什么科", "{}的副作用大吗", "{}怎么治疗比较好",
           "我妈妈有{}，平时要注意什么？", "{}需要做哪些检查", "{}的病因是什么", "请问{}和感冒有关系吗"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--db", help="existing KB to reuse (default: import CMeKG into a temp dir)")
    ap.add_argument("--questions", type=int, default=20000)
    args = ap.parse_args()

    tmp = tempfile.TemporaryDirectory()
    if args.db:
        kb = KnowledgeBase.open(args.db)
        print("import: skipped (--db given)")
    else:
        kb = KnowledgeBase.create(Path(tmp.name) / "kb.sqlite")
        t = time.perf_counter()
        report = kb.import_source("cmekg", progress=False)
        dt = time.perf_counter() - t
        print(f"import: {report.triples_in_source} triples, {report.records} entities in {dt:.1f} s "
              f"(target <= 30 s) {'OK' if dt <= 30 else 'MISSED'}")

    rng = random.Random(0)
    names = kb.entity_names()
    questions = [rng.choice(PHRASES).format(rng.choice(names)) for _ in range(args.questions)]
    t = time.perf_counter()
    kb.link("预热")
    print(f"linker build: {time.perf_counter() - t:.2f} s")
    t = time.perf_counter()
    for q in questions:
        kb.link(q, max_values=10)
    qps = len(questions) / (time.perf_counter() - t)
    print(f"link: {qps:,.0f} questions/s with facts (target >= 5,000) {'OK' if qps >= 5000 else 'MISSED'}")

    sample = rng.sample(names, 2000)
    lat = []
    for name in sample:
        t = time.perf_counter()
        kb.show(name)
        lat.append((time.perf_counter() - t) * 1000)
    p99 = statistics.quantiles(lat, n=100)[98]
    print(f"show: p50 {statistics.median(lat):.2f} ms, p99 {p99:.2f} ms, max {max(lat):.1f} ms "
          f"(target p99 <= 5 ms) {'OK' if p99 <= 5 else 'MISSED'}")
    kb.close()


if __name__ == "__main__":
    main()
