"""Comparing evaluation runs: a side-by-side table and a bar chart (matplotlib, Agg backend)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

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
        rows = self.rows()
        widths = [max(_width(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = []
        for j, r in enumerate(rows):
            cells = [c + " " * (w - _width(c)) if i == 0 else " " * (w - _width(c)) + c
                     for i, (c, w) in enumerate(zip(r, widths, strict=True))]
            lines.append("  ".join(cells).rstrip())
            if j == 0:
                lines.append("  ".join("-" * w for w in widths))
        return "\n".join(lines)

    def to_markdown(self) -> str:
        rows = self.rows()
        md = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
        md += ["| " + " | ".join(r) + " |" for r in rows[1:]]
        return "\n".join(md)

    def to_dict(self) -> dict:
        return {"runs": self.runs, "tasks": self.tasks, "metrics": self.metrics, "values": self.values}

    def __str__(self) -> str:
        return self.format()


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
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    metrics = [m for m in table.metrics if any(v is not None for v in table.values[m])]
    if not metrics:
        raise InputError("nothing to plot: the runs share no numeric scores")
    cjk = _cjk_fonts()
    labels = [r if r.isascii() or cjk else r.encode("ascii", "backslashreplace").decode() for r in table.runs]
    ncols = min(4, len(metrics))
    nrows = math.ceil(len(metrics) / ncols)
    with matplotlib.rc_context({"font.family": "sans-serif", "font.sans-serif": ["DejaVu Sans", *cjk]}):
        fig = Figure(figsize=(3.2 * ncols + 0.4, 2.8 * nrows + 0.8), layout="constrained")
        FigureCanvasAgg(fig)
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
        out = Path(out_png)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp.png")
        fig.savefig(tmp, dpi=120)
    tmp.replace(out)
    return out


_CJK_HINTS = ("CJK", "WenQuanYi", "Heiti", "SimHei", "SimSun", "Source Han", "Noto Sans SC", "Microsoft YaHei")


def _cjk_fonts() -> list[str]:
    """Installed font families able to draw Chinese run labels (may be empty)."""
    from matplotlib import font_manager

    return sorted({f.name for f in font_manager.fontManager.ttflist if any(h in f.name for h in _CJK_HINTS)})
