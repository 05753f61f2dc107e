"""Choose the triage classifier's threshold by cross-validation on its training questions alone.

    PYTHONPATH=src python benchmarks/triage_model_cv.py [--max-false-alarm 3.0]

Prints recall and false-alarm rate of the classifier per threshold (5-fold, stratified) and the lowest
threshold whose false-alarm rate stays within the bound: that value goes to ``model.threshold`` in
``red_flags.yaml``. The held-out questions are not read.
"""

from __future__ import annotations

import argparse

import numpy as np
from sklearn.model_selection import StratifiedKFold

from qihuang.answer.triage import _default_rules
from qihuang.answer.triage_model import build, read_examples
from qihuang.kb.normalize import normalize


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-false-alarm", type=float, default=3.0, help="percent of benign questions")
    ap.add_argument("--c", type=float, default=4.0)
    args = ap.parse_args()
    rules = _default_rules(None)
    texts, labels = read_examples()
    texts = [rules.fix_typos(normalize(t)) for t in texts]
    y = np.array(labels)
    p_red = np.zeros(len(texts))
    for train, test in StratifiedKFold(5, shuffle=True, random_state=0).split(texts, y):
        model = build([texts[i] for i in train], list(y[train]), c=args.c)
        red_col = list(model.classes_).index(True)
        p_red[test] = model.predict_proba([texts[i] for i in test])[:, red_col]
    red, benign = y != "none", y == "none"
    chosen = None
    print(f"{len(texts)} questions ({red.sum()} red flags); threshold  recall%  false-alarm%")
    for t in np.arange(0.30, 0.96, 0.05):
        recall, fa = 100 * (p_red[red] >= t).mean(), 100 * (p_red[benign] >= t).mean()
        print(f"  {t:.2f}  {recall:6.2f}  {fa:6.2f}")
        if chosen is None and fa <= args.max_false_alarm:
            chosen = round(float(t), 2)
    print(f"lowest threshold with <= {args.max_false_alarm}% false alarms: {chosen}")


if __name__ == "__main__":
    main()
