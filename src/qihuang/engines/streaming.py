"""Streaming shared by every engine backend: a producer in, text pieces and a result out.

A backend supplies only a *producer*; :func:`stream_generation` gives it streaming, hold-back of
partial stop strings, cancellation and the final
:class:`~qihuang.engines.base.GenerationResult`::

    def produce(sink: Sink) -> Finish | None | Iterator[int | str]:
        for token_id in my_model_tokens(prompt):   # a generator: yield ids (or text pieces)
            yield token_id                         # the helper stops it once sink.stopping()
        return Finish(completion_tokens=n, finish_reason="length")  # optional

    stream = stream_generation(produce, stops=stops, prompt_tokens=n_prompt,
                               max_new_tokens=params.max_new_tokens, cancel=cancel,
                               decode=lambda ids: tokenizer.decode(ids, skip_special_tokens=True))
    # `yield from stream` in the engine's stream(): its return value is the GenerationResult

The producer runs in a worker thread. It is either a generator of token ids / text pieces (the helper
closes it as soon as ``sink.stopping()``), or a plain function that hands ids or text to
``sink.emit(...)`` from a callback (transformers' streamer, qihuang's decode loop), checks
``sink.stopping()`` once per decoding step and returns a :class:`Finish` (or ``None``).
``sink.stopping()`` is true once the caller's ``cancel`` event is set, a stop string was shown or the
consumer went away. Token ids are turned into text by an :class:`IncrementalDetokenizer` (only the
last tokens are decoded per step, never the whole continuation); a trailing incomplete multi-byte
character (``"\\ufffd"``) waits for its next byte and is dropped at the end; text that could still
become a stop string is held back (:func:`hold_back_stops`) and a stop string is never shown.

Result: the text shown (:func:`clean_text`), ``prompt_tokens``, and ``completion_tokens`` /
``finish_reason`` from the producer's :class:`Finish`, else the ids emitted and ``"cancelled"`` (the
cancel event is set), ``"length"`` (``max_new_tokens`` reached) or ``"stop"``; a stop string shown
makes any reason but ``"cancelled"`` ``"stop"``. A cancel event set before the start returns
``("", prompt_tokens, 0, "cancelled")`` without running the producer; a producer's exception is
raised to the consumer after the pieces shown.

:class:`StopScanner` is the same incremental check for a decode loop that must stop at the token that
completes a stop string (qihuang's lean loop).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from qihuang.engines.base import GenerationResult

Decode = Callable[[Sequence[int]], str]
_END = object()


def cut_at_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    """``text`` up to the first stop string, and whether one was found."""
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def clean_text(text: str) -> str:
    """Strip spaces and the replacement characters left by a multi-byte character cut at the
    token limit (byte-level tokenizers)."""
    return text.strip().strip("\ufffd").strip()


class IncrementalDetokenizer:
    """Token ids in, new text out, decoding only a short window of the last tokens per call.

    The window starts at a character boundary at least one token back (so a tokenizer's
    leading-space rules see the same context as a full decode) and moves forward once it holds more
    than :attr:`WINDOW` tokens: one decode of at most ``WINDOW + 1`` tokens per call, plus one every
    ``WINDOW`` tokens. Text up to a trailing incomplete multi-byte character is returned at once,
    the character itself once its last byte arrives."""

    WINDOW = 8

    def __init__(self, decode: Decode):
        self._decode = decode
        self.ids: list[int] = []
        self._prefix = 0  # window start (a character boundary)
        self._boundary = 0  # end of the last decode that ended on a complete character
        self._shown = 0  # characters of the window's text already returned

    def push(self, ids: Iterable[int]) -> str:
        """Add ``ids``; the text they complete ("" while a character is still incomplete)."""
        self.ids.extend(ids)
        text = self._decode(self.ids[self._prefix:])
        complete = not text.endswith("\ufffd")
        stable = text if complete else text.rstrip("\ufffd")
        new = stable[self._shown:]
        self._shown = max(self._shown, len(stable))
        if complete:
            if len(self.ids) - self._prefix > self.WINDOW and self._boundary > self._prefix:
                self._prefix = self._boundary  # keep the tokens since the last boundary as context
                self._shown = len(self._decode(self.ids[self._prefix:]))
            self._boundary = len(self.ids)
        return new

    def flush(self) -> str:
        """What is still held (an incomplete character's replacement marks)."""
        rest = self._decode(self.ids[self._prefix:])[self._shown:]
        self._shown += len(rest)
        return rest


class StopScanner:
    """Whether a row's new tokens complete a stop string, looking only at the text they add plus
    the ``len(longest stop) - 1`` characters before it."""

    def __init__(self, stops: list[str], decode: Decode):
        self.stops = list(stops)
        self._keep = max((len(s) for s in stops), default=1) - 1
        self._detok = IncrementalDetokenizer(decode)
        self._tail = ""

    @property
    def consumed(self) -> int:
        return len(self._detok.ids)

    def push(self, ids: Iterable[int]) -> bool:
        """Add ``ids``; True when the text now holds a stop string."""
        new = self._detok.push(ids)
        if not new:
            return False
        window = self._tail + new
        self._tail = window[-self._keep:] if self._keep else ""
        return any(s in window for s in self.stops)


def hold_back_stops(pieces: Iterable[str], stops: list[str], halt: threading.Event) -> Iterator[str]:
    """Re-chunk streamed text so that no part of a stop string is ever yielded; sets ``halt`` when
    one is found (and ends)."""
    buffer, keep = "", max((len(s) for s in stops), default=1) - 1
    for piece in pieces:
        buffer += piece
        text, found = cut_at_stop(buffer, stops)
        if found:
            halt.set()
            if text:
                yield text
            return
        safe = len(buffer) - keep if keep else len(buffer)
        if safe > 0:
            yield buffer[:safe]
            buffer = buffer[safe:]
    if buffer:
        yield buffer


@dataclass
class Finish:
    """What a producer knows at its end; ``None`` fields are inferred (see the module doc)."""

    completion_tokens: int | None = None
    finish_reason: str | None = None  # "stop" | "length" | "cancelled"


class Sink:
    """The producer's side of a stream: ``emit`` ids or text, ``stopping()`` once per step. It is
    also event-like (``is_set`` = ``stopping``), so it can sit in a list of cancel events."""

    def __init__(self, halt: threading.Event, cancel: threading.Event | None, put: Callable[[str], None],
                 decode: Decode | None):
        self._halt, self._cancel, self._put = halt, cancel, put
        self._detok = IncrementalDetokenizer(decode) if decode is not None else None
        self.tokens = 0  # token ids emitted

    def stopping(self) -> bool:
        return self._halt.is_set() or (self._cancel is not None and self._cancel.is_set())

    is_set = stopping

    def emit(self, item: int | str | Sequence[int]) -> None:
        """Hand over one token id, several, or a text piece."""
        if isinstance(item, str):
            self._put(item)
            return
        ids = [item] if isinstance(item, int) else [int(i) for i in item]
        if self._detok is None:
            raise TypeError("a producer that emits token ids needs stream_generation(..., decode=...)")
        self.tokens += len(ids)
        if text := self._detok.push(ids):
            self._put(text)

    def flush(self) -> None:
        if self._detok is not None and (rest := self._detok.flush()):
            self._put(rest)


def _drive(produce: Callable[[Sink], Any], sink: Sink) -> Finish | None:
    """Run ``produce``; a generator is iterated (and closed once the sink says stop)."""
    out = produce(sink)
    if isinstance(out, Iterator):
        gen = out
        out = None
        while True:
            try:
                item = next(gen)
            except StopIteration as end:
                out = end.value
                break
            sink.emit(item)
            if sink.stopping():
                getattr(gen, "close", lambda: None)()
                break
    sink.flush()
    return out if isinstance(out, Finish) else None


def _complete_pieces(items: queue.SimpleQueue) -> Iterator[str]:
    """Queued text until the end mark; a trailing "\\ufffd" waits for more and is dropped at the end."""
    pending = ""
    while (item := items.get()) is not _END:
        pending += item
        safe = pending.rstrip("\ufffd")
        if safe:
            yield safe
            pending = pending[len(safe):]


def stream_generation(produce: Callable[[Sink], Any], *, stops: list[str], prompt_tokens: int,
                      max_new_tokens: int, cancel: threading.Event | None = None, decode: Decode | None = None):
    """Stream what ``produce`` generates (see the module doc); returns the GenerationResult."""
    if cancel is not None and cancel.is_set():
        return GenerationResult("", prompt_tokens, 0, "cancelled")
    halt = threading.Event()  # a stop string was shown, or the consumer went away
    items: queue.SimpleQueue = queue.SimpleQueue()
    sink = Sink(halt, cancel, items.put, decode)
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["finish"] = _drive(produce, sink)
        except BaseException as exc:  # noqa: BLE001 - surfaced in the consumer thread
            box["error"] = exc
        finally:
            items.put(_END)

    thread = threading.Thread(target=work, name="qihuang-stream-worker", daemon=True)
    thread.start()
    shown: list[str] = []
    try:
        for piece in hold_back_stops(_complete_pieces(items), stops, halt):
            shown.append(piece)
            yield piece
    finally:
        stopped = halt.is_set()
        halt.set()
        thread.join()
    if "error" in box:
        raise box["error"]
    return GenerationResult(clean_text("".join(shown)), prompt_tokens,
                            *_usage(box.get("finish") or Finish(), sink.tokens, stopped, cancel, max_new_tokens))


def _usage(finish: Finish, emitted: int, stopped: bool, cancel: threading.Event | None,
           max_new_tokens: int) -> tuple[int, str]:
    tokens = finish.completion_tokens if finish.completion_tokens is not None else emitted
    reason = finish.finish_reason
    if reason is None:
        cancelled = cancel is not None and cancel.is_set()
        reason = "cancelled" if cancelled else "length" if tokens >= max_new_tokens else "stop"
    if stopped and reason != "cancelled":
        reason = "stop"
    return tokens, reason
