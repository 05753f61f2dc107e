"""The evaluation task interface and the task registry.

A task turns a data file into :class:`Example` objects, produces one prediction row per
example (usually by asking the :class:`~qihuang.answer.answerer.Answerer`, so evaluation
answers exactly as the CLI and the API do) and aggregates the rows into scores.

Built-in tasks are listed as data in ``resources/eval_tasks.yaml`` (name -> ``module:Class``).
Users add their own task with :func:`register_task`, with an entry point in the group
``qihuang.eval_tasks``, or by passing ``module:Class`` wherever a task name is expected.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

from qihuang.errors import ConfigError
from qihuang.paths import resource


@dataclass(frozen=True)
class TaskOption:
    """One task option; the CLI exposes it as ``--NAME`` (underscores become dashes)."""

    name: str
    type: type = str
    default: Any = None
    help: str = ""
    choices: tuple | None = None

    def convert(self, value: Any) -> Any:
        """Coerce a value (possibly a CLI string) to the option's type, checking choices."""
        if value is None:
            return None
        try:
            if self.type is bool and isinstance(value, str):
                lowered = value.strip().lower()
                if lowered not in {"1", "0", "true", "false", "yes", "no"}:
                    raise ValueError(value)
                value = lowered in {"1", "true", "yes"}
            else:
                value = self.type(value)
        except (TypeError, ValueError):
            raise ConfigError(f"task option {self.name!r}: expected {self.type.__name__}, got {value!r}") from None
        if self.choices is not None and value not in self.choices:
            raise ConfigError(f"task option {self.name!r}: {value!r} is not one of {list(self.choices)}")
        return value


@dataclass
class Example:
    """One evaluation item.

    ``fields`` carries what a task needs beyond the question (options, gold answer,
    knowledge triples, ...). ``source``/``line`` say where the item came from.
    """

    id: str
    question: str
    reference: str | None = None
    history: list[list[str]] = field(default_factory=list)
    subject: str | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    line: int = 0


@dataclass
class Skipped:
    """A malformed input row that was reported and left out."""

    source: str
    line: int
    reason: str

    def to_dict(self) -> dict:
        return {"source": self.source, "line": self.line, "reason": self.reason}

    def __str__(self) -> str:
        return f"{self.source}:{self.line}: {self.reason}"


@dataclass
class Dataset:
    """What :meth:`Task.load` returns: the usable examples and the rows it skipped."""

    examples: list[Example]
    skipped: list[Skipped] = field(default_factory=list)


class Task(ABC):
    """Base class of evaluation tasks.

    Subclasses set ``name``, ``description`` and ``headline`` (the score keys shown by
    ``qihuang eval compare``) and implement :meth:`load`, :meth:`score_example` and
    :meth:`aggregate`. The default :meth:`predict` answers each example's :meth:`prompt`
    with the run's Answerer in one batch and scores the answer; override it for tasks
    that score differently (log-likelihood, an external judge).
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    headline: ClassVar[tuple[str, ...]] = ()
    options: ClassVar[tuple[TaskOption, ...]] = ()

    def __init__(self, **options: Any):
        known = {o.name: o for o in self.options}
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ConfigError(f"task {self.name!r} has no option(s) {unknown}; known: {sorted(known) or 'none'}")
        self.config: dict[str, Any] = {}
        for opt in self.options:
            value = options.get(opt.name)
            self.config[opt.name] = opt.default if value is None else opt.convert(value)

    @abstractmethod
    def load(self, path: Path) -> Dataset:
        """Read the data file (or directory) into examples; report malformed rows as skipped."""

    def prepare(self, dataset: Dataset, ctx: RunContext) -> None:
        """Hook called once before prediction with the full (un-limited) dataset."""

    def needs_model(self, examples: list[Example]) -> bool:
        """Whether predicting these examples needs a model (False lets the CLI skip loading one)."""
        return True

    def prompt(self, example: Example) -> str:
        """The question sent to the Answerer for this example."""
        return example.question

    def history(self, example: Example) -> list[list[str]]:
        """Earlier turns sent with the question ([[question, answer], ...])."""
        return example.history

    def predict(self, batch: list[Example], ctx: RunContext) -> list[dict]:
        """Answer a batch through the Answerer; one prediction row per example."""
        prompts = [self.prompt(ex) for ex in batch]
        histories = [self.history(ex) or None for ex in batch]
        answers = ctx.answer_batch(prompts, histories)
        rows = []
        for ex, prompt, ans in zip(batch, prompts, answers, strict=True):
            row = base_row(ex, prompt, ans)
            row.update(self.score_example(ex, scored_text(row), ctx))
            rows.append(row)
        return rows

    @abstractmethod
    def score_example(self, example: Example, prediction: str, ctx: RunContext) -> dict:
        """Per-example metrics merged into the prediction row."""

    @abstractmethod
    def aggregate(self, rows: list[dict]) -> dict:
        """Scores of the run: ``{"scores": {key: number}, "details": {...}, "notes": [...]}``
        (``details`` and ``notes`` optional)."""

    def close(self) -> None:
        """Release resources (HTTP clients, ...); called by the runner when the run ends."""


def base_row(ex: Example, prompt: str, answer: Any) -> dict:
    """The common fields of a prediction row for an answer object (or plain string).

    ``prediction`` is what the user sees (``Answer.text``, a red flag's care message included);
    ``model_text`` (only when it differs) is what the model itself said, which the text metrics
    score (see :func:`scored_text`)."""
    text = answer if isinstance(answer, str) else getattr(answer, "text", str(answer))
    row: dict[str, Any] = {"id": ex.id, "question": prompt, "prediction": text, "reference": ex.reference}
    if ex.subject:
        row["subject"] = ex.subject
    if not isinstance(answer, str):
        model_text = getattr(answer, "model_text", None)
        if isinstance(model_text, str) and model_text != text:
            row["model_text"] = model_text
        row["grounded"] = bool(getattr(answer, "grounded", False))
        row["refused"] = bool(getattr(answer, "refused", False))
        triage = getattr(answer, "triage", None)
        if triage is not None:
            row["triage"] = getattr(triage, "level", None)
        citations = getattr(answer, "citations", None) or []
        row["n_citations"] = len(citations)
        row["citations"] = [c.to_dict() if hasattr(c, "to_dict") else c for c in citations]
    return row


def scored_text(row: dict) -> str:
    """The text a task scores: the model's own words (a triage message put in front of them, or
    the refusal of a harmful question, is the system's, not the model's)."""
    return row.get("model_text", row["prediction"]) or ""


class RunContext:
    """What a task may use while predicting: the Answerer, the Engine and the KB.

    ``engine`` and ``answerer`` may be given directly or built lazily (the CLI passes a
    loader so that runs which need no model never load one).
    """

    def __init__(self, *, answerer: Any = None, engine: Any = None, kb: Any = None,
                 grounded: bool | None = None, batch_size: int = 8,
                 engine_loader: Callable[[], Any] | None = None,
                 answerer_factory: Callable[[Any], Any] | None = None):
        self._answerer, self._engine = answerer, engine
        self.kb = kb if kb is not None else getattr(answerer, "kb", None)  # the metrics' KB: given, or the Answerer's
        self.grounded, self.batch_size = grounded, batch_size
        self._engine_loader, self._answerer_factory = engine_loader, answerer_factory

    @property
    def engine(self) -> Any:
        """The generation engine (from the Answerer, the loader, or as given)."""
        if self._engine is None and self._answerer is not None:
            self._engine = self._answerer.engine
        if self._engine is None and self._engine_loader is not None:
            self._engine = self._engine_loader()
        if self._engine is None:
            raise ConfigError("this task needs a model: pass engine= or answerer= (CLI: --model)")
        return self._engine

    @property
    def answerer(self) -> Any:
        """The Answerer; built from the engine (and KB) when only an engine was given."""
        if self._answerer is None:
            factory = self._answerer_factory or _default_answerer
            self._answerer = factory(self.engine, self.kb, self.grounded)
        return self._answerer

    @property
    def has_model(self) -> bool:
        return any(x is not None for x in (self._answerer, self._engine, self._engine_loader))

    def answer_batch(self, questions: list[str], histories: list | None = None) -> list[Any]:
        """Answer questions through the Answerer, with the run's grounding choice."""
        if histories is not None and not any(histories):
            histories = None
        return self.answerer.answer_batch(questions, histories=histories, grounded=self.grounded)

    def model_info(self) -> dict:
        """Model name/template as far as the engine tells (no loading)."""
        eng = self._engine if self._engine is not None else (self._answerer.engine if self._answerer else None)
        if eng is None:
            return {}
        return {"name": eng.model_name, "template": eng.template.name}


def _default_answerer(engine: Any, kb: Any, grounded: bool | None) -> Any:
    from qihuang.answer.answerer import Answerer

    return Answerer(engine, kb, grounded=True if grounded is None else grounded)


# ---------------------------------------------------------------- registry

_REGISTRY: dict[str, type[Task] | str] = {}
_LOADED_BUILTINS = False


def _load_builtins() -> None:
    global _LOADED_BUILTINS
    if _LOADED_BUILTINS:
        return
    _LOADED_BUILTINS = True
    data = yaml.safe_load(resource("eval_tasks.yaml").read_text(encoding="utf-8")) or {}
    for name, spec in (data.get("tasks") or {}).items():
        _REGISTRY.setdefault(name, spec["class"])
    try:
        from importlib.metadata import entry_points

        for ep in entry_points(group="qihuang.eval_tasks"):
            _REGISTRY.setdefault(ep.name, ep.value)
    except Exception:  # pragma: no cover - broken third-party metadata must not break eval
        pass


def register_task(cls: type[Task], name: str | None = None) -> type[Task]:
    """Register a Task subclass under ``name`` (default ``cls.name``); usable as a decorator."""
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        raise ConfigError(f"{cls!r} is not a qihuang.eval.Task subclass")
    key = name or cls.name
    if not key:
        raise ConfigError(f"{cls.__name__} has no name")
    _load_builtins()
    _REGISTRY[key] = cls
    return cls


def _import_class(spec: str) -> type[Task]:
    module_name, _, attr = spec.partition(":")
    if not attr:
        raise ConfigError(f"task class {spec!r}: expected 'module:Class'")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"cannot load task class {spec!r}: {exc}") from None
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        raise ConfigError(f"{spec!r} is not a qihuang.eval.Task subclass")
    return cls


def get_task(name: str) -> type[Task]:
    """The Task class registered under ``name`` (or named by ``module:Class``)."""
    _load_builtins()
    entry = _REGISTRY.get(name)
    if entry is None:
        if ":" in name:
            return _import_class(name)
        raise ConfigError(f"unknown eval task {name!r}; known: {', '.join(task_names())}")
    if isinstance(entry, str):
        entry = _REGISTRY[name] = _import_class(entry)
    return entry


def builtin_task_names() -> list[str]:
    """Names of the tasks shipped with qihuang (``resources/eval_tasks.yaml``)."""
    data = yaml.safe_load(resource("eval_tasks.yaml").read_text(encoding="utf-8")) or {}
    return list(data.get("tasks") or {})


def task_names() -> list[str]:
    """Names of all registered tasks."""
    _load_builtins()
    return sorted(_REGISTRY)


def make_task(task: str | Task | type[Task], **options: Any) -> Task:
    """A Task instance from a name, a class or an instance (options apply to names/classes)."""
    if isinstance(task, Task):
        if options:
            raise ConfigError("pass options when constructing the Task instance, not to run()")
        return task
    cls = get_task(task) if isinstance(task, str) else task
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        raise ConfigError(f"{task!r} is not a qihuang.eval.Task")
    return cls(**options)
