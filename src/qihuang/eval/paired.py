"""Two runs side by side with the difference and a paired bootstrap confidence interval.

``compare_pair(base, tuned)`` takes two suite runs (``qihuang eval suite``) or two runs of one task, pairs
their predictions by example id (the same questions: same data, same ``--sample``/``--seed``) and, per
benchmark (and per subject if asked), reports both scores, the difference and its 95 % interval from
``n_boot`` paired bootstrap resamples (the same resampled questions score both runs). Over several
benchmarks of one metric, the mean of their differences gets an interval by resampling each benchmark
on its own (stratified).

A metric is recomputed from the prediction rows: ``accuracy`` from ``correct``, ``macro_f1`` from
``gold``/``pred``, and any metric that is also a per-row number (``rougeL``, ``rouge1``, ...) as its mean.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from qihuang.errors import InputError
from qihuang.eval.report import load_results
from qihuang.eval.select import group_by_subject

N_BOOT = 1000


def _values(rows: list[dict], metric: str) -> np.ndarray | None:
    """Per-row values whose mean is ``metric`` (accuracy in percent), or None."""
    if metric == "accuracy" and rows and all("correct" in r for r in rows):
        return np.array([100.0 * bool(r["correct"]) for r in rows])
    if rows and all(isinstance(r.get(metric), (int, float)) and not isinstance(r.get(metric), bool) for r in rows):
        return np.array([float(r[metric]) for r in rows])
    return None


def statistic(metric: str, rows: list[dict]) -> Callable[[list[int]], float] | None:
    """A function of resampled row indices -> the metric, or None when the rows cannot give it."""
    values = _values(rows, metric)
    if values is not None:
        return lambda idx: float(values[idx].mean())
    if metric == "macro_f1" and rows and all("gold" in r and "pred" in r for r in rows):
        from qihuang.eval.tasks.classify import f1_scores

        return lambda idx: f1_scores([rows[i] for i in idx])[0] or 0.0
    return None


def score_interval(task: str, metric: str, rows: list[dict], n_boot: int = N_BOOT, seed: int = 0) -> list | None:
    """95 % percentile bootstrap interval of one run's ``metric`` (None when the rows cannot give it)."""
    stat = statistic(metric, rows)
    if stat is None or not rows:
        return None
    rng = np.random.default_rng(seed)
    draws = [stat(rng.integers(0, len(rows), len(rows))) for _ in range(n_boot)]
    return [round(float(np.percentile(draws, 2.5)), 2), round(float(np.percentile(draws, 97.5)), 2)]


@dataclass
class PairRow:
    """One line of a comparison: a benchmark (or subject, or the mean over benchmarks)."""

    benchmark: str
    subject: str | None
    task: str
    method: str
    metric: str
    n: int
    base: float | None
    tuned: float | None
    delta: float | None
    ci95: list | None = None


@dataclass
class PairTable:
    """Base vs tuned, per benchmark: scores, difference, 95 % paired bootstrap interval."""

    base_label: str
    tuned_label: str
    rows: list[PairRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def cells(self) -> list[list[str]]:
        out = [["benchmark", "method", "metric", "n", self.base_label, self.tuned_label, "Δ", "95% CI of Δ"]]
        for r in self.rows:
            name = r.benchmark + (f" / {r.subject}" if r.subject else "")
            ci = f"[{r.ci95[0]:+.2f}, {r.ci95[1]:+.2f}]" if r.ci95 else "-"
            out.append([name, r.method, r.metric, str(r.n), _fmt(r.base), _fmt(r.tuned),
                        "-" if r.delta is None else f"{r.delta:+.2f}", ci])
        return out

    def format(self) -> str:
        from qihuang.eval.report import text_table

        return text_table(self.cells()) + "".join(f"\nnote: {n}" for n in self.notes)

    def to_markdown(self) -> str:
        from qihuang.eval.report import markdown_table

        return markdown_table(self.cells()) + "".join(f"\n\n{n}" for n in self.notes)

    def to_dict(self) -> dict:
        return {"base": self.base_label, "tuned": self.tuned_label, "notes": self.notes,
                "rows": [vars(r) for r in self.rows]}


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def _read_rows(run_dir: Path) -> dict[str, dict]:
    path = run_dir / "predictions.jsonl"
    if not path.is_file():
        raise InputError("no predictions.jsonl: the paired comparison needs each run's predictions", path=str(path))
    return {r["id"]: r for r in (json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip())}


@dataclass
class _Paired:
    name: str
    task: str
    method: str
    metric: str
    a: list[dict]
    b: list[dict]


def _pair_runs(name: str, dir_a: Path, dir_b: Path, task: str, method: str, metric: str,
               notes: list[str]) -> _Paired:
    ra, rb = _read_rows(dir_a), _read_rows(dir_b)
    ids = [i for i in ra if i in rb]
    if len(ids) < max(len(ra), len(rb)):
        notes.append(f"{name}: {len(ids)} questions in both runs ({len(ra)} and {len(rb)} in each); only "
                     "those are compared (use the same data, --sample and --seed)")
    return _Paired(name, task, method, metric, [ra[i] for i in ids], [rb[i] for i in ids])


def _diff_interval(pairs: list[_Paired], n_boot: int, seed: int) -> list | None:
    """Percentile interval of the mean (over ``pairs``) difference tuned - base, resampling each pair set."""
    stats = []
    for p in pairs:
        sa, sb = statistic(p.metric, p.a), statistic(p.metric, p.b)
        if sa is None or sb is None or not p.a:
            return None
        stats.append((sa, sb, len(p.a)))
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n_boot):
        total = 0.0
        for sa, sb, n in stats:
            idx = rng.integers(0, n, n)
            total += sb(idx) - sa(idx)
        draws.append(total / len(stats))
    return [round(float(np.percentile(draws, 2.5)), 2), round(float(np.percentile(draws, 97.5)), 2)]


def _scores(p: _Paired) -> tuple[float, float] | None:
    """Both runs' unrounded ``metric`` over all the paired questions (None when the rows cannot give it)."""
    sa, sb = statistic(p.metric, p.a), statistic(p.metric, p.b)
    if sa is None or sb is None or not p.a:
        return None
    every = list(range(len(p.a)))
    return sa(every), sb(every)


def _row(name: str, subject: str | None, pairs: list[_Paired], n_boot: int, seed: int) -> PairRow:
    """One line: the mean over ``pairs`` (one benchmark, or several of one metric) of each run's score."""
    first = pairs[0]
    scores = [_scores(p) for p in pairs]
    if any(s is None for s in scores):
        return PairRow(name, subject, first.task, first.method, first.metric, sum(len(p.a) for p in pairs),
                       None, None, None)
    base, tuned = (sum(s[k] for s in scores) / len(scores) for k in (0, 1))
    return PairRow(name, subject, first.task, first.method, first.metric, sum(len(p.a) for p in pairs),
                   round(base, 2), round(tuned, 2), round(tuned - base, 2), _diff_interval(pairs, n_boot, seed))


def _by_subject(p: _Paired) -> dict[str, _Paired]:
    """The pairs of each subject (by the base run's rows, which are paired with the tuned run's by id)."""
    tuned = {b["id"]: b for b in p.b}
    return {s: _Paired(p.name, p.task, p.method, p.metric, rows, [tuned[r["id"]] for r in rows])
            for s, rows in group_by_subject(p.a).items()}


def compare_pair(base: str | Path, tuned: str | Path, *, subjects: bool = False, n_boot: int = N_BOOT,
                 seed: int = 0, labels: tuple[str, str] | None = None) -> PairTable:
    """Paired comparison of two suite runs, or of two runs of one task (see the module docstring)."""
    dirs = [Path(base), Path(tuned)]
    dirs = [d.parent if d.name == "results.json" else d for d in dirs]
    res = [load_results(d) for d in dirs]
    names = labels or tuple(str(r.get("label") or d.name) for r, d in zip(res, dirs, strict=True))
    if names[0] == names[1]:
        names = (str(dirs[0]), str(dirs[1]))
    table = PairTable(names[0], names[1])
    pairs = _pairs(dirs, res, table.notes)
    for p in pairs:
        table.rows.append(_row(p.name, None, [p], n_boot, seed))
        if subjects:
            groups = _by_subject(p)
            if len(groups) > 1:
                table.rows += [_row(p.name, s, [g], n_boot, seed) for s, g in groups.items()]
    by_metric: dict[str, list[_Paired]] = {}
    for p in pairs:
        by_metric.setdefault(p.metric, []).append(p)
    for group in by_metric.values():
        if len(group) > 1:
            row = _row("mean of benchmarks", None, group, n_boot, seed)
            table.rows.append(PairRow(row.benchmark, None, "-", "-", row.metric, row.n, row.base, row.tuned,
                                      row.delta, row.ci95))
    return table


def _pairs(dirs: list[Path], res: list[dict], notes: list[str]) -> list[_Paired]:
    suites = ["benchmarks" in r and "suite" in r for r in res]
    if all(suites):
        a, b = res[0]["benchmarks"], res[1]["benchmarks"]
        common = [n for n in a if n in b]
        for n in sorted(set(a) ^ set(b)):
            notes.append(f"{n}: only in {'the first' if n in a else 'the second'} run; not compared")
        if not common:
            raise InputError("the two suite runs share no benchmark")
        out = []
        for n in common:
            if a[n]["method"] != b[n]["method"]:
                notes.append(f"{n}: scored with {a[n]['method']} and {b[n]['method']}; not comparable")
                continue
            out.append(_pair_runs(n, dirs[0] / a[n]["dir"], dirs[1] / b[n]["dir"], a[n]["task"], a[n]["method"],
                                  a[n]["metric"], notes))
        return out
    if any(suites):
        raise InputError("compare a suite run with a suite run, or a task run with a task run")
    if res[0].get("task") != res[1].get("task"):
        raise InputError(f"runs of different tasks ({res[0].get('task')} and {res[1].get('task')}) cannot be paired")
    method = res[0].get("details", {}).get("method") or "-"
    out = []
    for metric in res[0].get("headline") or []:
        p = _pair_runs(res[0]["task"], dirs[0], dirs[1], res[0]["task"], method, metric, notes if not out else [])
        if statistic(metric, p.a) is not None and statistic(metric, p.b) is not None:
            out.append(p)
    return out
