"""The shared streaming helper (engines/streaming.py): incremental detokenization and stop checks equal
their whole-text versions; streams hold back stops, cancel, close their producer and report usage."""

from __future__ import annotations

import threading

import pytest
from streams import drain
from hypothesis import given, settings
from hypothesis import strategies as st

from qihuang.engines.streaming import (Finish, IncrementalDetokenizer, StopScanner, cut_at_stop, hold_back_stops,
                                      stream_generation)


@pytest.fixture(scope="module")
def tok():
    from tiny_models import build_tokenizer

    return build_tokenizer()


def _decode(tok):
    return lambda ids: tok.decode(ids, skip_special_tokens=True)


def _ids_of(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_incremental_text_equals_the_full_decode(tok, data):
    """Random ids (lone bytes of multi-byte characters included) pushed in random chunks."""
    ids = data.draw(st.lists(st.integers(0, tok.vocab_size - 1), max_size=40))
    detok = IncrementalDetokenizer(_decode(tok))
    out, i = [], 0
    while i < len(ids):
        n = data.draw(st.integers(1, 3))
        out.append(detok.push(ids[i:i + n]))
        i += n
    full = _decode(tok)(ids)
    assert "".join(out) + detok.flush() == full
    assert "".join(out) == full if not full.endswith("\ufffd") else full.startswith("".join(out))


def test_a_split_character_waits_for_its_last_byte(tok):
    ids = _ids_of(tok, "头痛，恶心")
    detok = IncrementalDetokenizer(_decode(tok))
    shown = [detok.push([t]) for t in ids]
    assert "".join(shown) == "头痛，恶心" and "\ufffd" not in "".join(shown)
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    as_char = bytes_to_unicode()
    byte_ids = [tok.convert_tokens_to_ids(as_char[b]) for b in "恶".encode()]  # its 3 bytes, one token each
    byte_detok = IncrementalDetokenizer(_decode(tok))
    assert [byte_detok.push([t]) for t in byte_ids] == ["", "", "恶"]


@settings(max_examples=40, deadline=None)
@given(text=st.text(alphabet="头痛恶心呕吐，。ab #问题:", max_size=30),
       stops=st.lists(st.text(alphabet="头痛，。ab #问题:", min_size=1, max_size=4), min_size=1, max_size=3))
def test_stop_scanner_stops_at_the_same_token_as_a_full_decode(tok, text, stops):
    ids = _ids_of(tok, text)
    decode = _decode(tok)
    expected = next((i for i in range(1, len(ids) + 1) if cut_at_stop(decode(ids[:i]), stops)[1]), None)
    scanner = StopScanner(stops, decode)
    got = next((i for i in range(1, len(ids) + 1) if scanner.push(ids[i - 1:i])), None)
    assert got == expected


def test_hold_back_sets_the_event_and_never_leaks_a_stop():
    halt = threading.Event()
    assert "".join(hold_back_stops(["答案", "是#", "## 问", "题: 后面"], ["### 问题:"], halt)) == "答案是"
    assert halt.is_set()


# ---- stream_generation --------------------------------------------------------------------------
def test_text_producer_is_closed_at_a_stop_and_the_stop_is_never_shown():
    closed = threading.Event()

    def produce(sink):
        try:
            for piece in ["头痛", "可以", "###", " 问题:", "不该出现", *["x"] * 1000]:
                yield piece
        finally:
            closed.set()

    pieces, result = drain(stream_generation(produce, stops=["### 问题:"], prompt_tokens=7, max_new_tokens=64))
    assert "".join(pieces) == "头痛可以" and closed.is_set()
    assert (result.text, result.prompt_tokens, result.finish_reason) == ("头痛可以", 7, "stop")


def test_id_producer_counts_tokens_and_says_length(tok):
    ids = _ids_of(tok, "偏头痛常见症状包括头痛、恶心")

    def produce(sink):
        yield from ids

    pieces, result = drain(stream_generation(produce, stops=[], prompt_tokens=3, max_new_tokens=len(ids),
                                              decode=_decode(tok)))
    assert "".join(pieces) == "偏头痛常见症状包括头痛、恶心" == result.text
    assert (result.completion_tokens, result.finish_reason) == (len(ids), "length")
    _, shorter = drain(stream_generation(produce, stops=[], prompt_tokens=3, max_new_tokens=len(ids) + 5,
                                          decode=_decode(tok)))
    assert shorter.finish_reason == "stop"


def test_callback_producer_with_its_own_finish(tok):
    def produce(sink):
        for t in _ids_of(tok, "阿司匹林"):
            sink.emit(t)
        return Finish(completion_tokens=9, finish_reason="length")

    pieces, result = drain(stream_generation(produce, stops=[], prompt_tokens=1, max_new_tokens=9,
                                              decode=_decode(tok)))
    assert "".join(pieces) == "阿司匹林" and (result.completion_tokens, result.finish_reason) == (9, "length")


def test_cancel_before_the_start_runs_nothing_and_midway_stops_the_producer():
    ran = []
    preset = threading.Event()
    preset.set()
    pieces, result = drain(stream_generation(lambda sink: ran.append(1), stops=[], prompt_tokens=5,
                                              max_new_tokens=8, cancel=preset))
    assert pieces == [] and ran == [] and (result.text, result.completion_tokens, result.finish_reason) == (
        "", 0, "cancelled")

    cancel, steps = threading.Event(), []

    def produce(sink):
        for i in range(10_000):
            if sink.stopping():
                return None
            steps.append(i)
            sink.emit("字")
            if i == 2:
                cancel.set()
        return None

    _, result = drain(stream_generation(produce, stops=[], prompt_tokens=5, max_new_tokens=10_000, cancel=cancel))
    assert len(steps) == 3 and result.finish_reason == "cancelled"


def test_consumer_leaving_stops_the_producer_and_errors_reach_the_consumer(tok):
    ended = threading.Event()

    def endless(sink):
        while not sink.stopping():
            sink.emit("啊")
        ended.set()

    stream = stream_generation(endless, stops=[], prompt_tokens=1, max_new_tokens=10)
    assert next(stream).startswith("啊")
    stream.close()  # joins the worker: the producer has seen stopping()
    assert ended.is_set()

    def failing(sink):
        yield "先说"
        raise RuntimeError("model exploded")

    stream = stream_generation(failing, stops=[], prompt_tokens=1, max_new_tokens=10)
    assert next(stream) == "先说"
    with pytest.raises(RuntimeError, match="exploded"):
        next(stream)
    with pytest.raises(TypeError, match="decode"):
        drain(stream_generation(lambda sink: sink.emit([1, 2]), stops=[], prompt_tokens=1, max_new_tokens=4))
