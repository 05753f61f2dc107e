"""Scripted stand-ins for the Engine and the Answerer (the interfaces in coord/CONTRACTS.md).

``ScriptedEngine(replies=..., choices=...)``:

* ``generate(prompts, params)`` answers each prompt from ``replies`` (one ``GenerationResult`` each):
  a callable ``prompt -> str``, or a dict whose first key found in the prompt picks the reply
  (``default`` otherwise);
* ``loglikelihood(requests)`` gives 0.0 to the continuation ``choices(context)`` picks (a callable,
  or a dict keyed by a substring of the context as above) and -5.0 to every other one.

``FakeAnswerer(engine, kb=None, grounded=True)`` answers through ``engine.generate`` with the
question as the prompt (history turns prepended), returning :class:`FakeAnswer` objects shaped
like ``qihuang.answer.answerer.Answer``. Both record their calls for assertions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from qihuang import DISCLAIMER
from qihuang.engines.base import GenerationResult, Prompt


def _pick(script: Callable[[str], str] | dict[str, str] | None, text: str, default: str | None) -> str | None:
    if script is None:
        return default
    if callable(script):
        return script(text)
    for key, value in script.items():
        if key in text:
            return value
    return default


class FakeTemplate:
    """A plain-text template: "<role>: content" lines, then "assistant:" for generation."""

    name = "fake"
    stop: list[str] = []

    def render(self, tokenizer, messages, system=None, knowledge=None, add_generation_prompt=True) -> str:
        lines = [f"system: {system}"] if system else []
        if knowledge:
            lines.append("knowledge: " + "; ".join(" ".join(map(str, t)) for t in knowledge))
        lines += [f"{m['role']}: {m['content']}" for m in messages]
        if add_generation_prompt:
            lines.append("assistant:")
        return "\n".join(lines)


class ScriptedEngine:
    """An Engine whose generations and log-likelihoods come from a script (one token per character)."""

    context_length = 32768

    def __init__(self, replies: Callable[[str], str] | dict[str, str] | None = None,
                 choices: Callable[[str], str] | dict[str, str] | None = None, *,
                 default: str = "不清楚。", model_name: str = "scripted", template: Any = "fake"):
        self.replies, self.choices, self.default = replies, choices, default
        self.model_name = model_name
        self.template = FakeTemplate() if template == "fake" else template
        self.tokenizer = None
        self.generate_calls: list[list[str]] = []
        self.loglik_calls: list[list[tuple[str, str]]] = []

    def encode(self, text: str) -> Prompt:
        return Prompt(text, tuple(map(ord, text)))

    def count_tokens(self, text: str) -> int:
        return len(text)

    def generate(self, prompts: list[str | Prompt], params: Any = None, cancels=None) -> list[GenerationResult]:
        texts = [p.text if isinstance(p, Prompt) else p for p in prompts]
        self.generate_calls.append(texts)
        return [GenerationResult(_pick(self.replies, t, self.default), len(t), 0) for t in texts]

    def texts(self, prompts: list[str], params: Any = None) -> list[str]:
        """Only the texts of :meth:`generate`."""
        return [r.text for r in self.generate(prompts, params)]

    def stream(self, prompt: str | Prompt, params: Any = None, cancel=None):
        result = self.generate([prompt], params)[0]
        yield from result.text
        return result

    def loglikelihood(self, requests: list[tuple[str, str]]) -> list[float]:
        self.loglik_calls.append(list(requests))
        return [0.0 if cont == _pick(self.choices, ctx, None) else -5.0 for ctx, cont in requests]


@dataclass
class FakeTriage:
    level: str = "none"
    message: str = ""
    matched: list[str] = field(default_factory=list)


@dataclass
class FakeAnswer:
    question: str
    text: str
    grounded: bool = False
    citations: list = field(default_factory=list)
    triage: FakeTriage = field(default_factory=FakeTriage)
    disclaimer: str = DISCLAIMER
    refused: bool = False

    def to_dict(self) -> dict:
        return {"question": self.question, "text": self.text, "grounded": self.grounded,
                "citations": self.citations, "triage": vars(self.triage), "disclaimer": self.disclaimer,
                "refused": self.refused}


class FakeAnswerer:
    """An Answerer that prompts its engine with the bare question (history turns first)."""

    def __init__(self, engine: ScriptedEngine, kb: Any = None, grounded: bool = True, params: Any = None):
        self.engine, self.kb, self.grounded, self.params = engine, kb, grounded, params
        self.batches: list[dict] = []

    def answer(self, question: str, history=None, system=None, grounded=None) -> FakeAnswer:
        return self.answer_batch([question], [history] if history else None, grounded)[0]

    def answer_batch(self, questions: list[str], histories=None, grounded=None) -> list[FakeAnswer]:
        use = self.grounded if grounded is None else grounded
        self.batches.append({"questions": list(questions), "histories": histories, "grounded": use})
        prompts = []
        for i, q in enumerate(questions):
            hist = (histories or [None] * len(questions))[i] or []
            prompts.append("\n".join([*(f"{a}\n{b}" for a, b in hist), q]))
        texts = self.engine.texts(prompts, self.params)
        return [FakeAnswer(q, t, grounded=use and self.kb is not None) for q, t in zip(questions, texts, strict=True)]
