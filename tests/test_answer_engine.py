"""The transformers engine on a tiny random model: batching, streaming, stop strings, scoring."""

from __future__ import annotations

import pytest

from qihuang.answer.engine import (Engine, GenerationParams, HFEngine, _hold_back_stops, choose_dtype, clean_text,
                                   cut_at_stop, load_engine)
from qihuang.errors import ConfigError

PROMPTS = ["偏头痛的症状", "感冒应该吃什么药？请详细回答。", "What are the symptoms of migraine?"]


@pytest.fixture(scope="module")
def engine(tiny_llama) -> HFEngine:
    return load_engine(str(tiny_llama), template="med_template", dtype="float32", batch_size=4)


def test_engine_satisfies_protocol(engine):
    assert isinstance(engine, Engine)
    assert engine.template.name == "med_template" and engine.model_name == str(engine.model_name)


def test_batched_equals_one_by_one(engine):
    params = GenerationParams(max_new_tokens=12)
    batched = engine.generate(PROMPTS, params)
    single = [engine.generate([p], params)[0] for p in PROMPTS]
    assert batched == single
    assert all(isinstance(t, str) and t for t in batched)


def test_stream_gives_the_same_text(engine):
    params = GenerationParams(max_new_tokens=12)
    assert clean_text("".join(engine.stream(PROMPTS[0], params))) == engine.generate([PROMPTS[0]], params)[0]


def test_stop_string_cuts_generation(engine):
    params = GenerationParams(max_new_tokens=16)
    full = engine.generate([PROMPTS[1]], params)[0]
    assert len(full) >= 4
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    expected = full[: full.find(stop)].strip()
    stopped = GenerationParams(max_new_tokens=16, stop=[stop])
    assert engine.generate([PROMPTS[1]], stopped)[0] == expected
    assert "".join(engine.stream(PROMPTS[1], stopped)).strip() == expected


def test_sampling_is_reproducible_with_a_seed(engine):
    params = GenerationParams(max_new_tokens=10, temperature=1.5, top_p=0.9, top_k=50, seed=7)
    assert engine.generate([PROMPTS[0]], params) == engine.generate([PROMPTS[0]], params)


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
    assert "".join(_hold_back_stops(pieces, ["###问题"], threading.Event())) == "答案是"
    assert "".join(_hold_back_stops(["ab", "c"], [], threading.Event())) == "abc"
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
