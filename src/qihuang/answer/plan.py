"""The answer plan: what one request decides before generation, made once and carried through.

An :class:`AnswerPlan` holds the triage, what retrieval linked (``link``) and the grounding it gave
(facts, citations), the KB names of the question and of the earlier user turns (not claims when
verifying), the rendered prompt with its token ids (:class:`~qihuang.engines.base.Prompt`, fitted to
the context window), the notice or abstention, and — built at the first verification — the indexed
evidence its answers are checked against (the facts and the cited entities' other facts).
:meth:`qihuang.answer.answerer.Answerer.plan` makes it; the API's admission,
its batching scheduler, generation, verification and streaming verification read it, none remakes
it: one ``kb.link`` of the question per request, each earlier turn linked at most once
(:class:`LinkedTexts`), one tokenization of the prompt (more only when old turns must be dropped).

Context fitting (:func:`fit_prompt`), the same for the API, the web UI, ``qihuang chat`` and batch
inference: the prompt must leave ``max_new_tokens`` of the context window; when it does not, the
oldest history turns are dropped (whole turns, from a user turn on) until it does, and the plan
reports how many messages went (``dropped_turns``). The system prompt, the knowledge block and the
question are never cut; when they alone do not fit, :class:`ContextTooLong` says by how much. Triage
and grounding read the whole conversation given (a red flag of a dropped turn still counts).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from qihuang.answer.grounding import Grounding
from qihuang.answer.triage import Triage
from qihuang.engines.base import Prompt
from qihuang.errors import InputError

History = list[list[str]] | list[tuple[str, str]] | list[dict]


class ContextTooLong(InputError):
    """The prompt cannot fit the context window even without any earlier turn."""

    def __init__(self, prompt_tokens: int, context: int, max_tokens: int):
        budget = context - max_tokens
        super().__init__(
            f"the prompt is {prompt_tokens} tokens without any earlier turns; the model's context is {context} "
            f"tokens, of which max_tokens={max_tokens} are kept for the answer, so at most {max(budget, 0)} "
            f"prompt tokens fit (shorten the messages or lower max_tokens)")
        self.prompt_tokens, self.context, self.max_tokens = prompt_tokens, context, max_tokens


@dataclass
class AnswerPlan:
    """Everything about one request that is decided before generation (see the module doc)."""

    question: str
    triage: Triage
    grounding: Grounding
    link: Any = None  # the LinkResult retrieval returned (None: grounding off or refused)
    names: set[str] = field(default_factory=set)  # KB names of the question and earlier user turns
    history: list[dict] = field(default_factory=list)  # the earlier turns given, as chat messages
    messages: list[dict] = field(default_factory=list)  # what the prompt holds: kept turns + the question
    system: str | None = None
    prompt: Prompt | None = None  # None when refused or abstained
    notice: str = ""  # put in front of the model text (no facts found, --ungrounded answer)
    abstain: str = ""  # the whole answer when abstaining
    checked: bool = False  # grounding was attempted: verify the model text
    abstained: bool = False  # no facts and --ungrounded abstain: the model is not called
    dropped_turns: int = 0  # earlier messages left out of the prompt to fit the context window
    evidence: Any = None  # what verification checks against (verify.Evidence), built at the first check

    @property
    def emergency(self) -> bool:
        return self.triage.level == "emergency"

    @property
    def refused(self) -> bool:
        return self.triage.level == "refuse"

    @property
    def generates(self) -> bool:
        """Whether the model is asked (not refused, not abstained)."""
        return self.prompt is not None


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


def fit_prompt(history: list[dict], question: dict, render: Callable[[list[dict]], str],
               encode: Callable[[str], Prompt], context: int, max_new_tokens: int) -> tuple[list[dict], Prompt, int]:
    """``(messages, prompt, dropped)``: the prompt of ``history + [question]`` with the fewest oldest
    turns dropped (``dropped`` messages, from a user turn on) that leaves ``max_new_tokens`` of
    ``context``; one encoding when everything fits, a binary search over turn starts otherwise."""
    budget = context - max_new_tokens

    def attempt(start: int) -> tuple[list[dict], Prompt]:
        messages = [*history[start:], question]
        return messages, encode(render(messages))

    messages, prompt = attempt(0)
    if prompt.tokens <= budget:
        return messages, prompt, 0
    starts = [i for i in range(1, len(history) + 1) if i == len(history) or history[i]["role"] == "user"]
    lo, hi, best = 0, len(starts) - 1, None
    while lo <= hi:
        mid = (lo + hi) // 2
        messages, prompt = attempt(starts[mid])
        if prompt.tokens <= budget:
            best, hi = (messages, prompt, starts[mid]), mid - 1
        elif starts[mid] == len(history):  # not even the question alone fits
            raise ContextTooLong(prompt.tokens, context, max_new_tokens)
        else:
            lo = mid + 1
    if best is None:
        raise ContextTooLong(prompt.tokens, context, max_new_tokens)
    return best


class _MemoLinker:
    """A linker whose ``find_entities`` answers each text once (the rest is the KB's linker)."""

    def __init__(self, linker, found: dict):
        self._linker, self._found = linker, found

    def find_entities(self, text: str):
        if text not in self._found:
            self._found[text] = self._linker.find_entities(text)
        return self._found[text]

    def __getattr__(self, name: str):
        return getattr(self._linker, name)


class LinkedTexts:
    """The knowledge base as one request sees it: every text is linked (``find_entities``) at most
    once — the question inside ``link``, an earlier turn inside ``link``'s follow-up lookup and again
    for the names — and the last :meth:`link` result is kept (``linked``). Everything else is the KB.

    ``link`` runs the KB's own ``link`` with this view as the KB, so retrieval is the one path it
    always is, only its linking is shared."""

    def __init__(self, kb):
        self._kb = kb
        self._found: dict[str, list] = {}
        self.linker = _MemoLinker(kb.linker, self._found)
        self.linked = None

    def find_entities(self, text: str):
        return self.linker.find_entities(text)

    def link(self, text: str, max_values: int | None = None, history: list[str] | None = None):
        self.linked = type(self._kb).link(self, text, max_values=max_values, history=history)
        return self.linked

    def names(self, texts: list[str]) -> set[str]:
        """KB names of the entities the texts mention."""
        return {m.name for t in texts if t for m in self.find_entities(t)}

    def __getattr__(self, name: str):
        return getattr(self._kb, name)
