"""The llama.cpp backend on a tiny random Llama: same ids as the lean loop at F32, and the same
streaming, stop strings, cancellation and batching; ``backend="auto"`` falls back to the lean loop."""

from __future__ import annotations

import threading

import pytest
from engine_checks import check_stop_cuts_like, check_stream_matches_generate, write_visible_adapter

from qihuang.engines.base import GenerationParams
from qihuang.engines.load import load_engine
from qihuang.errors import ConfigError

PROMPTS = ["偏头痛的症状", "感冒应该吃什么药？请详细回答。", "What are the symptoms of migraine?",
           "高血压的并发症有哪些？"]


# ---- backend choice (no llama_cpp needed) ----------------------------------------------------
def test_auto_falls_back_to_lean_without_llama_cpp(tiny_llama, monkeypatch):
    from qihuang.engines import llamacpp

    monkeypatch.setattr(llamacpp, "available", lambda: False)
    engine = load_engine(str(tiny_llama), template="med_template", dtype="float32")
    assert engine.decoder.name == "lean"
    with pytest.raises(ConfigError, match="make install-llamacpp"):
        load_engine(str(tiny_llama), backend="llamacpp")


def test_auto_falls_back_for_a_model_llama_cpp_cannot_take(tiny_qwen2, monkeypatch, caplog):
    from qihuang.engines import llamacpp

    monkeypatch.setattr(llamacpp, "available", lambda: True)
    with caplog.at_level("WARNING"):
        engine = load_engine(str(tiny_qwen2), dtype="float32")
    assert engine.decoder.name == "lean"
    assert "qwen2" in caplog.text and "transformers backend" in caplog.text


def test_explicit_choices_keep_the_transformers_path(tiny_llama):
    assert load_engine(str(tiny_llama), backend="hf").decoder.name == "lean"
    assert load_engine(str(tiny_llama), decoder="lean").decoder.name == "lean"
    with pytest.raises(ConfigError, match="backend"):
        load_engine(str(tiny_llama), backend="ggml")


# ---- the engine itself (needs llama-cpp-python) ----------------------------------------------
@pytest.fixture(scope="module")
def engines(tiny_llama, tmp_path_factory):
    pytest.importorskip("llama_cpp")
    mp = pytest.MonkeyPatch()
    mp.setenv("QIHUANG_HOME", str(tmp_path_factory.mktemp("qh_llamacpp")))
    try:
        cpp = load_engine(str(tiny_llama), template="med_template", dtype="float32", backend="llamacpp",
                          gguf_type="f32", batch_size=4)
        lean = load_engine(str(tiny_llama), template="med_template", dtype="float32", backend="hf", batch_size=4)
    finally:
        mp.undo()
    yield cpp, lean
    cpp.close()


def test_greedy_ids_equal_the_lean_loop_at_f32(engines):
    from qihuang.engines.lean import decode
    from qihuang.engines.llamacpp import decode_rows

    cpp, lean = engines
    assert cpp.decoder.name == "llamacpp" and cpp.decoder.weights == "F32"
    params = GenerationParams(max_new_tokens=32)
    for prompt in PROMPTS:
        job = lean._job(lean._rows([prompt], 32), params, [], [])
        ref = decode(lean.model, job.input_ids, job.attention_mask, params, set(), job.pad_id)
        got = decode_rows(cpp.decoder.runner, job.rows, params, set(), threads=1)
        assert got.ids[0] == ref.ids[0] and len(ref.ids[0]) == 32
    assert cpp.generate(PROMPTS, params) == lean.generate(PROMPTS, params)


def test_batch_equals_one_by_one(engines):
    cpp, _ = engines
    params = GenerationParams(max_new_tokens=16)
    batched = cpp.generate(PROMPTS, params)
    assert batched == [cpp.generate([p], params)[0] for p in PROMPTS]
    assert all(r.completion_tokens == 16 and r.finish_reason == "length" for r in batched)


def test_stream_gives_the_generated_text(engines):
    cpp, _ = engines
    check_stream_matches_generate(cpp, PROMPTS[2])


def test_stop_strings_cut_like_the_lean_loop(engines):
    cpp, lean = engines
    check_stop_cuts_like(cpp, lean, PROMPTS[1])


def test_cancellation_ends_rows_at_the_next_step(engines):
    cpp, _ = engines
    params = GenerationParams(max_new_tokens=24)
    done = threading.Event()
    done.set()
    live = threading.Event()
    out = cpp.generate(PROMPTS[:2], params, cancels=[done, live])
    assert out[0].finish_reason == "cancelled" and out[0].completion_tokens == 0
    assert out[1].finish_reason == "length" and out[1].completion_tokens == 24
    cancel = threading.Event()
    stream = cpp.stream(PROMPTS[0], params, cancel=cancel)
    next(stream)
    cancel.set()
    rest = list(stream)
    try:
        next(stream)
    except StopIteration:
        pass
    assert len(rest) < 24


def test_sampling_is_reproducible_with_a_seed(engines):
    cpp, _ = engines
    params = GenerationParams(max_new_tokens=10, temperature=1.2, top_p=0.9, top_k=50, repetition_penalty=1.3, seed=3)
    first = cpp.generate(PROMPTS, params)
    assert first == cpp.generate(PROMPTS, params)
    assert first != cpp.generate(PROMPTS, GenerationParams(max_new_tokens=10))


def test_batches_larger_than_the_context_run_in_groups(engines):
    from qihuang.engines.llamacpp import _groups

    assert _groups([10, 10, 10], n_ctx=25, n_seq=8) == [[0, 1], [2]]
    assert _groups([5, 5, 5], n_ctx=100, n_seq=2) == [[0, 1], [2]]
    cpp, _ = engines
    params = GenerationParams(max_new_tokens=8)
    assert cpp.generate(PROMPTS * 2, params) == cpp.generate(PROMPTS, params) * 2


def test_a_merged_lora_adapter_runs_with_the_same_ids(tiny_llama, tmp_path, monkeypatch):
    pytest.importorskip("llama_cpp")
    adapter = write_visible_adapter(tiny_llama, tmp_path / "adapter", ["q_proj", "k_proj", "v_proj", "down_proj"])
    cpp = load_engine(str(tiny_llama), adapter=str(adapter), template="med_template", dtype="float32",
                      backend="llamacpp", gguf_type="f32")
    lean = load_engine(str(tiny_llama), adapter=str(adapter), template="med_template", dtype="float32", backend="hf")
    base = load_engine(str(tiny_llama), template="med_template", dtype="float32", backend="hf")
    params = GenerationParams(max_new_tokens=24)
    got = cpp.generate(PROMPTS, params)
    assert got == lean.generate(PROMPTS, params)
    assert got != base.generate(PROMPTS, params)  # the adapter is in the weights llama.cpp runs
    cpp.close()
