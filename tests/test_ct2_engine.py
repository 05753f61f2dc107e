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


# ---- parallel lanes ------------------------------------------------------------------------------
class FakeGenerator:
    """Records ``generate_batch`` calls; answers each prompt with its first token ids (async: as futures)."""

    def __init__(self, fail_on: int | None = None):
        self.calls, self.fail_on = [], fail_on

    def generate_batch(self, prompts, asynchronous=False, callback=None, **kwargs):
        self.calls.append((len(prompts), sum(map(len, prompts)), asynchronous))
        failing = self.fail_on == len(self.calls) - 1
        for b in range(len(prompts)):
            callback(FakeStep(b, 7))
        return [FakeResult(failing) for _ in prompts] if asynchronous else []


class FakeStep:
    def __init__(self, batch_id: int, token_id: int):
        self.batch_id, self.token_id = batch_id, token_id


class FakeResult:
    def __init__(self, failing: bool):
        self.failing = failing

    def result(self):
        if self.failing:
            raise RuntimeError("lane failed")
        return None


def fake_decoder(tmp_path, lanes: int, generator: FakeGenerator):
    import json

    from qihuang.engines.ct2 import CT2Decoder

    (tmp_path / "vocabulary.json").write_text(json.dumps([f"t{i}" for i in range(50)]))
    decoder = CT2Decoder(tmp_path, "int8", threads=1, lanes=lanes)
    decoder._generators[1, lanes] = generator
    return decoder


def fake_job(rows: list[list[int]], **params):
    from qihuang.engines.decoding import DecodeJob

    return DecodeJob(None, None, rows, GenerationParams(max_new_tokens=4, **params), [], {2}, 0)


def test_lanes_get_a_jobs_calls_together_largest_first(tmp_path):
    rows = [[1] * n for n in (3, 40, 9, 20)]  # spread 2: four calls of one prompt each
    lanes = FakeGenerator()
    done = fake_decoder(tmp_path, 2, lanes).run(None, fake_job(rows))
    assert lanes.calls == [(1, 40, True), (1, 20, True), (1, 9, True), (1, 3, True)]
    assert done.ids == [[7]] * 4
    one = FakeGenerator()
    assert fake_decoder(tmp_path, 1, one).run(None, fake_job(rows)).ids == done.ids
    assert one.calls == [(1, 3, False), (1, 9, False), (1, 20, False), (1, 40, False)]  # as before: shortest first


def test_a_failing_lane_raises_after_every_call_is_over(tmp_path):
    lanes = FakeGenerator(fail_on=0)
    with pytest.raises(RuntimeError, match="lane failed"):
        fake_decoder(tmp_path, 2, lanes).run(None, fake_job([[1] * n for n in (3, 40, 9)]))
    assert len(lanes.calls) == 3


def test_a_seeded_job_runs_its_calls_on_one_lane(tmp_path, needs_ct2):
    decoder = fake_decoder(tmp_path, 2, FakeGenerator())
    seeded = []
    decoder._generator = lambda threads, lanes=1, fresh=False: seeded.append((lanes, fresh)) or FakeGenerator()
    decoder.run(None, fake_job([[1] * 3, [1] * 40], temperature=0.7, seed=5))
    assert seeded == [(1, True)]


def test_longest_first_weighs_prompt_tokens_and_steps():
    from qihuang.engines.ct2 import STEP_TOKENS, _longest_first

    rows = [[1] * n for n in (100, 10, 12, 50)]
    # [1, 2] forwards 22 tokens but steps 2 more than [3]: 22 + 16 * 6 > 50 + 16 * 4
    assert STEP_TOKENS == 16
    assert _longest_first([[0], [1, 2], [3]], rows, 4) == [[0], [1, 2], [3]]
    assert _longest_first([[3], [0]], rows, 4) == [[0], [3]]


def test_two_lanes_give_the_ids_of_one(engines):
    from qihuang.engines.ct2 import CT2Decoder, _runs
    from qihuang.engines.hf import HFEngine

    fp32, int8, _ = engines
    params = GenerationParams(max_new_tokens=16)
    assert len(_runs([list(fp32.encode(p).ids) for p in PROMPTS], 8)) > 1  # the lanes have calls to share
    for eng in (fp32, int8):
        one, two = (HFEngine(eng.model, eng.tokenizer, eng.template, batch_size=4,
                             decoder=CT2Decoder(eng.decoder.path, eng.decoder.weights, threads=1, lanes=n))
                    for n in (1, 2))
        assert two.generate(PROMPTS, params) == one.generate(PROMPTS, params) == eng.generate(PROMPTS, params)
        assert (1, 2) in two.decoder._generators


def test_decoding_leaves_torch_its_threads(engines):
    """CTranslate2 sets the calling thread's OpenMP thread count (one thread on 2 cores), which torch
    shares: put back after each run, or the quickstart's training after its untuned evaluation (same
    process) ran on one core (170 instead of 298 tokens/s on 2 cores)."""
    import torch

    _fp32, int8, _lean = engines
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for params in (GenerationParams(max_new_tokens=4), GenerationParams(max_new_tokens=4, seed=3, temperature=0.8)):
            int8.generate(PROMPTS, params)
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
