"""The generation contract every backend keeps (no torch import here).

Everything that produces text — the Answerer (and through it batch inference, chat, the HTTP API,
the web UI and evaluation) and the multiple-choice scorer — uses an :class:`Engine`:

- ``encode(text)``: the prompt tokenized once, as a :class:`Prompt` (text and token ids). A caller
  that has encoded a prompt hands the :class:`Prompt` to ``generate``/``stream``, which then do not
  tokenize it again; a plain string is encoded by the engine;
- ``generate(prompts, params, cancels=None)``: one :class:`GenerationResult` per prompt (text,
  prompt/completion token counts, finish reason), batched as the backend can;
- ``stream(prompt, params, cancel=None)``: the same answer as text pieces while it is produced; the
  generator's return value (``StopIteration.value``) is its :class:`GenerationResult`;
- ``loglikelihood(requests)``: ``sum log p(continuation | context)`` per pair;
- ``context_length``: the model's context window; ``count_tokens(text)``: what a prompt takes of it.

A set cancel event (anything with ``is_set()``) ends that generation at the next decoding step
(``finish_reason == "cancelled"``); one already set before the start is not generated at all.
Callers rely on this contract and never probe an engine for optional methods.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, runtime_checkable

from qihuang.errors import ConfigError

MIN_TEMPERATURE = 1e-2  # below this the sampler's logits/temperature overflow: decode greedily instead
REPETITION_PENALTY_RANGE = (0.1, 10.0)  # outside it logits/penalty overflow to inf/nan
MAX_SEED = 2**63 - 1
FINISH_REASONS = ("stop", "length", "cancelled")


@dataclass
class GenerationParams:
    """Sampling parameters. ``temperature`` below :data:`MIN_TEMPERATURE` (0 included) means greedy
    decoding; ``top_k == 0`` disables top-k; ``repetition_penalty`` lies in
    :data:`REPETITION_PENALTY_RANGE`; ``seed`` in ``[0, 2**63 - 1]``; ``stop`` strings end the answer
    (they are not part of the returned text)."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None

    def __post_init__(self) -> None:
        checks = [
            ("max_new_tokens", isinstance(self.max_new_tokens, int) and self.max_new_tokens >= 1, "an integer >= 1"),
            ("temperature", self.temperature >= 0, ">= 0"),
            ("top_p", 0 < self.top_p <= 1, "in (0, 1]"),
            ("top_k", isinstance(self.top_k, int) and self.top_k >= 0, "an integer >= 0"),
            ("repetition_penalty", REPETITION_PENALTY_RANGE[0] <= self.repetition_penalty <= REPETITION_PENALTY_RANGE[1],
             f"in [{REPETITION_PENALTY_RANGE[0]}, {REPETITION_PENALTY_RANGE[1]}]"),
            ("seed", self.seed is None or (isinstance(self.seed, int) and 0 <= self.seed <= MAX_SEED),
             "None or an integer in [0, 2**63 - 1]"),
            ("stop", isinstance(self.stop, list) and all(isinstance(s, str) and s for s in self.stop),
             "a list of non-empty strings"),
        ]
        for name, ok, what in checks:
            if not ok:
                raise ConfigError(f"generation parameter {name!r} must be {what}, got {getattr(self, name)!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature < MIN_TEMPERATURE

    def key(self) -> tuple:
        """A hashable identity: requests with equal keys can share one batched generation."""
        return (self.max_new_tokens, self.temperature, self.top_p, self.top_k, self.repetition_penalty,
                tuple(self.stop), self.seed)

    def stop_with_template(self, template, tokenizer) -> list[str]:
        """These stop strings plus the template's (as resolved for ``tokenizer``)."""
        resolve = getattr(template, "for_tokenizer", None)  # a prompt template (data.prompts) resolves per tokenizer
        if resolve is not None:
            template = resolve(tokenizer)
        return list(dict.fromkeys([*self.stop, *(getattr(template, "stop", None) or [])]))

    def with_stop(self, extra: list[str]) -> GenerationParams:
        """A copy whose stop strings also include ``extra`` (deduplicated, order kept)."""
        return replace(self, stop=list(dict.fromkeys([*self.stop, *extra])))


@dataclass
class GenerationResult:
    """One generation: the cleaned text, the tokens the model saw and produced, and why it ended
    (``"stop"``: end of sequence or a stop string; ``"length"``: ``max_new_tokens`` cut it;
    ``"cancelled"``: the caller's cancel event)."""

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "stop"


@dataclass(frozen=True)
class Prompt:
    """A rendered prompt and its token ids, made once by :meth:`Engine.encode`."""

    text: str
    ids: tuple[int, ...]

    @property
    def tokens(self) -> int:
        return len(self.ids)


PromptLike = str | Prompt


class Cancel(Protocol):
    """What a cancel argument needs: ``threading.Event`` or anything with ``is_set()``."""

    def is_set(self) -> bool: ...


@runtime_checkable
class Engine(Protocol):
    """What the answerer, the servers and the evaluation need from a text generator (module doc)."""

    tokenizer: Any
    template: Any
    model_name: str

    @property
    def context_length(self) -> int: ...

    def encode(self, text: str) -> Prompt: ...

    def count_tokens(self, text: str) -> int: ...

    def generate(self, prompts: Sequence[PromptLike], params: GenerationParams | None = None,
                 cancels: Sequence[Cancel | None] | None = None) -> list[GenerationResult]: ...

    def stream(self, prompt: PromptLike, params: GenerationParams | None = None,
               cancel: Cancel | None = None) -> Generator[str, None, GenerationResult]: ...

    def loglikelihood(self, requests: list[tuple[str, str]]) -> list[float]: ...


def cancelled_result(prompt_tokens: int = 0) -> GenerationResult:
    """The result of a generation whose cancel event was set before it started."""
    return GenerationResult("", prompt_tokens, 0, "cancelled")


def is_cancelled(cancel: Cancel | None) -> bool:
    return cancel is not None and cancel.is_set()
