"""Fitting a conversation into the model's context window (``qihuang serve``).

The prompt the model sees is the system prompt, the knowledge block, the history and the current
question. When it does not fit in ``context_length - max_tokens`` tokens, the oldest history turns
are dropped (whole turns, oldest first) until it does; the system prompt, the knowledge block and
the current question are never cut. If they alone do not fit, the request is refused with 400
``context_length_exceeded``, stating the limits.
"""

from __future__ import annotations

from dataclasses import dataclass


class ContextTooLong(Exception):
    """The prompt cannot fit even without history."""

    def __init__(self, prompt_tokens: int, context: int, max_tokens: int):
        budget = context - max_tokens
        super().__init__(
            f"the prompt is {prompt_tokens} tokens without any earlier turns; the model's context is {context} "
            f"tokens, of which max_tokens={max_tokens} are kept for the answer, so at most {max(budget, 0)} "
            f"prompt tokens fit (shorten the messages or lower max_tokens)")
        self.prompt_tokens, self.context, self.max_tokens = prompt_tokens, context, max_tokens


@dataclass
class Fitted:
    history: list[dict]
    dropped_turns: int = 0
    prompt_tokens: int | None = None  # None when the engine cannot count (scripted fakes)


def fit_history(answerer, question: str, history: list[dict], system: str | None, grounded: bool | None,
                max_tokens: int) -> Fitted:
    """The longest suffix of ``history`` whose prompt fits (see module doc); raises ContextTooLong."""
    engine = answerer.engine
    context, count = getattr(engine, "context_length", None), getattr(engine, "count_tokens", None)
    if not isinstance(context, int) or not callable(count):
        return Fitted(list(history))

    def size(turns: list[dict]) -> int | None:
        plan = answerer.plan(question, turns, system, grounded)
        return None if plan.prompt is None else count(plan.prompt)  # None: refused, nothing is generated

    budget = context - max_tokens
    full = size(history)
    if full is None or full <= budget:
        return Fitted(list(history), 0, full)
    starts = [i for i in range(1, len(history) + 1) if i == len(history) or history[i]["role"] == "user"]
    lo, hi = 0, len(starts) - 1  # binary search: the fewest dropped turns that fit
    best: tuple[int, int] | None = None
    while lo <= hi:
        mid = (lo + hi) // 2
        n = size(history[starts[mid]:])
        if n is not None and n <= budget:
            best, hi = (starts[mid], n), mid - 1
        else:
            lo = mid + 1
            if starts[mid] == len(history):
                raise ContextTooLong(n or 0, context, max_tokens)
    if best is None:
        raise ContextTooLong(size([]) or 0, context, max_tokens)
    return Fitted(list(history[best[0]:]), best[0], best[1])
