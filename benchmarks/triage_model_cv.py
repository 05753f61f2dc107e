"""Choose the triage backstop's thresholds: out of fold on its training questions, and on real questions.

    PYTHONPATH=src python benchmarks/triage_model_cv.py [--realq ../shared/realq/questions.jsonl]
        [--c 16] [--red-share 0.1] [--max-urgent 3.0] [--max-emergency 0.25] [--max-self-harm 0.5]

The backstop (``answer/triage_model.py``) is trained on ``resources/triage_examples.jsonl`` (never a
held-out part). Its three probabilities, P(red flag), P(emergency) and P(suicidal intent), are taken out of
fold (5-fold, stratified: each fold scored by a model trained without it) for every training question, and
directly for the ``tune`` split of the real questions (``--realq``: not in the training file; the ``held``
split is never read here). Per threshold it prints the share of benign questions at or above it (out of
fold; real questions not labelled emergency) and the share of red flags / emergencies / suicidal questions
reached. Each threshold in ``red_flags.yaml`` is the lowest one whose benign share (the larger of the
out-of-fold and the real one) stays within its bound: ``model.urgent`` for P(red flag) (``--max-urgent``),
``model.emergency`` for P(emergency) (``--max-emergency``), ``model.self_harm`` for P(suicidal intent)
(``--max-self-harm``, benign here meaning every question that is not suicidal).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedKFold

from qihuang.answer.triage import read
from qihuang.answer.triage_model import build, prepared_examples, subset


def _scores(model, text: str) -> tuple[float, float, float]:
    return (*model.probabilities(text), model.self_harm_probability(text))


def out_of_fold(examples, c: float, red_share: float) -> np.ndarray:
    """(P(red flag), P(emergency), P(suicidal intent)) of every training question, out of fold."""
    strata = [f"{label}{sh}" for label, sh in zip(examples.labels, examples.self_harm)]
    p = np.zeros((len(examples.texts), 3))
    for train, test in StratifiedKFold(5, shuffle=True, random_state=0).split(examples.texts, strata):
        model = build(subset(examples, train), c=c, red_share=red_share)
        for i in test:
            p[i] = _scores(model, examples.texts[i])
    return p


def real_tune(path: Path, c: float, red_share: float) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities and gold labels of the real questions' ``tune`` split, read as triage reads them."""
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = [r for r in rows if r["split"] == "tune"]
    model = build(prepared_examples(), c=c, red_share=red_share)
    p = np.array([_scores(model, read(r["text"]).current_text() or " ") for r in rows]).reshape(-1, 3)
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
    ap.add_argument("--max-self-harm", type=float, default=0.5, help="percent of benign questions at or above")
    args = ap.parse_args(argv)
    ex = prepared_examples()
    lab, sh = np.array(ex.labels), np.array(ex.self_harm)
    p = out_of_fold(ex, args.c, args.red_share)
    rp, gold = real_tune(args.realq, args.c, args.red_share) if args.realq else (np.zeros((0, 3)), np.zeros(0))
    print(f"{len(ex.texts)} training questions ({(lab != 'none').sum()} red flags, {sh.sum()} suicidal) "
          f"out of fold; {len(rp)} real tune questions")
    print("threshold | P(red flag): oof benign%  red%  real none% | P(emergency): oof benign%  urgent%  "
          "emergency%  real non-emergency% | P(suicidal): oof other% suicidal%  real%")
    chosen: dict[str, float | None] = {"urgent": None, "emergency": None, "self_harm": None}
    bounds = {"urgent": args.max_urgent, "emergency": args.max_emergency, "self_harm": args.max_self_harm}
    for t in [0.02, 0.03, 0.05, 0.075, *np.round(np.arange(0.10, 0.96, 0.05), 2)]:
        benign = {"urgent": (_share(p[lab == "none", 0], t), _share(rp[gold == "none", 0], t)),
                  "emergency": (_share(p[lab == "none", 1], t), _share(rp[gold != "emergency", 1], t)),
                  "self_harm": (_share(p[~sh, 2], t), _share(rp[:, 2], t))}
        print(f"  {t:.2f}    | {benign['urgent'][0]:6.2f} {_share(p[lab != 'none', 0], t):6.2f} "
              f"{benign['urgent'][1]:6.2f}      | {benign['emergency'][0]:6.2f} "
              f"{_share(p[lab == 'urgent', 1], t):6.2f} "
              f"{_share(p[lab == 'emergency', 1], t):6.2f}    {benign['emergency'][1]:6.2f}          | "
              f"{benign['self_harm'][0]:6.2f} {_share(p[sh, 2], t):6.2f} {benign['self_harm'][1]:6.2f}")
        for key, (oof, real) in benign.items():
            if chosen[key] is None and max(oof, real) <= bounds[key]:
                chosen[key] = float(t)
    for key, value in chosen.items():
        print(f"model.{key} (<= {bounds[key]}% benign at or above): {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
