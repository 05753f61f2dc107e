"""Benchmark suites: named sets of published benchmarks run as one (``resources/eval_suites.yaml``).

``run_suite("medical-mcq", data_dir, out_dir, ...)`` finds each benchmark's files under the user's
``data_dir`` (nothing is fetched), runs its task through :func:`qihuang.eval.runner.run` into
``out_dir/<benchmark>/`` (resumable: a finished benchmark with the same data, options and model is
not run again, an interrupted one picks up its predictions) and writes

* ``results.json``: every benchmark's headline score with its scoring method, n, skipped rows, a 95 %
  bootstrap interval, seconds per 100 questions and per-subject scores; the benchmarks not found;
* ``results.jsonl``: one line per benchmark and per benchmark/subject (for other tools);
* ``report.md`` (tables) and ``suite.png`` (the scores with their intervals);
* per benchmark, beside ``results.json``/``predictions.jsonl``, LLaMA-Factory's
  ``generated_predictions.jsonl`` (``prompt``, ``label``, ``predict``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from qihuang import __version__
from qihuang.errors import ConfigError, InputError
from qihuang.eval.base import builtin_task_names, get_task
from qihuang.eval.dataio import sha256_of
from qihuang.eval.shapes import read_resource, validated
from qihuang.fileio import atomic_write_json, atomic_write_jsonl, atomic_write_text
from qihuang.options import EvalOptions

log = logging.getLogger("qihuang.eval")
KEY_FILE = ".suite_key"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Benchmark(_Strict):
    """One benchmark of the registry (see the comments of ``resources/eval_suites.yaml``)."""

    task: str
    summary: str = Field(min_length=1)
    data: tuple[str, ...] = Field(min_length=1)
    fewshot: tuple[str, ...] = ()
    answers: tuple[str, ...] = ()
    subjects: tuple[str, ...] = ()
    exclude_subjects: tuple[str, ...] = ()
    options: dict[str, Any] = {}

    @model_validator(mode="after")
    def _check(self) -> Benchmark:
        if self.task not in builtin_task_names():
            raise ValueError(f"unknown task {self.task!r}; built-in: {', '.join(builtin_task_names())}")
        known = {o.name for o in get_task(self.task).options}
        wanted = set(self.options)
        wanted |= {"fewshot_data"} if self.fewshot else set()
        wanted |= {"answers"} if self.answers else set()
        wanted |= {"subjects"} if self.subjects or self.exclude_subjects else set()
        unknown = sorted(wanted - known)
        if unknown:
            raise ValueError(f"task {self.task!r} has no option(s) {unknown}")
        return self


class Suite(_Strict):
    summary: str = Field(min_length=1)
    benchmarks: tuple[str, ...] = Field(min_length=1)


class SuiteRegistry(_Strict):
    subject_groups: dict[str, tuple[str, ...]] = {}
    benchmarks: dict[str, Benchmark]
    suites: dict[str, Suite]

    @model_validator(mode="after")
    def _refs(self) -> SuiteRegistry:
        for name, suite in self.suites.items():
            unknown = [b for b in suite.benchmarks if b not in self.benchmarks]
            if unknown:
                raise ValueError(f"suite {name!r} names unknown benchmark(s) {unknown}")
        clash = sorted(set(self.suites) & set(self.benchmarks))
        if clash:
            raise ValueError(f"{clash}: a name is either a suite or a benchmark")
        return self


def parse_registry(raw: object, where: str = "eval_suites.yaml") -> SuiteRegistry:
    """Validate the parsed YAML (errors name the file and field)."""
    return validated(SuiteRegistry, raw, where, "benchmark suites")


@lru_cache(maxsize=1)
def registry() -> SuiteRegistry:
    """The shipped suites and benchmarks, validated once."""
    return parse_registry(*read_resource("eval_suites.yaml"))


def subject_groups() -> dict[str, tuple[str, ...]]:
    return dict(registry().subject_groups)


def benchmarks_of(name: str) -> list[str]:
    """The benchmarks of a suite, or of a comma-separated list of benchmark names."""
    reg = registry()
    if name in reg.suites:
        return list(reg.suites[name].benchmarks)
    names = [n.strip() for n in name.split(",") if n.strip()]
    unknown = [n for n in names if n not in reg.benchmarks]
    if not names or unknown:
        raise ConfigError(f"unknown suite or benchmark {', '.join(unknown) or name!r}; suites: "
                          f"{', '.join(reg.suites)}; benchmarks: {', '.join(reg.benchmarks)}")
    return names


# ---------------------------------------------------------------- finding the files


@dataclass
class Located:
    """Where a benchmark's files are (``data`` None: not found; ``tried`` lists the paths looked at)."""

    data: Path | None
    fewshot: Path | None
    answers: Path | None
    tried: list[str]


def locate(bench: Benchmark, data_dir: Path, override: str | None = None) -> Located:
    """The first existing candidate of each of the benchmark's paths under ``data_dir``."""
    def first(candidates: tuple[str, ...]) -> Path | None:
        return next((data_dir / c for c in candidates if (data_dir / c).exists()), None)

    if override is not None:
        data = Path(override).expanduser()
        if not data.exists():
            raise InputError("no such file or directory (--bench-data)", path=str(data))
        tried = [str(data)]
    else:
        data, tried = first(bench.data), [str(data_dir / c) for c in bench.data]
    answers = first(bench.answers) if bench.answers else None
    if data is not None and bench.answers and answers is None:
        data, tried = None, tried + [f"answers: {data_dir / c}" for c in bench.answers]
    return Located(data, first(bench.fewshot), answers, tried)


# ---------------------------------------------------------------- running


@dataclass
class SuiteSettings:
    """What applies to every benchmark of a run."""

    method: str | None = None  # loglik | generate (tasks that have the option)
    shots: int = 0
    sample: int | None = None
    seed: int = 0
    only: tuple[str, ...] = ()
    skip_missing: bool = False
    bench_data: dict[str, str] | None = None
    task_options: dict[str, Any] | None = None  # applied to the benchmarks whose task has the option


def task_options(name: str, bench: Benchmark, where: Located, settings: SuiteSettings) -> dict[str, Any]:
    """The task options of one benchmark in this run."""
    known = {o.name for o in get_task(bench.task).options}
    opts: dict[str, Any] = dict(bench.options)
    if bench.subjects:
        opts["subjects"] = ",".join(bench.subjects)
    if bench.exclude_subjects:
        opts["exclude_subjects"] = ",".join(bench.exclude_subjects)
    if where.answers is not None:
        opts["answers"] = str(where.answers)
    extra = {"method": settings.method, "sample": settings.sample,
             "seed": settings.seed if settings.sample else None, **(settings.task_options or {})}
    if settings.shots:
        extra["shots"] = settings.shots
        extra["fewshot_data"] = str(where.fewshot) if where.fewshot is not None else None
    opts.update({k: v for k, v in extra.items() if v is not None and k in known})
    if settings.shots and "shots" not in known:
        log.info("%s: task %s takes no few-shot examples; --shots ignored", name, bench.task)
    return opts


def run_suite(name: str, data_dir: str | Path, out_dir: str | Path, *, settings: SuiteSettings | None = None,
              options: EvalOptions | None = None, engine_loader: Callable[[], Any] | None = None,
              answerer_factory: Callable[..., Any] | None = None, kb: Any = None, model_info: dict | None = None,
              engine: Any = None, answerer: Any = None) -> dict:
    """Run a suite (or comma-separated benchmarks) and write its report to ``out_dir``; returns results.json."""
    from qihuang.eval.report import write_generated_predictions
    from qihuang.eval.runner import run

    settings = settings or SuiteSettings()
    opts = EvalOptions.of(options)
    reg, data_dir, out = registry(), Path(data_dir).expanduser(), Path(out_dir)
    if not data_dir.is_dir():
        raise InputError("--data-dir: not a directory", path=str(data_dir))
    names = benchmarks_of(name)
    if settings.only:
        names = [n for n in names if n in settings.only]
        if not names:
            raise ConfigError(f"--only {','.join(settings.only)}: none of them is in {name!r}")
    located = {n: locate(reg.benchmarks[n], data_dir, (settings.bench_data or {}).get(n)) for n in names}
    missing = {n: loc.tried for n, loc in located.items() if loc.data is None}
    if missing and not settings.skip_missing:
        lines = "; ".join(f"{n}: looked for {', '.join(t)}" for n, t in missing.items())
        raise InputError(f"benchmark files not found under {data_dir} ({lines}). Download them (see README, "
                         "Evaluation), point one elsewhere with --bench-data NAME=PATH, or pass --skip-missing")
    todo = [n for n in names if n not in missing]
    if not todo:
        raise InputError(f"none of the benchmarks of {name!r} was found", path=str(data_dir))
    if engine is None and answerer is None and engine_loader is not None:
        engine = engine_loader()  # loaded once, before any timing: seconds per question exclude the load
    scorer = engine if engine is not None else getattr(answerer, "engine", None)
    model_key = {**(model_info or {}), "engine": getattr(scorer, "model_name", None)}
    started, t0 = time.strftime("%Y-%m-%dT%H:%M:%S%z"), time.perf_counter()
    summaries: dict[str, dict] = {}
    for i, bench_name in enumerate(todo, 1):
        bench, where = reg.benchmarks[bench_name], located[bench_name]
        task_opts = task_options(bench_name, bench, where, settings)
        bench_out = out / bench_name
        key = _run_key(bench.task, where, task_opts, opts, model_key)
        print(f"[{i}/{len(todo)}] {bench_name} ({bench.task}): {where.data}", file=sys.stderr)
        results = _finished(bench_out, key) if opts.resume else None
        reused = results is not None
        if results is None:
            bench_opts = opts.model_copy(update={"label": f"{opts.label or out.name}/{bench_name}"})
            results = run(bench.task, where.data, out_dir=bench_out, options=bench_opts, engine=engine,
                          answerer=answerer, kb=kb, engine_loader=engine_loader,
                          answerer_factory=answerer_factory, model_info=model_info, **task_opts)
            atomic_write_text(bench_out / KEY_FILE, key)
        write_generated_predictions(bench_out)
        summaries[bench_name] = summarize(bench_name, bench, results, bench_out, reused)
    suite_results = {
        "suite": name, "label": opts.label or out.name, "benchmarks": summaries,
        "missing": missing, "data_dir": str(data_dir), "model": model_info or {},
        "config": {"method": settings.method, "shots": settings.shots, "sample": settings.sample,
                   "seed": settings.seed, "grounded": opts.grounded, "limit": opts.limit},
        "timings": {"started_at": started, "seconds_total": round(time.perf_counter() - t0, 3)},
        "qihuang_version": __version__,
    }
    write_suite_outputs(suite_results, out)
    return suite_results


def _run_key(task: str, where: Located, task_opts: dict, opts: EvalOptions, model_info: dict) -> str:
    key = {"task": task, "data": sha256_of(where.data), "answers": sha256_of(where.answers) if where.answers else None,
           "fewshot": str(where.fewshot) if task_opts.get("fewshot_data") else None, "options": task_opts,
           "grounded": opts.grounded, "limit": opts.limit, "model": model_info}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _finished(bench_out: Path, key: str) -> dict | None:
    """The results of a finished run of this benchmark with the same key, if there is one."""
    try:
        if (bench_out / KEY_FILE).read_text(encoding="utf-8").strip() != key:
            return None
        return json.loads((bench_out / "results.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------- summaries

HEADLINE = {"mcq": "accuracy", "classify": "accuracy", "benchqa": "rougeL"}


def summarize(name: str, bench: Benchmark, results: dict, bench_out: Path, reused: bool) -> dict:
    """One benchmark's line of the suite: headline score, method, n, interval, timing, subjects."""
    from qihuang.eval.paired import score_interval

    metric = HEADLINE.get(bench.task) or (results.get("headline") or ["n"])[0]
    details = results.get("details", {})
    rows = [json.loads(x) for x in (bench_out / "predictions.jsonl").read_text(encoding="utf-8").splitlines() if x]
    per_ex = results.get("timings", {}).get("seconds_per_example")
    return {
        "task": bench.task, "method": details.get("method", "generate"), "metric": metric,
        "score": results["scores"].get(metric), "ci95": score_interval(bench.task, metric, rows),
        "scores": results["scores"], "n": results["data"]["n_evaluated"], "n_skipped": results["n_skipped"],
        "seconds_per_100": round(100 * per_ex, 2) if per_ex is not None else None,
        "by_subject": details.get("by_subject", {}), "notes": results.get("notes", []),
        "data": results["data"]["path"], "dir": name, "reused": reused,
    }


def result_lines(suite_results: dict) -> list[dict]:
    """``results.jsonl``: one line per benchmark, then one per benchmark/subject."""
    lines = []
    base = {"suite": suite_results["suite"], "label": suite_results["label"]}
    for name, s in suite_results["benchmarks"].items():
        lines.append({**base, "benchmark": name, "subject": None, "task": s["task"], "method": s["method"],
                      "metric": s["metric"], "score": s["score"], "ci95": s["ci95"], "n": s["n"],
                      "n_skipped": s["n_skipped"], "seconds_per_100": s["seconds_per_100"]})
        if len(s["by_subject"]) > 1:
            for subject, v in s["by_subject"].items():
                lines.append({**base, "benchmark": name, "subject": subject, "task": s["task"], "method": s["method"],
                              "metric": s["metric"], "score": v.get(s["metric"]), "n": v.get("n")})
    return lines


def write_suite_outputs(suite_results: dict, out: Path) -> None:
    from qihuang.eval.report import plot_suite, suite_markdown

    atomic_write_json(out / "results.json", suite_results)
    atomic_write_jsonl(out / "results.jsonl", result_lines(suite_results))
    atomic_write_text(out / "report.md", suite_markdown(suite_results))
    plot_suite(suite_results, out / "suite.png")


def describe_registry() -> str:
    """The suites and benchmarks with where each benchmark's files are looked for."""
    reg = registry()
    lines = ["suites:"]
    lines += [f"  {n:16s} {', '.join(s.benchmarks)}  ({s.summary})" for n, s in reg.suites.items()]
    lines.append("benchmarks (task; paths looked for under --data-dir):")
    for n, b in reg.benchmarks.items():
        lines.append(f"  {n:16s} {b.task}: {b.summary}")
        lines.append(f"  {'':16s}   {' | '.join(b.data)}")
    return "\n".join(lines)
