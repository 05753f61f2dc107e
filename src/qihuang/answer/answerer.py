"""The one answering path: triage -> grounding -> prompt -> generation -> verification -> answer.

Batch inference, the chat CLI, the HTTP API, the web UI and evaluation all call
:class:`Answerer`, so every answer is produced (and checked) the same way:

1. red-flag triage of the question (earlier user turns count too); a harmful request is
   refused without generating;
2. grounding (when a KB is given and grounding is on): linked facts go into the prompt via
   the template's knowledge block and come back as ``citations``; in an emergency, drug and
   dosage facts are left out (no self-treatment list);
3. no facts found: ``ungrounded="abstain"`` answers with a short message and never calls the
   model, ``"answer"`` generates and puts a notice in front (see :mod:`qihuang.answer.policy`);
4. generation through the engine;
5. verification of the model's text against the facts of its prompt
   (:func:`qihuang.answer.verify.verify`) and the ``on_unsupported`` policy: flag, drop or
   regenerate (an emergency answer loses sentences that name drugs whatever the policy);
6. the urgent-care message of a red flag is put in front of whatever the model said, and
   every answer carries the disclaimer and its ``verification``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

from qihuang import DISCLAIMER
from qihuang.answer import policy as pol
from qihuang.answer.engine import (Engine, GenerationParams, GenerationResult, clean_text, counted_result,
                                   generation_results, open_stream)
from qihuang.answer.grounding import Citation, Grounding, GroundingLimits, citations_of, ground
from qihuang.answer.triage import Triage, triage
from qihuang.answer.verify import Verification, load_config, question_names, verify
from qihuang.data.formats import with_flat_turns
from qihuang.errors import InputError

History = list[list[str]] | list[tuple[str, str]] | list[dict]


@dataclass
class Answer:
    """An answer with its grounding, triage, verification and disclaimer (``to_dict`` for JSON)."""

    question: str
    text: str
    grounded: bool = False
    citations: list[Citation] = field(default_factory=list)
    triage: Triage = field(default_factory=Triage)
    disclaimer: str = DISCLAIMER
    refused: bool = False
    model_text: str = ""  # what the model said after the policy (``text`` minus triage message / notice)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "stop"  # "stop" | "length" | "refused" | "abstained"
    verification: Verification = field(default_factory=lambda: Verification(checked=False))
    abstained: bool = False  # nothing in the KB and --ungrounded abstain: the model was not called
    draft: str | None = None  # the model's own first text, when the policy changed it

    def to_dict(self) -> dict:
        return {
            "question": self.question, "text": self.text, "grounded": self.grounded,
            "citations": [c.to_dict() for c in self.citations], "triage": self.triage.to_dict(),
            "disclaimer": self.disclaimer, "refused": self.refused, "abstained": self.abstained,
            "model_text": self.model_text, "draft": self.draft,
            "usage": {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens},
            "finish_reason": self.finish_reason, "verification": self.verification.to_dict(),
        }


@dataclass
class _Plan:
    question: str
    triage: Triage
    grounding: Grounding
    prompt: str | None  # None when refused or abstained
    messages: list[dict] = field(default_factory=list)
    system: str | None = None
    names: set[str] = field(default_factory=set)  # KB names of the question (and earlier user turns)
    notice: str = ""  # put in front of the model text (no facts found, --ungrounded answer)
    abstain: str = ""  # the whole answer when abstaining
    checked: bool = False  # grounding was attempted: verify the model text
    abstained: bool = False  # no facts and --ungrounded abstain: the model is not called

    @property
    def emergency(self) -> bool:
        return self.triage.level == "emergency"


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


def compose_text(tri: Triage, model_text: str, notice: str = "") -> str:
    """The user-facing text: a red flag's message first, a notice, whatever the model said."""
    if tri.level == "refuse":
        return tri.message
    body = f"{notice}\n\n{model_text}".strip() if notice else model_text
    if tri.is_red_flag:
        return f"{tri.message}\n\n{body}".rstrip()
    return body


def _without_withheld(grounding: Grounding) -> Grounding:
    """The grounding minus drug/dosage facts (an emergency answer lists no self-treatment)."""
    withheld = set(load_config().emergency_withheld)
    facts = [f for f in grounding.facts if f.attribute not in withheld]
    if len(facts) == len(grounding.facts):
        return grounding
    return Grounding(facts, citations_of(facts), list(dict.fromkeys(f.entity for f in facts)), grounding.attributes)


class Answerer:
    """Answers questions with ``engine``, grounded in ``kb`` when given (see module doc).

    ``on_unsupported``: ``flag`` | ``drop`` (default) | ``regenerate``; ``ungrounded``:
    ``answer`` | ``abstain`` | None (abstain with the embedded default model, else answer);
    ``min_support``: KB names that are values of fewer triples are noise, not claims."""

    def __init__(self, engine: Engine, kb=None, grounded: bool = True, params: GenerationParams | None = None,
                 system: str | None = None, limits: GroundingLimits | None = None,
                 on_unsupported: str = pol.DEFAULT_POLICY, ungrounded: str | None = None, min_support: int = 3):
        self.engine = engine
        self.kb = kb
        self.grounded = grounded
        self.params = params or GenerationParams()
        self.system = system
        self.limits = limits or GroundingLimits()
        self.on_unsupported = pol.check_choice(on_unsupported, pol.POLICIES, "on_unsupported")
        self.ungrounded = pol.check_choice(ungrounded or pol.default_ungrounded(engine), pol.UNGROUNDED, "ungrounded")
        self.min_support = min_support

    def warm(self) -> None:
        """Build what the first question would otherwise wait for: the triage backstop and the KB's
        linker (its automaton, noise names and intent detector). Commands call it at start-up."""
        from qihuang.answer.triage import warm

        warm()
        if self.kb is not None:
            self.kb.link("预热")

    # ---- preparation --------------------------------------------------------------------
    def plan(self, question: str, history: History | None = None, system: str | None = None,
             grounded: bool | None = None) -> _Plan:
        """Triage, grounding and the rendered prompt for one question (no generation)."""
        if not isinstance(question, str) or not question.strip():
            raise InputError("the question is empty", field="question")
        question, history = with_flat_turns(question.strip(), history)  # "<user>: … <bot>: …" (HuaTuo)
        history_msgs = history_messages(history)
        earlier = [m["content"] for m in history_msgs if m["role"] == "user"]
        tri = triage(question, history=earlier)  # a red flag of an earlier turn still counts
        use_kb = (self.grounded if grounded is None else grounded) and self.kb is not None
        if tri.level == "refuse":  # nothing is looked up or generated for a harmful request
            return _Plan(question, tri, Grounding.empty(), None)
        # a follow-up that names no entity is grounded in the entities of the earlier user turns
        grounding = ground(self.kb, question, self.limits, history=earlier) if use_kb else Grounding.empty()
        if tri.level == "emergency":
            grounding = _without_withheld(grounding)
        system = self.system if system is None else system
        messages = history_msgs + [{"role": "user", "content": question}]
        plan = _Plan(question, tri, grounding, None, messages, system,
                     question_names(self.kb, [question, *earlier]) if use_kb else set(), checked=use_kb)
        if use_kb and not grounding.grounded:
            if self.ungrounded == "abstain":  # a red flag's own message says what to do; else the abstention
                own = list(dict.fromkeys(m.name for m in self.kb.find_entities(question)))
                plan.abstain = "" if tri.is_red_flag else pol.abstain_message(own)
                plan.abstained = True
                return plan
            plan.notice = load_config().messages["ungrounded_notice"]
        plan.prompt = self._render(plan)
        return plan

    def _render(self, plan: _Plan, extra_system: str = "") -> str:
        system = plan.system
        if extra_system:
            system = f"{system if system is not None else self.engine.template.system}\n{extra_system}".strip()
        return self.engine.template.render(self.engine.tokenizer, plan.messages, system=system,
                                           knowledge=plan.grounding.facts or None)

    # ---- verification and policy --------------------------------------------------------
    def check(self, plan: _Plan, model_text: str) -> Verification:
        """Verify ``model_text`` against the facts of the plan's prompt."""
        if not plan.checked:
            return Verification(checked=False, policy=self.on_unsupported)
        v = verify(self.kb, model_text, plan.grounding.facts, plan.grounding.attributes, exclude=plan.names,
                   min_support=self.min_support)
        v.policy = self.on_unsupported
        return v

    def _drop(self, plan: _Plan, text: str, v: Verification) -> tuple[str, Verification]:
        """Cut unsupported claims (grounded answers) and, in an emergency, drug sentences."""
        withheld = pol.withheld_claims(self.kb, text, v.claims, plan.names) if plan.emergency else []
        bad = v.bad if plan.grounding.grounded and self.on_unsupported != "flag" else []
        if not bad and not withheld:
            return text, v
        new, cut = pol.drop_claims(text, bad, v.claims) if bad else (text, [])
        if withheld:  # a sentence that names a drug goes whole
            mid = self.check(plan, new)
            new, cut2 = pol.drop_claims(new, pol.withheld_claims(self.kb, new, mid.claims, plan.names), mid.claims,
                                        whole_units=True)
            cut += cut2
        new = pol.fallback_if_empty(new)
        after = self.check(plan, new)
        after.dropped = v.dropped + cut
        return new, after

    def police(self, plans: list[_Plan], drafts: list[str], params: GenerationParams) -> list[tuple[str, Verification]]:
        """Apply the policy to each plan's draft: final model text and its verification."""
        checks = [self.check(p, d) for p, d in zip(plans, drafts, strict=True)]
        if self.on_unsupported == "regenerate":
            redo = [i for i, (p, v) in enumerate(zip(plans, checks)) if p.grounding.grounded and not v.ok]
            if redo:
                instruction = load_config().messages["regenerate_instruction"]
                again = self.engine.generate([self._render(plans[i], instruction) for i in redo], params)
                for i, text in zip(redo, again, strict=True):
                    first = checks[i]
                    drafts[i], checks[i] = text, self.check(plans[i], text)
                    checks[i].attempts, checks[i].draft = 2, first.counts
        out = []
        for plan, draft, v in zip(plans, drafts, checks, strict=True):
            if self.on_unsupported == "flag" and not plan.emergency:
                out.append((draft, v))
                continue
            text, after = self._drop(plan, draft, v)
            after.attempts = v.attempts
            after.draft = v.draft or (v.counts if text != draft else None)
            out.append((text, after))
        return out

    def _finish(self, plan: _Plan, model_text: str, params: GenerationParams,
                verification: Verification | None = None, draft: str | None = None,
                result: GenerationResult | None = None) -> Answer:
        """The Answer of a plan; usage and finish reason come from the engine's ``result`` (of the draft)."""
        if plan.prompt is None and not plan.abstained:
            return Answer(plan.question, plan.triage.message, False, [], plan.triage,
                          refused=True, finish_reason="refused")
        if plan.prompt is None:
            return Answer(plan.question, compose_text(plan.triage, plan.abstain), False, [], plan.triage,
                          model_text="", abstained=True, finish_reason="abstained",
                          verification=Verification(checked=False, policy=self.on_unsupported))
        result = result or counted_result(self.engine, plan.prompt, draft if draft is not None else model_text, params)
        verification = verification if verification is not None else self.check(plan, model_text)
        text = compose_text(plan.triage, model_text, plan.notice)
        return Answer(
            question=plan.question, text=text,
            grounded=plan.grounding.grounded, citations=plan.grounding.citations, triage=plan.triage,
            model_text=model_text, prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens,
            finish_reason=result.finish_reason,
            verification=verification.shifted(max(0, text.rfind(model_text)) if model_text else 0),
            draft=draft if draft is not None and draft != model_text else None,
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
        """Answer many questions with one batched generation (refused/abstained ones are not generated).
        ``systems`` gives one system prompt per question (else ``system`` for all); a set event in
        ``cancels`` (one per question) stops that question's generation."""
        params = params or self.params
        histories = histories or [None] * len(questions)
        systems = systems or [system] * len(questions)
        if not len(histories) == len(systems) == len(questions):
            raise InputError("histories/systems must have one entry per question", field="histories")
        plans = [self.plan(q, h, s, grounded) for q, h, s in zip(questions, histories, systems)]
        todo = [i for i, p in enumerate(plans) if p.prompt is not None]
        results = generation_results(self.engine, [plans[i].prompt for i in todo], params,
                                     [cancels[i] for i in todo] if cancels else None) if todo else []
        drafts = [r.text for r in results]
        policed = iter(self.police([plans[i] for i in todo], list(drafts), params))
        raw = iter(results)
        answers = []
        for p in plans:
            if p.prompt is None:
                answers.append(self._finish(p, "", params))
                continue
            text, v = next(policed)
            r = next(raw)
            answers.append(self._finish(p, text, params, v, r.text, r))
        return answers

    def stream(self, question: str, history: History | None = None, system: str | None = None,
               grounded: bool | None = None, params: GenerationParams | None = None,
               cancel: threading.Event | None = None) -> Iterator[str | Answer]:
        """Yield the answer text in pieces (red-flag message and notice first), then the final :class:`Answer`;
        setting ``cancel`` stops the generation at the next step.

        ``flag`` streams the model's words as they come; ``drop`` streams sentence by sentence, each
        once verified; ``regenerate`` shows the text once the policy is done."""
        params = params or self.params
        plan = self.plan(question, history, system, grounded)
        if plan.prompt is None:
            yield compose_text(plan.triage, plan.abstain) if plan.abstained else plan.triage.message
            yield self._finish(plan, "", params)
            return
        head = compose_text(plan.triage, "", plan.notice)
        if head:
            yield head + "\n\n"
        live = self.on_unsupported == "flag" and not plan.emergency
        by_sentence = not live and self.on_unsupported == "drop"
        pieces: list[str] = []
        shown = ""
        stream, result = open_stream(self.engine, plan.prompt, params, cancel), None
        while True:
            try:
                piece = next(stream)
            except StopIteration as end:  # an engine returns its GenerationResult (or None)
                result = end.value if isinstance(end.value, GenerationResult) else None
                break
            pieces.append(piece)
            if live:
                yield piece
            elif by_sentence and any(ch in piece for ch in "。！？!?；;\n"):
                shown, new = self._stream_step(plan, "".join(pieces), shown)
                if new:
                    yield new
        draft = clean_text("".join(pieces))
        text, v = self.police([plan], [draft], params)[0]
        if not live:
            yield text[len(shown):] if text.startswith(shown) else ("" if by_sentence else text)
        yield self._finish(plan, text, params, v, draft, result)

    def _stream_step(self, plan: _Plan, so_far: str, shown: str) -> tuple[str, str]:
        """Verify the complete sentences streamed so far; the newly showable text."""
        cut = max(so_far.rfind(ch) for ch in "。！？!?；;\n") + 1
        text, _ = self._drop(plan, so_far[:cut], self.check(plan, so_far[:cut]))
        if text.startswith(shown) and text != pol.fallback_if_empty(""):
            return text, text[len(shown):]
        return shown, ""
