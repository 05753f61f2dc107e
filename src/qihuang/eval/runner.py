"""``qihuang.eval.run``: load a task's data, predict in batches (resumable), score, write the report.

Output directory:

* ``results.json``: scores, headline keys, details, skipped rows, config, model, data sha256, timings;
* ``predictions.jsonl``: one row per example (question, prediction, reference, per-example metrics);
* ``.partial/``: rows predicted so far and the run's fingerprint while a run is going (a run
  interrupted and started again with the same task, data, options and model picks up there).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qihuang import __version__
from qihuang.engines.base import Engine
from qihuang.errors import ConfigError, InputError
from qihuang.eval.base import Example, RunContext, Task, make_task
from qihuang.eval.dataio import sha256_of
from qihuang.fileio import atomic_write_json, atomic_write_jsonl
from qihuang.options import EvalOptions

log = logging.getLogger("qihuang.eval")
_SECRET = re.compile(r"(?:^|_)(?:key|token|secret|password)$", re.IGNORECASE)
MAX_SKIPPED_LISTED = 200


def run(task: str | Task | type[Task], data: str | Path, answerer_or_engine: Any = None,
        out_dir: str | Path | None = None, *, options: EvalOptions | None = None, answerer: Any = None,
        engine: Any = None, kb: Any = None, model_info: dict | None = None,
        engine_loader: Callable[[], Any] | None = None,
        answerer_factory: Callable[[Any, Any, bool | None], Any] | None = None, **kwargs: Any) -> dict:
    """Evaluate a model on ``data`` with ``task`` and write the report to ``out_dir``.

    Give an ``answerer`` (used for generation, so evaluation answers as the CLI/API do), an
    ``engine`` (an Answerer is built from it and ``kb`` when a task needs one; MCQ log-likelihood
    uses it directly), or both; a third positional argument is taken as an Engine when it keeps the
    :class:`~qihuang.engines.base.Engine` contract, else as an Answerer. ``options`` (:class:`qihuang.options.EvalOptions`: limit,
    batch_size, grounded, resume, progress, label) may also be given, or overridden, as keyword
    arguments; ``grounded`` overrides the Answerer's grounding (None: its default). The other
    keyword arguments are the task's options (see ``qihuang eval --help``).
    ``engine_loader`` (no arguments -> Engine) loads a model only when a task needs one;
    ``answerer_factory(engine, kb, grounded)`` builds the Answerer (default: ``Answerer(engine, kb)``).
    Returns the results dict, also written to ``out_dir/results.json``.
    """
    opts = EvalOptions.of(options, **{k: kwargs.pop(k) for k in list(kwargs) if k in EvalOptions.model_fields})
    task_options = kwargs
    if answerer_or_engine is not None:
        if isinstance(answerer_or_engine, Engine):
            engine = answerer_or_engine
        else:
            answerer = answerer_or_engine
    if out_dir is None:
        raise ConfigError("run() needs out_dir (where results.json and predictions.jsonl go)")
    limit, grounded, batch_size = opts.limit, opts.grounded, opts.batch_size
    started, t0 = _now(), time.perf_counter()
    task_obj = make_task(task, **task_options)
    data, out = Path(data), Path(out_dir)
    try:
        dataset = task_obj.load(data)
        dataset.skipped.sort(key=lambda s: (s.source, s.line))
        _report_skipped(dataset.skipped)
        examples = _unique_ids(dataset.examples[:limit] if limit else dataset.examples)
        if not examples:
            raise InputError(f"no usable {task_obj.name} examples ({len(dataset.skipped)} malformed rows skipped)",
                             path=str(data))
        ctx = RunContext(answerer=answerer, engine=engine, kb=kb, grounded=grounded, batch_size=batch_size,
                         engine_loader=engine_loader, answerer_factory=answerer_factory)
        needs_model = task_obj.needs_model(examples)
        if needs_model and not ctx.has_model:
            raise ConfigError(f"task {task_obj.name!r} needs a model: pass answerer= or engine=")
        task_obj.prepare(dataset, ctx)
        data_sha = sha256_of(data)
        model = {**ctx.model_info(), **(model_info or {})} if needs_model else {}
        config = {"task_options": _public(task_obj.config), "grounded": grounded, "limit": limit,
                  "batch_size": batch_size}
        t1 = time.perf_counter()
        rows, resumed = _predict_all(task_obj, examples, ctx, out, _fingerprint(task_obj.name, data_sha, config, model),
                                     resume=opts.resume, progress=opts.progress)
        t_predict = time.perf_counter() - t1
        agg = _aggregate(task_obj, rows)
    finally:
        task_obj.close()
    results = {
        "task": task_obj.name, "label": opts.label or out.name, "scores": agg["scores"],
        "headline": [k for k in task_obj.headline if agg["scores"].get(k) is not None],
        "details": agg.get("details", {}), "notes": agg.get("notes", []),
        "n_skipped": len(dataset.skipped), "skipped": [s.to_dict() for s in dataset.skipped[:MAX_SKIPPED_LISTED]],
        "config": config, "model": model, "kb": _kb_info(ctx.kb),
        "data": {"path": str(data), "sha256": data_sha, "n_examples": len(dataset.examples),
                 "n_evaluated": len(examples)},
        "timings": _timings(started, t0, t_predict, len(examples), resumed), "qihuang_version": __version__,
    }
    atomic_write_jsonl(out / "predictions.jsonl", rows)
    atomic_write_json(out / "results.json", results)
    _clear_partial(out)
    return results


def _aggregate(task: Task, rows: list[dict]) -> dict:
    agg = task.aggregate(rows)
    if any(r.get("refused") for r in rows):  # refusals of harmful requests are the Answerer's, not the model's
        agg["scores"]["refused_rate"] = round(100 * sum(bool(r.get("refused")) for r in rows) / len(rows), 2)
    return agg


def _timings(started: str, t0: float, t_predict: float, n: int, resumed: int) -> dict:
    return {"started_at": started, "finished_at": _now(), "seconds_total": round(time.perf_counter() - t0, 3),
            "seconds_predict": round(t_predict, 3), "resumed_examples": resumed,
            "seconds_per_example": round(t_predict / max(1, n - resumed), 4)}


def _predict_all(task: Task, examples: list[Example], ctx: RunContext, out: Path, fingerprint: str, *,
                 resume: bool, progress: bool) -> tuple[list[dict], int]:
    """Prediction rows in example order; rows saved by an interrupted run with the same fingerprint are reused."""
    from tqdm.auto import tqdm

    done = _load_partial(out, fingerprint) if resume else {}
    if not resume:
        _clear_partial(out)
    wanted = {ex.id for ex in examples}
    done = {k: v for k, v in done.items() if k in wanted}
    todo = [ex for ex in examples if ex.id not in done]
    partial = out / ".partial"
    partial.mkdir(parents=True, exist_ok=True)
    atomic_write_json(partial / "state.json", {"fingerprint": fingerprint})
    bar = tqdm(total=len(examples), initial=len(done), desc=f"eval {task.name}", unit="ex", disable=not progress)
    with open(partial / "predictions.jsonl", "a", encoding="utf-8") as fh, bar:
        for i in range(0, len(todo), ctx.batch_size):
            batch = todo[i:i + ctx.batch_size]
            rows = task.predict(batch, ctx)
            if len(rows) != len(batch):
                raise RuntimeError(f"task {task.name!r} returned {len(rows)} rows for {len(batch)} examples")
            for row in rows:
                done[row["id"]] = row
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            fh.flush()
            bar.update(len(batch))
    return [done[ex.id] for ex in examples], len(examples) - len(todo)


def _load_partial(out: Path, fingerprint: str) -> dict[str, dict]:
    state, preds = out / ".partial" / "state.json", out / ".partial" / "predictions.jsonl"
    try:
        if json.loads(state.read_text(encoding="utf-8")).get("fingerprint") != fingerprint:
            _clear_partial(out)
            return {}
    except (OSError, ValueError):
        return {}
    rows: dict[str, dict] = {}
    if preds.exists():
        for line in preds.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by the interruption
                continue
            rows[row["id"]] = row
    if rows:
        log.info("resuming: %d predictions from an earlier run", len(rows))
    return rows


def _clear_partial(out: Path) -> None:
    partial = out / ".partial"
    for name in ("predictions.jsonl", "state.json"):
        (partial / name).unlink(missing_ok=True)
    if partial.is_dir() and not any(partial.iterdir()):
        partial.rmdir()


def _unique_ids(examples: list[Example]) -> list[Example]:
    seen: dict[str, int] = {}
    for ex in examples:
        n = seen.get(ex.id, 0)
        seen[ex.id] = n + 1
        if n:
            ex.id = f"{ex.id}#{n}"
    return examples


def _report_skipped(skipped: list) -> None:
    for s in skipped[:10]:
        log.warning("skipped malformed row %s", s)
    if len(skipped) > 10:
        log.warning("... and %d more malformed rows (listed in results.json)", len(skipped) - 10)


def _public(config: dict) -> dict:
    return {k: ("***" if _SECRET.search(k) and v else v) for k, v in config.items()}


def _fingerprint(task: str, data_sha: str, config: dict, model: dict) -> str:
    key = {"task": task, "data": data_sha, "options": config["task_options"], "grounded": config["grounded"],
           "model": model}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _kb_info(kb: Any) -> dict | None:
    if kb is None:
        return None
    path = getattr(kb, "path", None)
    return {"path": str(path) if path is not None else None}


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
