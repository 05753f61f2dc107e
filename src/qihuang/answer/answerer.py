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

Steps 1-3 and the rendered, tokenized prompt make the request's :class:`~qihuang.answer.plan.AnswerPlan`
(:meth:`Answerer.plan`, fitted to the context window), made once: :meth:`Answerer.answer_plans` and
:meth:`Answerer.stream_plan` generate and verify from it (the API plans a request when it admits it and
its scheduler batches the plans); :meth:`Answerer.answer`, :meth:`Answerer.answer_batch` and
:meth:`Answerer.stream` plan and answer in one call.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

from qihuang import DISCLAIMER
from qihuang.answer import policy as pol
from qihuang.answer.grounding import Citation, Grounding, GroundingLimits, citations_of, ground
from qihuang.answer.plan import AnswerPlan, History, LinkedTexts, fit_prompt, history_messages
from qihuang.answer.triage import Triage, triage
from qihuang.answer.evidence import evidence_of
from qihuang.answer.verify import Verification, load_config, verify
from qihuang.data.formats import with_flat_turns
from qihuang.engines.base import Engine, GenerationParams, GenerationResult
from qihuang.engines.streaming import clean_text
from qihuang.errors import InputError

__all__ = ["Answer", "AnswerPlan", "Answerer", "History", "compose_text", "history_messages"]


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
    finish_reason: str = "stop"  # "stop" | "length" | "cancelled" | "refused" | "abstained"
    verification: Verification = field(default_factory=lambda: Verification(checked=False))
    abstained: bool = False  # nothing in the KB and --ungrounded abstain: the model was not called
    draft: str | None = None  # the model's own first text, when the policy changed it
    dropped_turns: int = 0  # earlier messages left out of the prompt to fit the context window

    def to_dict(self) -> dict:
        return {
            "question": self.question, "text": self.text, "grounded": self.grounded,
            "citations": [c.to_dict() for c in self.citations], "triage": self.triage.to_dict(),
            "disclaimer": self.disclaimer, "refused": self.refused, "abstained": self.abstained,
            "model_text": self.model_text, "draft": self.draft,
            "usage": {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens},
            "finish_reason": self.finish_reason, "verification": self.verification.to_dict(),
            "dropped_turns": self.dropped_turns,
        }


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
            self.kb.warm()

    # ---- the plan -----------------------------------------------------------------------
    def plan(self, question: str, history: History | None = None, system: str | None = None,
             grounded: bool | None = None, max_new_tokens: int | None = None) -> AnswerPlan:
        """Triage, grounding and the rendered, tokenized prompt of one question, fitted to the context
        window with ``max_new_tokens`` (default: the answerer's) left for the answer (no generation).
        Raises :class:`~qihuang.answer.plan.ContextTooLong` when even the question alone does not fit."""
        if not isinstance(question, str) or not question.strip():
            raise InputError("the question is empty", field="question")
        question, history = with_flat_turns(question.strip(), history)  # "<user>: … <bot>: …" (HuaTuo)
        turns = history_messages(history)
        earlier = [m["content"] for m in turns if m["role"] == "user"]
        plan = AnswerPlan(question, triage(question, history=earlier), Grounding.empty(), history=turns,
                          system=self.system if system is None else system)
        if plan.refused:  # nothing is looked up or generated for a harmful request
            return plan
        use_kb = (self.grounded if grounded is None else grounded) and self.kb is not None
        if use_kb:  # a follow-up that names no entity is grounded in the entities of the earlier user turns
            linked = LinkedTexts(self.kb)
            grounding = ground(linked, question, self.limits, history=earlier)
            plan.link, plan.names, plan.checked = linked.linked, linked.names([question, *earlier]), True
            plan.grounding = _without_withheld(grounding) if plan.emergency else grounding
            if not plan.grounding.grounded:
                if self.ungrounded == "abstain":  # a red flag's own message says what to do; else the abstention
                    own = list(dict.fromkeys(m.name for m in linked.find_entities(question)))
                    plan.abstain = "" if plan.triage.is_red_flag else pol.abstain_message(own)
                    plan.abstained = True
                    return plan
                plan.notice = load_config().messages["ungrounded_notice"]
            else:  # asked, but not in the KB: said in one sentence; the entity's other facts stand in
                plan.notice = plan.grounding.coverage_note()
        plan.messages, plan.prompt, plan.dropped_turns = fit_prompt(
            turns, {"role": "user", "content": question}, lambda messages: self._render(plan, messages=messages),
            self.engine.encode, self.engine.context_length, max_new_tokens or self.params.max_new_tokens)
        return plan

    def _render(self, plan: AnswerPlan, extra_system: str = "", messages: list[dict] | None = None) -> str:
        system = plan.system
        if extra_system:
            system = f"{system if system is not None else self.engine.template.system}\n{extra_system}".strip()
        return self.engine.template.render(self.engine.tokenizer, plan.messages if messages is None else messages,
                                           system=system, knowledge=plan.grounding.facts or None)

    # ---- verification and policy --------------------------------------------------------
    def check(self, plan: AnswerPlan, model_text: str) -> Verification:
        """Verify ``model_text`` against the facts of the plan's prompt (their evidence — with the cited
        entities' other facts — is fetched and indexed once per plan)."""
        if not plan.checked:
            return Verification(checked=False, policy=self.on_unsupported)
        if plan.evidence is None:
            plan.evidence = evidence_of(self.kb, plan.grounding.facts)
        v = verify(self.kb, model_text, plan.grounding.facts, plan.grounding.attributes, exclude=plan.names,
                   min_support=self.min_support, evidence=plan.evidence)
        v.policy = self.on_unsupported
        return v

    def cut(self, plan: AnswerPlan, text: str, v: Verification, tidy: bool = True) -> tuple[str, list[str]]:
        """``text`` without its unsupported claims (grounded answers) and, in an emergency, its drug
        sentences; what was cut (``tidy``: see :func:`~qihuang.answer.policy.drop_claims`)."""
        withheld = pol.withheld_claims(self.kb, text, v.claims, plan.names) if plan.emergency else []
        bad = v.bad if plan.grounding.grounded and self.on_unsupported != "flag" else []
        if not bad and not withheld:
            return text, []
        new, cut = pol.drop_claims(text, bad, v.claims, tidy=tidy) if bad else (text, [])
        if withheld:  # a sentence that names a drug goes whole
            mid = self.check(plan, new)
            new, cut2 = pol.drop_claims(new, pol.withheld_claims(self.kb, new, mid.claims, plan.names), mid.claims,
                                        whole_units=True, tidy=tidy)
            cut += cut2
        return new, cut

    def _drop(self, plan: AnswerPlan, text: str, v: Verification) -> tuple[str, Verification]:
        """:meth:`cut`, the all-dropped message when nothing is left, and the verification of the result."""
        new, cut = self.cut(plan, text, v)
        if not cut and new == text:
            return text, v
        new = pol.fallback_if_empty(new)
        after = self.check(plan, new)
        after.dropped = v.dropped + cut
        return new, after

    def police(self, plans: list[AnswerPlan], drafts: list[str],
               params: GenerationParams) -> list[tuple[str, Verification]]:
        """Apply the policy to each plan's draft: final model text and its verification."""
        checks = [self.check(p, d) for p, d in zip(plans, drafts, strict=True)]
        if self.on_unsupported == "regenerate":
            redo = [i for i, (p, v) in enumerate(zip(plans, checks)) if p.grounding.grounded and not v.ok]
            if redo:
                instruction = load_config().messages["regenerate_instruction"]
                again = self.engine.generate([self._render(plans[i], instruction) for i in redo], params)
                for i, result in zip(redo, again, strict=True):
                    first = checks[i]
                    drafts[i], checks[i] = result.text, self.check(plans[i], result.text)
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

    def _finish(self, plan: AnswerPlan, model_text: str = "", verification: Verification | None = None,
                result: GenerationResult | None = None) -> Answer:
        """The Answer of a plan; usage and finish reason come from the engine's ``result`` (of the draft)."""
        if plan.refused:
            return Answer(plan.question, plan.triage.message, False, [], plan.triage,
                          refused=True, finish_reason="refused")
        if plan.abstained:
            return Answer(plan.question, compose_text(plan.triage, plan.abstain), False, [], plan.triage,
                          model_text="", abstained=True, finish_reason="abstained",
                          verification=Verification(checked=False, policy=self.on_unsupported))
        verification = verification if verification is not None else self.check(plan, model_text)
        text = compose_text(plan.triage, model_text, plan.notice)
        return Answer(
            question=plan.question, text=text,
            grounded=plan.grounding.grounded, citations=plan.grounding.citations, triage=plan.triage,
            model_text=model_text, prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens,
            finish_reason=result.finish_reason,
            verification=verification.shifted(max(0, text.rfind(model_text)) if model_text else 0),
            draft=result.text if result.text != model_text else None, dropped_turns=plan.dropped_turns,
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
        plans = [self.plan(q, h, s, grounded, params.max_new_tokens) for q, h, s in zip(questions, histories, systems)]
        return self.answer_plans(plans, params, cancels)

    def answer_plans(self, plans: list[AnswerPlan], params: GenerationParams | None = None,
                     cancels: list[threading.Event | None] | None = None) -> list[Answer]:
        """Generate the plans' answers in one batch (their prompts as encoded), verify and police them."""
        params = params or self.params
        todo = [i for i, p in enumerate(plans) if p.generates]
        results = self.engine.generate([plans[i].prompt for i in todo], params,
                                       [cancels[i] for i in todo] if cancels else None) if todo else []
        policed = iter(self.police([plans[i] for i in todo], [r.text for r in results], params))
        done = dict(zip(todo, results))
        answers = []
        for i, p in enumerate(plans):
            if i not in done:
                answers.append(self._finish(p))
                continue
            text, v = next(policed)
            answers.append(self._finish(p, text, v, done[i]))
        return answers

    def stream(self, question: str, history: History | None = None, system: str | None = None,
               grounded: bool | None = None, params: GenerationParams | None = None,
               cancel: threading.Event | None = None) -> Iterator[str | Answer]:
        """Plan the question and :meth:`stream_plan` it."""
        params = params or self.params
        return self.stream_plan(self.plan(question, history, system, grounded, params.max_new_tokens), params, cancel)

    def stream_plan(self, plan: AnswerPlan, params: GenerationParams | None = None,
                    cancel: threading.Event | None = None) -> Iterator[str | Answer]:
        """Yield the answer text in pieces (red-flag message and notice first), then the final :class:`Answer`;
        setting ``cancel`` stops the generation at the next step.

        ``flag`` streams the model's words as they come; ``drop`` streams sentence by sentence, each
        verified once as it completes (:class:`SentenceGate`); ``regenerate`` shows the text once the
        policy is done."""
        params = params or self.params
        if not plan.generates:
            yield compose_text(plan.triage, plan.abstain) if plan.abstained else plan.triage.message
            yield self._finish(plan)
            return
        head = compose_text(plan.triage, "", plan.notice)
        if head:
            yield head + "\n\n"
        live = self.on_unsupported == "flag" and not plan.emergency
        gate = SentenceGate(self, plan) if not live and self.on_unsupported == "drop" else None
        so_far = ""
        stream = self.engine.stream(plan.prompt, params, cancel)
        while True:
            try:
                piece = next(stream)
            except StopIteration as end:  # the engine's GenerationResult
                result = end.value
                break
            so_far += piece
            if live:
                yield piece
            elif gate is not None and (new := gate.push(so_far, piece)):
                yield new
        text, v = self.police([plan], [clean_text(so_far)], params)[0]
        if not live:
            shown = gate.shown if gate is not None else ""
            yield text[len(shown):] if text.startswith(shown) else ("" if gate is not None else text)
        yield self._finish(plan, text, v, result)


class SentenceGate:
    """The ``drop`` policy while streaming: each complete sentence is verified once, when it completes,
    together with at most the lead-in sentence of the list it belongs to (so a list item is read as
    the whole answer reads it), and shown without its unsupported claims. Linear in the answer's
    length; the whole draft is still policed once at the end (what the :class:`Answer` holds)."""

    ENDS = "。！？!?；;\n"

    def __init__(self, answerer: Answerer, plan: AnswerPlan):
        self.answerer, self.plan = answerer, plan
        self.list_item = load_config().list_item
        self.done = 0  # characters of the draft already judged
        self.lead = ""  # the last sentence of the last plain line judged (a list's lead-in)
        self._kept = ""  # the draft judged so far without its cut claims
        self.shown = ""

    def push(self, so_far: str, piece: str) -> str:
        """The newly showable text once ``piece`` (the end of ``so_far``) completes a sentence."""
        if not any(ch in piece for ch in self.ENDS):
            return ""
        cut = max(so_far.rfind(ch) for ch in self.ENDS) + 1
        if cut <= self.done:
            return ""
        new, start = so_far[self.done:cut], self.done
        first = start + len(new) - len(new.lstrip())  # where its text begins (after a line break)
        line_start = so_far.rfind("\n", 0, first) + 1
        prefix = ""
        if self.list_item.match(so_far[line_start:cut]):  # an item: its lead-in and its earlier sentences
            prefix = (f"{self.lead}\n" if self.lead else "") + so_far[line_start:start]
        v = self.answerer.check(self.plan, prefix + new)
        mine = Verification([c for c in v.claims if c.start >= len(prefix)], checked=v.checked).shifted(-len(prefix))
        self._kept += self.answerer.cut(self.plan, new, mine, tidy=False)[0]
        self._advance(so_far, start, cut)
        showable = self._kept.strip()  # trailing space waits for the text after it; the answer is stripped
        if not showable.startswith(self.shown):
            return ""
        new_text, self.shown = showable[len(self.shown):], showable
        return new_text

    def _advance(self, so_far: str, start: int, cut: int) -> None:
        from qihuang.answer.verify import split_units

        for u in split_units(so_far[start:cut]):
            s = start + u.start
            line_start = so_far.rfind("\n", 0, s) + 1
            if not self.list_item.match(so_far[line_start:cut]):
                self.lead = so_far[s:start + u.end].strip()
        self.done = cut
