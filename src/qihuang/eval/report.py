"""Comparing evaluation runs: a side-by-side table and a bar chart (matplotlib, Agg backend)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qihuang.errors import InputError


LOWER_IS_BETTER = frozenset({"hallucination_rate", "hallucinated_entities_mean", "unparsed_rate", "judge_failed",
                             "wrong_attribute_rate", "draft_hallucination_rate", "draft_wrong_attribute_rate"})


@dataclass
class ComparisonTable:
    """Scores of several runs side by side: ``values[metric][i]`` is run ``runs[i]``'s score."""

    runs: list[str]
    tasks: list[str]
    metrics: list[str]
    values: dict[str, list[float | None]] = field(default_factory=dict)

    def rows(self) -> list[list[str]]:
        """Header row then one row per metric, values formatted for display."""
        out = [["metric", *self.runs]]
        for m in self.metrics:
            out.append([m, *(_fmt(v) for v in self.values[m])])
        return out

    def format(self) -> str:
        """A plain-text table (CJK characters counted as two columns wide)."""
        return text_table(self.rows())

    def to_markdown(self) -> str:
        return markdown_table(self.rows())

    def to_dict(self) -> dict:
        return {"runs": self.runs, "tasks": self.tasks, "metrics": self.metrics, "values": self.values}

    def __str__(self) -> str:
        return self.format()


def text_table(rows: list[list[str]]) -> str:
    """Rows of cells (the first is the header) as aligned plain text; CJK characters count two columns."""
    widths = [max(_width(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for j, r in enumerate(rows):
        cells = [c + " " * (w - _width(c)) if i == 0 else " " * (w - _width(c)) + c
                 for i, (c, w) in enumerate(zip(r, widths, strict=True))]
        lines.append("  ".join(cells).rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(rows: list[list[str]]) -> str:
    """Rows of cells (the first is the header) as a Markdown table."""
    md = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    md += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return "\n".join(md)


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.2f}" if isinstance(v, float) and not float(v).is_integer() else f"{v:g}"


def _width(s: str) -> int:
    return sum(2 if ord(c) > 0x2E80 else 1 for c in s)


def load_results(run: str | Path) -> dict:
    """``results.json`` of a run directory (or the file itself)."""
    path = Path(run)
    if path.is_dir():
        path = path / "results.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError("no results.json: not an evaluation run directory", path=str(path)) from None
    except json.JSONDecodeError as exc:
        raise InputError(f"invalid JSON: {exc.msg}", path=str(path), line=exc.lineno) from None


def _labels(runs: list[str | Path], results: list[dict]) -> list[str]:
    labels = [str(r.get("label") or Path(p).name) for p, r in zip(runs, results, strict=True)]
    if len(set(labels)) < len(labels):  # fall back to the paths when labels collide
        labels = [str(Path(p)) for p in runs]
    return labels


def compare(run_dirs: list[str | Path], out_png: str | Path | None = None,
            metrics: list[str] | None = None) -> ComparisonTable:
    """Side-by-side scores of runs (their headline metrics, in order, unless ``metrics`` is given);
    writes a bar chart to ``out_png`` when given."""
    if not run_dirs:
        raise InputError("compare needs at least one run directory")
    results = [load_results(r) for r in run_dirs]
    if metrics is None:
        metrics = []
        for r in results:
            metrics += [k for k in r.get("headline") or sorted(r.get("scores", {})) if k not in metrics]
    table = ComparisonTable(runs=_labels(run_dirs, results), tasks=[r.get("task", "?") for r in results],
                            metrics=list(metrics))
    for m in table.metrics:
        table.values[m] = [_number(r.get("scores", {}).get(m)) for r in results]
    if out_png is not None:
        plot(table, out_png)
    return table


def _number(v) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def plot(table: ComparisonTable, out_png: str | Path) -> Path:
    """A bar chart: one panel per metric, one bar per run (panels keep each metric's own scale)."""
    from matplotlib.patches import Patch

    metrics = [m for m in table.metrics if any(v is not None for v in table.values[m])]
    if not metrics:
        raise InputError("nothing to plot: the runs share no numeric scores")
    ncols = min(4, len(metrics))
    nrows = math.ceil(len(metrics) / ncols)
    with _figure(out_png, 3.2 * ncols + 0.4, 2.8 * nrows + 0.8) as (fig, ascii_label):
        labels = [ascii_label(r) for r in table.runs]
        colors = [f"C{i % 10}" for i in range(len(table.runs))]
        axes = fig.subplots(nrows, ncols, squeeze=False)
        for ax, m in zip(axes.flat, metrics, strict=False):
            vals = [0.0 if v is None else v for v in table.values[m]]
            bars = ax.bar(range(len(vals)), vals, color=colors)
            ax.bar_label(bars, labels=[_fmt(v) for v in table.values[m]], fontsize=7)
            ax.set_title(m + (" (lower is better)" if m in LOWER_IS_BETTER else ""), fontsize=9)
            ax.set_xticks([])
            ax.margins(y=0.15)
        for ax in list(axes.flat)[len(metrics):]:
            ax.set_visible(False)
        fig.legend(handles=[Patch(color=c, label=lb) for c, lb in zip(colors, labels, strict=True)],
                   loc="outside lower center", ncols=min(4, len(labels)), fontsize=8)
        fig.suptitle("qihuang eval: " + ", ".join(sorted(set(table.tasks))), fontsize=10)
    return Path(out_png)


@contextmanager
def _figure(out_png: str | Path, width: float, height: float) -> Iterator[tuple[Any, Callable[[str], str]]]:
    """A matplotlib Figure (Agg, no pyplot state) saved atomically to ``out_png`` when the block ends; also
    yields a function that makes a label drawable (Chinese kept only where a CJK font is installed)."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cjk = _cjk_fonts()

    def drawable(label: str) -> str:
        return label if label.isascii() or cjk else label.encode("ascii", "backslashreplace").decode()

    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.png")
    with matplotlib.rc_context({"font.family": "sans-serif", "font.sans-serif": ["DejaVu Sans", *cjk]}):
        fig = Figure(figsize=(width, height), layout="constrained")
        FigureCanvasAgg(fig)
        yield fig, drawable
        fig.savefig(tmp, dpi=120)
    tmp.replace(out)


_CJK_HINTS = ("CJK", "WenQuanYi", "Heiti", "SimHei", "SimSun", "Source Han", "Noto Sans SC", "Microsoft YaHei")


def _cjk_fonts() -> list[str]:
    """Installed font families able to draw Chinese run labels (may be empty)."""
    from matplotlib import font_manager

    return sorted({f.name for f in font_manager.fontManager.ttflist if any(h in f.name for h in _CJK_HINTS)})


# ---------------------------------------------------------------- predictions for other tools


def write_generated_predictions(run_dir: str | Path) -> Path:
    """``generated_predictions.jsonl`` beside a run's ``predictions.jsonl``, in LLaMA-Factory's shape:
    ``prompt`` (what was asked), ``label`` (the gold letters/label/reference), ``predict`` (the answer)."""
    from qihuang.fileio import atomic_write_jsonl

    run_dir = Path(run_dir)
    rows = [json.loads(x) for x in (run_dir / "predictions.jsonl").read_text(encoding="utf-8").splitlines() if x]
    out = [{"prompt": r.get("question", ""), "label": str(r["gold"]) if r.get("gold") is not None else
            (r.get("reference") or ""), "predict": r.get("prediction") or ""} for r in rows]
    return atomic_write_jsonl(run_dir / "generated_predictions.jsonl", out)


# ---------------------------------------------------------------- suites


def _fixed(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _ci(ci: list | None) -> str:
    return f"[{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "-"


def suite_rows(suite_results: dict) -> list[list[str]]:
    """The per-benchmark table of a suite run (header first)."""
    rows = [["benchmark", "task", "method", "metric", "n", "score", "95% CI", "skipped", "s / 100 q"]]
    for name, s in suite_results["benchmarks"].items():
        rows.append([name, s["task"], s["method"], s["metric"], str(s["n"]), _fixed(s["score"]), _ci(s["ci95"]),
                     str(s["n_skipped"]), _fixed(s["seconds_per_100"], 0)])
    return rows


def suite_markdown(suite_results: dict) -> str:
    """``report.md`` of a suite run: the benchmark table, per-subject tables, missing benchmarks, notes."""
    cfg, model = suite_results["config"], suite_results.get("model") or {}
    who = ", ".join(f"{k}: {v}" for k, v in model.items() if v is not None) or "-"
    sample = f"a seeded sample of {cfg['sample']} per benchmark (seed {cfg['seed']})" if cfg.get("sample") else "all"
    md = [f"# qihuang eval suite `{suite_results['suite']}` ({suite_results['label']})", "",
          f"Model: {who}. Questions: {sample}; shots: {cfg.get('shots') or 0}; scoring method per benchmark in "
          "the table (loglik: option/label log-likelihood; generate: the answer read from generated text, "
          "unreadable answers counted apart, never guessed). 95% CI: percentile bootstrap over the questions.", "",
          markdown_table(suite_rows(suite_results))]
    for name, s in suite_results["benchmarks"].items():
        if len(s["by_subject"]) > 1:
            metric = s["metric"]
            rows = [["subject", "n", metric]] + [[sub, str(v.get("n")), _fixed(v.get(metric))]
                                                 for sub, v in s["by_subject"].items()]
            md += ["", f"## {name}: per subject", "", markdown_table(rows)]
        unparsed = s["scores"].get("n_unparsed")
        if unparsed:
            md += ["", f"{name}: {unparsed} generated answers could not be read (counted wrong, never guessed)."]
        md += [f"{name}: {n}" for n in s.get("notes", [])]
    for name, tried in suite_results.get("missing", {}).items():
        md += ["", f"Not run: {name} (looked for {', '.join(tried)})."]
    return "\n".join(md) + "\n"


def plot_suite(suite_results: dict, out_png: str | Path) -> Path:
    """Horizontal bars: each benchmark's score with its 95 % interval, labelled with method and n."""
    items = [(n, s) for n, s in suite_results["benchmarks"].items() if s["score"] is not None]
    if not items:
        raise InputError("nothing to plot: no benchmark has a score")
    with _figure(out_png, 7.0, 0.5 * len(items) + 1.4) as (fig, drawable):
        ax = fig.subplots()
        ys = list(range(len(items)))[::-1]
        vals = [s["score"] for _, s in items]
        err = [[v - (s["ci95"] or [v, v])[0] for v, (_, s) in zip(vals, items, strict=True)],
               [(s["ci95"] or [v, v])[1] - v for v, (_, s) in zip(vals, items, strict=True)]]
        ax.barh(ys, vals, xerr=err, color="C0", capsize=3)
        ax.set_yticks(ys, [drawable(f"{n} ({s['method']}, n={s['n']}, {s['metric']})") for n, s in items],
                      fontsize=8)
        ax.set_xlabel("score (95% CI)")
        fig.suptitle(drawable(f"qihuang eval suite {suite_results['suite']}: {suite_results['label']}"), fontsize=10)
    return Path(out_png)


def plot_pairs(table: Any, out_png: str | Path) -> Path:
    """Base and tuned bars per benchmark of a :class:`qihuang.eval.paired.PairTable` (subject lines left to the
    table), with the difference and its interval written beside them."""
    rows = [r for r in table.rows if r.base is not None and r.tuned is not None and not r.subject]
    if not rows:
        raise InputError("nothing to plot: no benchmark has scores in both runs")
    with _figure(out_png, 9.0, 0.7 * len(rows) + 1.6) as (fig, drawable):
        ax = fig.subplots()
        ys = [2.5 * i for i in range(len(rows))][::-1]
        ax.barh([y + 0.45 for y in ys], [r.base for r in rows], height=0.9, color="C7",
                label=drawable(table.base_label))
        bars = ax.barh([y - 0.45 for y in ys], [r.tuned for r in rows], height=0.9, color="C0",
                       label=drawable(table.tuned_label))
        ax.bar_label(bars, labels=[f"Δ {r.delta:+.2f} {_ci(r.ci95)}" for r in rows], fontsize=7, padding=2)
        names = [r.benchmark + (f" / {r.subject}" if r.subject else "") + f" ({r.metric})" for r in rows]
        ax.set_yticks(ys, [drawable(n) for n in names], fontsize=8)
        ax.set_xlim(0, 1.6 * max([r.base for r in rows] + [r.tuned for r in rows] + [1e-9]))
        ax.legend(fontsize=8, loc="lower right")
        fig.suptitle("qihuang eval compare: difference with 95% paired bootstrap interval", fontsize=10)
    return Path(out_png)
