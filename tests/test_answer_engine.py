"""The transformers engine on a tiny random model: batching, streaming, stop strings, scoring."""

from __future__ import annotations

import threading

import pytest
from streams import drain

from qihuang.engines.base import Engine, GenerationParams
from qihuang.engines.hf import HFEngine
from qihuang.engines.load import load_engine
from qihuang.engines.streaming import clean_text, cut_at_stop, hold_back_stops
from qihuang.errors import ConfigError
from qihuang.models.load import choose_dtype

PROMPTS = ["偏头痛的症状", "感冒应该吃什么药？请详细回答。", "What are the symptoms of migraine?"]


def texts(engine, prompts, params):
    return [r.text for r in engine.generate(prompts, params)]


@pytest.fixture(scope="module")
def engine(tiny_llama) -> HFEngine:
    return load_engine(str(tiny_llama), template="med_template", dtype="float32", batch_size=4)


def test_engine_satisfies_protocol(engine):
    assert isinstance(engine, Engine)
    assert engine.template.name == "med_template" and engine.model_name == str(engine.model_name)


def test_batched_equals_one_by_one(engine):
    params = GenerationParams(max_new_tokens=12)
    batched = texts(engine, PROMPTS, params)
    single = [texts(engine, [p], params)[0] for p in PROMPTS]
    assert batched == single
    assert all(isinstance(t, str) and t for t in batched)


def test_stream_gives_the_same_text(engine):
    params = GenerationParams(max_new_tokens=12)
    assert clean_text("".join(engine.stream(PROMPTS[0], params))) == texts(engine, [PROMPTS[0]], params)[0]


def test_stop_string_cuts_generation(engine):
    params = GenerationParams(max_new_tokens=16)
    full = texts(engine, [PROMPTS[1]], params)[0]
    assert len(full) >= 4
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    expected = full[: full.find(stop)].strip()
    stopped = GenerationParams(max_new_tokens=16, stop=[stop])
    assert texts(engine, [PROMPTS[1]], stopped)[0] == expected
    assert "".join(engine.stream(PROMPTS[1], stopped)).strip() == expected


def test_sampling_is_reproducible_with_a_seed(engine):
    params = GenerationParams(max_new_tokens=10, temperature=1.5, top_p=0.9, top_k=50, seed=7)
    assert texts(engine, [PROMPTS[0]], params) == texts(engine, [PROMPTS[0]], params)


def test_loglikelihood_matches_a_manual_forward(engine):
    import torch

    ctx, cont = "偏头痛的症状有哪些？", "头痛、恶心"
    tok = engine.tokenizer
    ids = tok(ctx)["input_ids"] + tok(cont, add_special_tokens=False)["input_ids"]
    n = len(tok(cont, add_special_tokens=False)["input_ids"])
    with torch.no_grad():
        logp = torch.log_softmax(engine.model(torch.tensor([ids])).logits[0].float(), -1)
    manual = sum(float(logp[i - 1, ids[i]]) for i in range(len(ids) - n, len(ids)))
    scores = engine.loglikelihood([(ctx, cont), ("短", "头痛、恶心和呕吐都很常见"), (ctx, cont)])
    assert scores[0] == pytest.approx(manual, abs=1e-4)
    assert scores[2] == pytest.approx(scores[0], abs=1e-5)  # batching/padding does not change it
    assert all(s < 0 for s in scores)


def test_hold_back_never_leaks_a_partial_stop():
    import threading

    pieces = ["答案", "是##", "#问", "题后面"]
    assert "".join(hold_back_stops(pieces, ["###问题"], threading.Event())) == "答案是"
    assert "".join(hold_back_stops(["ab", "c"], [], threading.Event())) == "abc"
    assert cut_at_stop("abc", ["x"]) == ("abc", False)


@pytest.mark.parametrize("kwargs, field", [
    ({"max_new_tokens": 0}, "max_new_tokens"), ({"temperature": -1}, "temperature"),
    ({"top_p": 0}, "top_p"), ({"top_k": -1}, "top_k"), ({"stop": [""]}, "stop"),
])
def test_bad_params_name_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        GenerationParams(**kwargs)


def test_dtype_choice():
    assert choose_dtype("float32") == "float32"
    assert choose_dtype("auto", "cpu") in ("float32", "bfloat16")
    with pytest.raises(ConfigError, match="dtype"):
        choose_dtype("int3")
    with pytest.raises(ConfigError, match="backend"):
        load_engine(backend="tgi")


def test_vllm_backend_says_how_to_install_when_missing():
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed")
    with pytest.raises(ConfigError, match="pip install vllm"):
        load_engine("default", backend="vllm")


def test_stops_follow_the_resolved_template():
    from answer_fakes import CharTokenizer

    from qihuang.data.prompts import get_template

    params = GenerationParams(stop=["END"])
    # a chat template used with a tokenizer that has none falls back to alpaca, with its stops
    assert params.stop_with_template(get_template("auto"), CharTokenizer()) == ["END", "### Instruction:"]
    assert params.stop_with_template(get_template("med_template"), CharTokenizer()) == ["END", "### 问题:"]


# ---- results: usage from token ids, finish reasons, cancellation, context length -------------
class _CountingEvent:
    """A cancel event that turns set after ``after`` checks (one check per decoding step)."""

    def __init__(self, after: int):
        self.after, self.checks = after, 0

    def is_set(self) -> bool:
        self.checks += 1
        return self.checks > self.after

    def set(self) -> None:
        self.after = -1


def _manual_new_tokens(engine, prompt: str, n: int) -> list[int]:
    import torch

    enc = engine.tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        out = engine.model.generate(**enc, max_new_tokens=n, do_sample=False,
                                    pad_token_id=engine.tokenizer.pad_token_id,
                                    eos_token_id=engine.tokenizer.eos_token_id)
    new = out[0, enc["input_ids"].shape[1]:].tolist()
    eos = engine.tokenizer.eos_token_id
    return new[: new.index(eos)] if eos in new else new


@pytest.mark.parametrize("n", [4, 16])
def test_results_count_generated_tokens_and_say_length(engine, n):
    results = engine.generate(PROMPTS, GenerationParams(max_new_tokens=n))
    for prompt, result in zip(PROMPTS, results):
        new = _manual_new_tokens(engine, prompt, n)
        assert result.completion_tokens == len(new)
        assert result.prompt_tokens == len(engine.tokenizer(prompt)["input_ids"])
        assert result.finish_reason == ("length" if len(new) == n else "stop")
    assert any(r.finish_reason == "length" for r in results)
    assert [r.text for r in results] == texts(engine, PROMPTS, GenerationParams(max_new_tokens=n))


def test_stream_returns_the_same_result(engine):
    params = GenerationParams(max_new_tokens=12)
    pieces, result = drain(engine.stream(PROMPTS[0], params))
    assert result == engine.generate([PROMPTS[0]], params)[0]
    assert clean_text("".join(pieces)) == result.text


def test_cancel_stops_within_one_step(engine):
    params = GenerationParams(max_new_tokens=60)
    ev = _CountingEvent(after=3)
    done, live = engine.generate(PROMPTS[:2], params, cancels=[ev, None])
    assert done.finish_reason == "cancelled" and done.completion_tokens <= 4
    assert live.finish_reason != "cancelled"
    preset = threading.Event()
    preset.set()
    assert engine.generate([PROMPTS[0]], params, cancels=[preset])[0].completion_tokens == 0
    stream = engine.stream(PROMPTS[0], params, cancel=_CountingEvent(after=3))
    with pytest.raises(StopIteration) as end:
        while True:
            next(stream)
    assert end.value.value.finish_reason == "cancelled" and end.value.value.completion_tokens <= 4


def test_sampler_breaking_params_are_refused_or_greedy(engine):
    with pytest.raises(ConfigError, match="repetition_penalty"):
        GenerationParams(repetition_penalty=1e-300)
    with pytest.raises(ConfigError, match="seed"):
        GenerationParams(seed=2**70)
    tiny_t = GenerationParams(max_new_tokens=6, temperature=1e-300, seed=1)
    assert tiny_t.greedy
    assert texts(engine, [PROMPTS[0]], tiny_t) == texts(engine, [PROMPTS[0]], GenerationParams(max_new_tokens=6))


def test_context_length_rule():
    from types import SimpleNamespace

    from transformers import BloomConfig, GPT2Config

    from qihuang.models.load import context_length

    huge = SimpleNamespace(model_max_length=int(1e30))
    assert context_length(BloomConfig(), huge) == 2048  # no position limit, sentinel tokenizer length
    assert context_length(BloomConfig(), SimpleNamespace(model_max_length=4096)) == 4096
    assert context_length(GPT2Config(), huge) == 1024  # n_positions
    assert context_length(SimpleNamespace(max_position_embeddings=8192), huge) == 8192


# ---- the lean decoder (default on CPU) against transformers' generate -----------------------
def test_cpu_default_is_the_lean_decoder_and_matches_generate(engine, tiny_llama):
    reference = load_engine(str(tiny_llama), template="med_template", dtype="float32", decoder="generate")
    assert engine.decoder.name == "lean" and reference.decoder.name == "generate"
    for n in (4, 16):
        params = GenerationParams(max_new_tokens=n)
        assert engine.generate(PROMPTS, params) == reference.generate(PROMPTS, params)
    stopped = GenerationParams(max_new_tokens=16, stop=["a"])
    assert texts(engine, PROMPTS, stopped) == texts(reference, PROMPTS, stopped)
    with pytest.raises(ConfigError, match="decoder"):
        load_engine(str(tiny_llama), decoder="fast")


def test_stop_strings_go_to_transformers_and_both_decoders_stop_at_the_same_token(engine, tiny_llama):
    reference = load_engine(str(tiny_llama), template="med_template", dtype="float32", decoder="generate")
    full = texts(reference, [PROMPTS[1]], GenerationParams(max_new_tokens=16))[0]
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    params = GenerationParams(max_new_tokens=16, stop=[stop])
    ours, theirs = engine.generate(PROMPTS, params), reference.generate(PROMPTS, params)
    assert ours == theirs and theirs[1].text == full[: full.find(stop)].strip()
    assert theirs[1].completion_tokens < 16  # generation ended at the stop, not at the token limit
    pieces, result = drain(reference.stream(PROMPTS[1], params))
    assert "".join(pieces).strip() == theirs[1].text and result == theirs[1]


def test_transformers_stop_matcher_sees_only_the_continuation(engine):
    import torch

    from qihuang.engines.hf import _stop_criteria

    tok = engine.tokenizer
    prompt = tok("感冒吃什么药。", add_special_tokens=False)["input_ids"]
    check = _stop_criteria(tok, ["。。"], len(prompt))

    def stops_after(text: str) -> bool:
        ids = prompt + tok(text, add_special_tokens=False)["input_ids"]
        return bool(check(torch.tensor([ids]), None)[0])

    assert not stops_after("。")  # would match across the prompt's last "。"
    assert stops_after("。。") and stops_after("布洛芬。。") and not stops_after("布洛芬。")


def test_decode_threads_drop_to_one_on_a_busy_machine():
    from qihuang.engines.decoding import decode_threads

    assert decode_threads(2, load=0.3, n_cores=2) == 2
    assert decode_threads(2, load=2.4, n_cores=2) == 2  # our own decoding alone keeps both cores
    assert decode_threads(2, load=5.0, n_cores=2) == 1
    assert decode_threads(8, load=3.0, n_cores=16) == 8


def test_int8_weights_stay_close_to_the_float_model(tiny_llama):
    import torch

    plain = load_engine(str(tiny_llama), template="med_template", dtype="float32")
    quant = load_engine(str(tiny_llama), template="med_template", dtype="bfloat16", quantize="int8")
    assert not any(isinstance(m, torch.nn.Linear) for m in quant.model.modules())
    enc = plain.tokenizer(PROMPTS[0], return_tensors="pt")
    with torch.inference_mode():
        a = plain.model(**enc).logits.float()
        b = quant.model(**enc).logits.float()
    assert (a - b).abs().max() < 0.1 * a.abs().max()
    assert quant.generate([PROMPTS[0]], GenerationParams(max_new_tokens=4))[0].text
    with pytest.raises(ConfigError, match="quantize"):
        load_engine(str(tiny_llama), quantize="int4")


def test_padded_decoders_batch_prompts_of_similar_lengths(engine):
    rows = {0: [1] * 470, 1: [1] * 50, 2: [1] * 52, 3: [1] * 246, 4: [1] * 240, 5: [1] * 54}
    groups = engine._groups(list(rows), rows)
    assert groups == [[1, 2, 5], [4, 3], [0]]  # shortest first; a 470-token prompt does not pad the others
    assert all(len(g) <= engine.batch_size for g in groups)
    unpadded = type("Unpadded", (), {"pads": False})()
    original, engine.decoder = engine.decoder, unpadded
    try:
        # unpadded: shortest first too (CTranslate2 forwards a call only up to its shortest prompt at once),
        # batch_size at a time
        assert engine._groups(list(rows), rows) == [[1, 2, 5, 4], [3, 0]]
    finally:
        engine.decoder = original
