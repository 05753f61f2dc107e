"""Evaluation: tasks behind one interface (kbqa, mcq, openqa, judge), reports and comparisons.

    import qihuang.eval as ev
    results = ev.run("kbqa", "data/qihuang", answerer=answerer, kb=kb, out_dir="runs/kbqa")
    table = ev.compare(["runs/kbqa-plain", "runs/kbqa"], out_png="runs/compare.png")
    print(table)
"""

from qihuang.eval.base import (
    Dataset,
    Example,
    RunContext,
    Skipped,
    Task,
    TaskOption,
    get_task,
    make_task,
    register_task,
    task_names,
)
from qihuang.eval.report import ComparisonTable, compare, load_results
from qihuang.eval.runner import run

__all__ = [
    "ComparisonTable", "Dataset", "Example", "RunContext", "Skipped", "Task", "TaskOption", "compare",
    "get_task", "load_results", "make_task", "register_task", "run", "task_names",
]
