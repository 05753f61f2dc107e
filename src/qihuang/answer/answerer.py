"""The one answering path: triage -> grounding -> prompt -> generation -> answer with citations.

Batch inference, the chat CLI, the HTTP API, the web UI and evaluation all call
:class:`Answerer`, so every answer is produced (and checked) the same way:

1. red-flag triage of the question; a harmful request is refused without generating;
2. grounding (when a KB is given and grounding is on): linked facts go into the prompt via
   the template's knowledge block and come back as ``citations``;
3. generation through the engine;
4. the urgent-care message of a red flag is put in front of whatever the model said, and
   every answer carries the disclaimer.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

from qihuang import DISCLAIMER
from qihuang.answer.engine import (Engine, GenerationParams, GenerationResult, clean_text, counted_result,
                                   generation_results, open_stream)
from qihuang.answer.grounding import Citation, Grounding, GroundingLimits, ground
from qihuang.answer.triage import Triage, triage
from qihuang.data.formats import with_flat_turns
from qihuang.errors import InputError

History = list[list[str]] | list[tuple[str, str]] | list[dict]


@dataclass
class Answer:
    """An answer with its grounding, triage and disclaimer (``to_dict`` for JSON)."""

    question: str
    text: str
    grounded: bool = False
    citations: list[Citation] = field(default_factory=list)
    triage: Triage = field(default_factory=Triage)
    disclaimer: str = DISCLAIMER
    refused: bool = False
    model_text: str = ""  # what the model said (``text`` minus the triage message)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "stop"  # "stop" | "length" | "refused"

    def to_dict(self) -> dict:
        return {
            "question": self.question, "text": self.text, "grounded": self.grounded,
            "citations": [c.to_dict() for c in self.citations], "triage": self.triage.to_dict(),
            "disclaimer": self.disclaimer, "refused": self.refused, "model_text": self.model_text,
            "usage": {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens},
            "finish_reason": self.finish_reason,
        }


@dataclass
class _Plan:
    question: str
    triage: Triage
    grounding: Grounding
    prompt: str | None  # None when refused


def history_messages(history: History | None) -> list[dict]:
    """Normalize ``history`` ([[q, a], ...] pairs or role/content dicts) to chat messages."""
    messages: list[dict] = []
    for i, turn in enumerate(history or []):
        if isinstance(turn, dict):
            if turn.get("role") not in ("user", "assistant") or not isinstance(turn.get("content"), str):
                raise InputError(f"turn {i} needs role user|assistant and string content", field="history")
            messages.append({"role": turn["role"], "content": turn["content"]})
        elif isinstance(turn, (list, tuple)) and len(turn) == 2 and all(isinstance(x, str) for x in turn):
            messages += [{"role": "user", "content": turn[0]}, {"role": "assistant", "content": turn[1]}]
        else:
            raise InputError(f"turn {i} must be a [question, answer] pair or a role/content object, got {turn!r}",
                             field="history")
    return messages


def compose_text(tri: Triage, model_text: str) -> str:
    """The user-facing text: a red flag's message first, whatever the model said."""
    if tri.level == "refuse":
        return tri.message
    if tri.is_red_flag:
        return f"{tri.message}\n\n{model_text}".rstrip()
    return model_text


class Answerer:
    """Answers questions with ``engine``, grounded in ``kb`` when given (see module doc)."""

    def __init__(self, engine: Engine, kb=None, grounded: bool = True, params: GenerationParams | None = None,
                 system: str | None = None, limits: GroundingLimits | None = None):
        self.engine = engine
        self.kb = kb
        self.grounded = grounded
        self.params = params or GenerationParams()
        self.system = system
        self.limits = limits or GroundingLimits()

    # ---- preparation --------------------------------------------------------------------
    def plan(self, question: str, history: History | None = None, system: str | None = None,
             grounded: bool | None = None) -> _Plan:
        """Triage, grounding and the rendered prompt for one question (no generation)."""
        if not isinstance(question, str) or not question.strip():
            raise InputError("the question is empty", field="question")
        question, history = with_flat_turns(question.strip(), history)  # "<user>: … <bot>: …" (HuaTuo)
        tri = triage(question)
        use_kb = self.grounded if grounded is None else grounded
        if tri.level == "refuse":  # nothing is looked up or generated for a harmful request
            return _Plan(question, tri, Grounding.empty(), None)
        grounding = ground(self.kb, question, self.limits) if use_kb and self.kb is not None else Grounding.empty()
        messages = history_messages(history) + [{"role": "user", "content": question}]
        prompt = self.engine.template.render(self.engine.tokenizer, messages,
                                             system=self.system if system is None else system,
                                             knowledge=grounding.facts or None)
        return _Plan(question, tri, grounding, prompt)

    def _finish(self, plan: _Plan, model_text: str, params: GenerationParams,
                result: GenerationResult | None = None) -> Answer:
        if plan.prompt is None:
            return Answer(plan.question, plan.triage.message, False, [], plan.triage,
                          refused=True, finish_reason="refused")
        result = result or counted_result(self.engine, plan.prompt, model_text, params)  # usage from the engine
        return Answer(
            question=plan.question, text=compose_text(plan.triage, model_text),
            grounded=plan.grounding.grounded, citations=plan.grounding.citations, triage=plan.triage,
            model_text=model_text, prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens,
            finish_reason=result.finish_reason,
        )

    # ---- answering ----------------------------------------------------------------------
    def answer(self, question: str, history: History | None = None, system: str | None = None,
               grounded: bool | None = None, params: GenerationParams | None = None) -> Answer:
        """Answer one question (``grounded=None`` uses the answerer's default)."""
        return self.answer_batch([question], [history], grounded=grounded, params=params, system=system)[0]

    def answer_batch(self, questions: list[str], histories: list[History | None] | None = None,
                     grounded: bool | None = None, params: GenerationParams | None = None,
                     system: str | None = None, systems: list[str | None] | None = None,
                     cancels: list[threading.Event | None] | None = None) -> list[Answer]:
        """Answer many questions with one batched generation (refused ones are not generated).
        ``systems`` gives one system prompt per question (else ``system`` for all); a set event in
        ``cancels`` (one per question) stops that question's generation."""
        params = params or self.params
        histories = histories or [None] * len(questions)
        systems = systems or [system] * len(questions)
        if not len(histories) == len(systems) == len(questions):
            raise InputError("histories/systems must have one entry per question", field="histories")
        plans = [self.plan(q, h, s, grounded) for q, h, s in zip(questions, histories, systems)]
        todo = [i for i, p in enumerate(plans) if p.prompt is not None]
        outputs = iter(generation_results(self.engine, [plans[i].prompt for i in todo], params,
                                          [cancels[i] for i in todo] if cancels else None) if todo else [])
        return [self._finish(p, (r := next(outputs)).text, params, r) if p.prompt is not None
                else self._finish(p, "", params) for p in plans]

    def stream(self, question: str, history: History | None = None, system: str | None = None,
               grounded: bool | None = None, params: GenerationParams | None = None,
               cancel: threading.Event | None = None) -> Iterator[str | Answer]:
        """Yield the answer text in pieces (red-flag message first), then the final :class:`Answer`;
        setting ``cancel`` stops the generation at the next step."""
        params = params or self.params
        plan = self.plan(question, history, system, grounded)
        if plan.prompt is None:
            yield plan.triage.message
            yield self._finish(plan, "", params)
            return
        if plan.triage.is_red_flag:
            yield plan.triage.message + "\n\n"
        pieces: list[str] = []
        stream = open_stream(self.engine, plan.prompt, params, cancel)
        while True:
            try:
                piece = next(stream)
            except StopIteration as end:  # an engine returns its GenerationResult (or None)
                result = end.value if isinstance(end.value, GenerationResult) else None
                break
            pieces.append(piece)
            yield piece
        yield self._finish(plan, clean_text("".join(pieces)), params, result)
