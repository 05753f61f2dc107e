"""Choose the triage backstop's two thresholds: out of fold on its training questions, and on real questions.

    PYTHONPATH=src python benchmarks/triage_model_cv.py [--realq ../shared/realq/questions.jsonl]
        [--c 16] [--red-share 0.1] [--max-urgent 3.0] [--max-emergency 0.25]

The backstop (``answer/triage_model.py``) is trained on ``resources/triage_examples.jsonl`` (never a
held-out part). Its two probabilities, P(red flag) and P(emergency), are taken out of fold (5-fold,
stratified: each fold scored by a model trained without it) for every training question, and directly
for the ``tune`` split of the real questions (``--realq``: not in the training file; the ``held`` split is
never read here). Per threshold it prints the share of benign questions at or above it (out of fold; real
questions not labelled emergency) and the share of red flags / emergencies reached. ``model.urgent`` is
the lowest threshold of P(red flag) with at most ``--max-urgent`` % of benign questions at or above it,
``model.emergency`` the lowest of P(emergency) with at most ``--max-emergency`` % (the larger of the out-of-fold
and the real share counts); both go to ``red_flags.yaml``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedKFold

from qihuang.answer.triage import read
from qihuang.answer.triage_model import build, prepared_examples


def out_of_fold(texts: list[str], labels: list[str], c: float, red_share: float) -> np.ndarray:
    """(P(red flag), P(emergency)) of every training question from a model trained without its fold."""
    p = np.zeros((len(texts), 2))
    for train, test in StratifiedKFold(5, shuffle=True, random_state=0).split(texts, labels):
        model = build([texts[i] for i in train], [labels[i] for i in train], c=c, red_share=red_share)
        for i in test:
            p[i] = model.probabilities(texts[i])
    return p


def real_tune(path: Path, c: float, red_share: float) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities and gold labels of the real questions' ``tune`` split, read as triage reads them."""
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = [r for r in rows if r["split"] == "tune"]
    model = build(*prepared_examples(), c=c, red_share=red_share)
    p = np.array([model.probabilities(read(r["text"]).current_text() or " ") for r in rows]).reshape(-1, 2)
    return p, np.array([r["triage_gold"] for r in rows])


def _share(values: np.ndarray, t: float) -> float:
    return 100 * float((values >= t).mean()) if len(values) else 0.0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--realq", type=Path, help="real questions (JSON lines with text, split, triage_gold)")
    ap.add_argument("--c", type=float, default=16.0)
    ap.add_argument("--red-share", type=float, default=0.1)
    ap.add_argument("--max-urgent", type=float, default=3.0, help="percent of benign questions at or above")
    ap.add_argument("--max-emergency", type=float, default=0.25, help="percent of benign questions at or above")
    args = ap.parse_args(argv)
    texts, labels = prepared_examples()
    lab = np.array(labels)
    p = out_of_fold(texts, labels, args.c, args.red_share)
    rp, gold = real_tune(args.realq, args.c, args.red_share) if args.realq else (np.zeros((0, 2)), np.zeros(0))
    print(f"{len(texts)} training questions ({(lab != 'none').sum()} red flags) out of fold; "
          f"{len(rp)} real tune questions")
    print("threshold | P(red flag): oof benign%  red%  real none% | P(emergency): oof benign%  urgent%  "
          "emergency%  real non-emergency%  real emergencies")
    chosen: dict[str, float | None] = {"urgent": None, "emergency": None}
    for t in np.round(np.arange(0.30, 0.96, 0.05), 2):
        red_b, real_b = _share(p[lab == "none", 0], t), _share(rp[gold == "none", 0], t)
        em_b, real_e = _share(p[lab == "none", 1], t), _share(rp[gold != "emergency", 1], t)
        caught = f"{int((rp[gold == 'emergency', 1] >= t).sum())}/{int((gold == 'emergency').sum())}"
        print(f"  {t:.2f}    | {red_b:6.2f} {_share(p[lab != 'none', 0], t):6.2f} {real_b:6.2f}      | "
              f"{em_b:6.2f} {_share(p[lab == 'urgent', 1], t):6.2f} {_share(p[lab == 'emergency', 1], t):6.2f}"
              f"      {real_e:6.2f}      {caught}")
        if chosen["urgent"] is None and max(red_b, real_b) <= args.max_urgent:
            chosen["urgent"] = float(t)
        if chosen["emergency"] is None and max(em_b, real_e) <= args.max_emergency:
            chosen["emergency"] = float(t)
    print(f"model.urgent (<= {args.max_urgent}% benign at or above): {chosen['urgent']}")
    print(f"model.emergency (<= {args.max_emergency}% benign at or above): {chosen['emergency']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
