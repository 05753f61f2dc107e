"""The CTranslate2 backend on tiny random models: qihuang's own conversion gives the transformers
logits (float32) and the lean loop's greedy ids, int8 stays close; streaming, stop strings,
cancellation, seeds, batching, the conversion cache, and what ``backend="auto"`` picks."""

from __future__ import annotations

import threading

import pytest
from engine_checks import check_stop_cuts_like, check_stream_matches_generate, write_visible_adapter
from streams import drain

from qihuang.engines.base import GenerationParams
from qihuang.engines.load import load_engine
from qihuang.errors import ConfigError

PROMPTS = ["偏头痛的症状", "感冒应该吃什么药？请详细回答。", "What are the symptoms of migraine?",
           "高血压的并发症有哪些？"]


# ---- backend choice (no ctranslate2 needed) -----------------------------------------------------
def test_auto_uses_the_transformers_path_without_ctranslate2(tiny_llama, monkeypatch):
    from qihuang.engines import ct2, llamacpp

    monkeypatch.setattr(ct2, "available", lambda: False)
    monkeypatch.setattr(llamacpp, "available", lambda: False)
    assert load_engine(str(tiny_llama), template="med_template").decoder.name == "lean"
    with pytest.raises(ConfigError, match="pip install ctranslate2"):
        load_engine(str(tiny_llama), backend="ct2")


# ---- the engine itself (needs ctranslate2) ------------------------------------------------------
@pytest.fixture
def needs_ct2():
    pytest.importorskip("ctranslate2")


@pytest.fixture(scope="module")
def engines(tiny_llama, tmp_path_factory):
    pytest.importorskip("ctranslate2")
    with pytest.MonkeyPatch.context() as home:  # conversions go to this module's own $QIHUANG_HOME
        home.setenv("QIHUANG_HOME", str(tmp_path_factory.mktemp("qh_ct2")))
        fp32 = load_engine(str(tiny_llama), template="med_template", dtype="float32", backend="ct2", batch_size=4)
        int8 = load_engine(str(tiny_llama), template="med_template", batch_size=4)  # auto
        lean = load_engine(str(tiny_llama), template="med_template", dtype="float32", backend="hf", batch_size=4)
    yield fp32, int8, lean
    fp32.close()
    int8.close()


def ct2_logits(engine, ids: list[int]):
    """CTranslate2's logits at every position of ``ids`` (one forward, no cache)."""
    import numpy as np

    gen = engine.decoder._generator(1)
    out = gen.forward_batch([[engine.decoder.vocab[t] for t in ids]])
    return np.array(out)[0]


def test_auto_picks_int8_ct2_and_float32_converts_exactly(engines):
    import torch

    fp32, int8, lean = engines
    assert (fp32.decoder.name, fp32.decoder.weights) == ("ct2", "float32")
    assert (int8.decoder.name, int8.decoder.weights) == ("ct2", "int8")
    ids = lean.encode(PROMPTS[1]).ids
    with torch.inference_mode():
        ref = lean.model(input_ids=torch.tensor([ids])).logits[0].float().numpy()
    exact, quant = ct2_logits(fp32, ids), ct2_logits(int8, ids)
    scale = abs(ref).max()
    assert abs(exact - ref).max() < 1e-3 * scale  # rotary, grouped heads, norms, tied output: all as transformers
    assert abs(quant - ref).max() < 0.1 * scale
    assert abs(quant - ref).max() > abs(exact - ref).max()  # int8 really runs


def test_float32_greedy_ids_equal_the_lean_loop(engines):
    fp32, _, lean = engines
    params = GenerationParams(max_new_tokens=24)
    assert fp32.generate(PROMPTS, params) == lean.generate(PROMPTS, params)


def test_batch_equals_one_by_one_and_counts_tokens(engines):
    fp32, _, lean = engines
    params = GenerationParams(max_new_tokens=16)
    batched = fp32.generate(PROMPTS, params)
    assert batched == [fp32.generate([p], params)[0] for p in PROMPTS]
    assert all(r.completion_tokens == 16 and r.finish_reason == "length" for r in batched)
    assert [r.prompt_tokens for r in batched] == [fp32.count_tokens(p) for p in PROMPTS]
    assert fp32.count_tokens(PROMPTS[2]) == len(lean.tokenizer(PROMPTS[2])["input_ids"])
    assert fp32.context_length == lean.context_length == 2048


def test_stream_gives_the_generated_text(engines):
    fp32, int8, _ = engines
    check_stream_matches_generate(fp32, PROMPTS[2])
    check_stream_matches_generate(int8, PROMPTS[2])


def test_stop_strings_cut_like_the_lean_loop(engines):
    fp32, _, lean = engines
    check_stop_cuts_like(fp32, lean, PROMPTS[1])


def test_a_terminator_ends_a_row_and_is_not_kept(engines):
    fp32, _, _ = engines
    params = GenerationParams(max_new_tokens=12)
    for prompt in PROMPTS:
        row = list(fp32.encode(prompt).ids)
        free = fp32._job([row], params, [], [])
        free.terminators = set()  # none: ct2 would otherwise end at its config's end token
        ids = fp32.decoder.run(None, free).ids[0]
        assert len(ids) == 12
        k = next((i for i in range(1, len(ids)) if ids[i] not in ids[:i]), 0)  # a token first seen at step k
        job = fp32._job([row], params, [], [])
        job.terminators = {ids[k]}
        done = fp32.decoder.run(None, job)
        assert done.ids[0] == ids[:k] and done.ended == [True] and done.stopped == [False]


def test_cancellation_ends_rows_at_the_next_step(engines):
    fp32, _, _ = engines
    params = GenerationParams(max_new_tokens=24)
    done, live = threading.Event(), threading.Event()
    done.set()
    out = fp32.generate(PROMPTS[:2], params, cancels=[done, live])
    assert out[0].finish_reason == "cancelled" and out[0].completion_tokens == 0
    assert out[1].finish_reason == "length" and out[1].completion_tokens == 24
    cancel = LaterCancel(after=6)  # set while the stream runs, whatever the threads' timing
    pieces, result = drain(fp32.stream(PROMPTS[0], params, cancel=cancel))
    assert result.finish_reason == "cancelled" and 0 < result.completion_tokens < 24


class LaterCancel:
    """A cancel event that reads as set from its ``after``-th question on."""

    def __init__(self, after: int):
        self.after, self.asked = after, 0

    def is_set(self) -> bool:
        self.asked += 1
        return self.asked >= self.after


def test_cancel_set_during_a_batch_ends_only_that_row(engines):
    fp32, _, _ = engines
    cancel = threading.Event()
    steps = {"n": 0}
    job = fp32._job([list(fp32.encode(p).ids) for p in PROMPTS[1:3]], GenerationParams(max_new_tokens=20), [],
                    [cancel, None])
    ask = job.cancelled

    def cancelled(r: int) -> bool:
        steps["n"] += 1
        if steps["n"] == 6:
            cancel.set()
        return ask(r)

    job.cancelled = cancelled
    done = fp32.decoder.run(None, job)
    assert done.cancelled == [True, False]
    assert 0 < len(done.ids[0]) < 20 and len(done.ids[1]) == 20


def test_sampling_is_reproducible_with_a_seed(engines):
    _, int8, _ = engines
    params = GenerationParams(max_new_tokens=10, temperature=1.2, top_p=0.9, top_k=50, repetition_penalty=1.3, seed=3)
    first = int8.generate(PROMPTS, params)
    assert first == int8.generate(PROMPTS, params)
    other = GenerationParams(max_new_tokens=10, temperature=1.2, top_p=0.9, top_k=50, seed=4)
    assert first != int8.generate(PROMPTS, other)
    assert first != int8.generate(PROMPTS, GenerationParams(max_new_tokens=10))


def test_one_token_prompts_batch_with_longer_ones(engines):
    from qihuang.engines.ct2 import _runs

    assert _runs([[5], [1, 2, 3], [7], [4, 4]]) == [[3], [1], [0, 2]]
    assert _runs([[5], [1, 2, 3], [7], [4, 4]], spread=1) == [[3, 1], [0, 2]]
    # sorted by length; a call holds prompts at most ``spread`` tokens longer than its shortest
    rows = [[1] * n for n in (9, 2, 30, 5, 12, 3)]
    assert _runs(rows, spread=4) == [[1, 5, 3], [0, 4], [2]]
    fp32, _, lean = engines
    one = fp32.tokenizer.convert_ids_to_tokens(fp32.encode(PROMPTS[0]).ids)
    assert len(one) == 1  # the tiny tokenizer learnt this prompt as one token
    params = GenerationParams(max_new_tokens=12)
    assert fp32.generate(PROMPTS, params) == [fp32.generate([p], params)[0] for p in PROMPTS]


# ---- conversion and its cache --------------------------------------------------------------------
def test_the_conversion_is_cached_and_a_changed_model_converts_anew(tiny_llama, tmp_path, monkeypatch, needs_ct2):
    from qihuang.engines import ct2

    first = load_engine(str(tiny_llama), template="med_template", dtype="float32", backend="ct2")
    path = first.decoder.path
    root = tmp_path / "qihuang_home" / "models" / "ct2"
    assert str(root) in path and sorted(p.name for p in root.iterdir()) == [path.rsplit("/", 1)[1]]  # no temp dirs

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again")

    with monkeypatch.context() as patched:
        patched.setattr(ct2, "write_model", no_conversion)
        again = load_engine(str(tiny_llama), template="med_template", dtype="float32", backend="ct2")
    assert again.decoder.path == path

    adapter = write_visible_adapter(tiny_llama, tmp_path / "adapter", ["q_proj", "v_proj", "down_proj"])
    tuned = load_engine(str(tiny_llama), adapter=str(adapter), template="med_template", dtype="float32",
                        backend="ct2")
    lean = load_engine(str(tiny_llama), adapter=str(adapter), template="med_template", dtype="float32", backend="hf")
    assert tuned.decoder.path != path
    params = GenerationParams(max_new_tokens=16)
    got = tuned.generate(PROMPTS, params)
    assert got == lean.generate(PROMPTS, params)  # the merged adapter is in the converted weights
    assert got != first.generate(PROMPTS, params)


def test_qwen2_converts_with_its_biases(tiny_qwen2, needs_ct2):
    ct = load_engine(str(tiny_qwen2), dtype="float32", backend="ct2")
    lean = load_engine(str(tiny_qwen2), dtype="float32", backend="hf")
    assert ct.decoder.name == "ct2"
    params = GenerationParams(max_new_tokens=16)
    assert ct.generate(PROMPTS, params) == lean.generate(PROMPTS, params)


def test_unconvertible_models_fall_back_or_are_refused(tmp_path, monkeypatch, caplog, needs_ct2):
    from tiny_models import build_tiny_model

    from qihuang.engines import llamacpp

    monkeypatch.setattr(llamacpp, "available", lambda: False)
    glm = build_tiny_model(tmp_path / "glm", "glm")
    with caplog.at_level("WARNING"):
        engine = load_engine(str(glm))
    assert engine.decoder.name == "lean" and "ct2 cannot run" in caplog.text and "'glm'" in caplog.text
    with pytest.raises(ConfigError, match="'ct2' cannot run"):
        load_engine(str(glm), backend="ct2")
    with pytest.raises(ConfigError, match="int8 or float32"):
        load_engine(str(glm), backend="ct2", dtype="bfloat16")


def test_dtype_pinned_by_the_caller_keeps_the_transformers_path(tiny_llama, needs_ct2, monkeypatch):
    from qihuang.engines import llamacpp

    monkeypatch.setattr(llamacpp, "available", lambda: False)
    assert load_engine(str(tiny_llama), dtype="float32").decoder.name == "lean"
    assert load_engine(str(tiny_llama), quantize="int8").decoder.name == "lean"


def test_an_engine_dropped_right_after_generating_is_freed_safely(engines):
    """The generator must never be freed on its own worker thread (the process would abort)."""
    import gc

    from qihuang.engines.ct2 import CT2Decoder
    from qihuang.engines.hf import HFEngine

    fp32, _, _ = engines
    for _ in range(30):
        engine = HFEngine(fp32.model, fp32.tokenizer, fp32.template, decoder=CT2Decoder(fp32.decoder.path, "float32"))
        assert engine.generate(PROMPTS[1:3], GenerationParams(max_new_tokens=2, stop=["。。"]))[0].completion_tokens
        del engine
        gc.collect()
