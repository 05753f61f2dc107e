"""Model families the seed projects use (Llama, Qwen2, GLM, GLM-4, Bloom), tiny and random, each
through SFT (LoRA and full), export, grounded inference and `serve`; one context-length rule."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from kb_fixture import make_tiny_kb
from tiny_models import ARCHS, build_tiny_model

from qihuang.answer.answerer import Answerer
from qihuang.engines.base import GenerationParams
from qihuang.engines.load import load_engine
from qihuang.cli import main
from qihuang.models.load import DEFAULT_CONTEXT, context_length

LLAMA_DATA = Path(__file__).parent / "fixtures" / "seeds" / "huatuo" / "data" / "llama_data.json"


@pytest.mark.parametrize("config, tokenizer, expected", [
    (SimpleNamespace(max_position_embeddings=4096), SimpleNamespace(model_max_length=int(1e30)), 4096),
    (SimpleNamespace(), SimpleNamespace(model_max_length=int(1e30)), DEFAULT_CONTEXT),  # Bloom
    (SimpleNamespace(), None, DEFAULT_CONTEXT),
    (SimpleNamespace(n_positions=1024), None, 1024),  # GPT-2
    (SimpleNamespace(seq_length=8192), SimpleNamespace(model_max_length=32768), 8192),  # ChatGLM
    (SimpleNamespace(max_position_embeddings=131072), SimpleNamespace(model_max_length=4096), 4096),
    (SimpleNamespace(text_config=SimpleNamespace(max_position_embeddings=512)), None, 512),
    (SimpleNamespace(max_position_embeddings=None), SimpleNamespace(model_max_length=1e30), DEFAULT_CONTEXT),
])
def test_context_length_rule(config, tokenizer, expected):
    assert context_length(config, tokenizer) == expected
    assert context_length(SimpleNamespace(config=config), tokenizer) == expected  # a model works too


@pytest.fixture(scope="module")
def kb(tmp_path_factory):
    return make_tiny_kb(tmp_path_factory.mktemp("kb") / "kb.sqlite")


def _train(model, out, finetuning, template):
    assert main(["train", "--model", str(model), "--dataset", str(LLAMA_DATA), "--template", template,
                 "--grounded", "--finetuning", finetuning, "--max-steps", "1", "--batch-size", "2",
                 "--cutoff-len", "96", "--learning-rate", "1e-3", "--output", str(out), "--num-threads", "1",
                 "--no-eval-at-start", "--save-steps", "1"]) == 0


def _grounded_answer(model_dir, kb):
    engine = load_engine(str(model_dir), dtype="float32")
    answer = Answerer(engine, kb, params=GenerationParams(max_new_tokens=6)).answer("偏头痛吃什么药？")
    assert answer.grounded and answer.citations[0].entity == "偏头痛" and answer.disclaimer
    return engine


@pytest.mark.parametrize("arch", ARCHS)
def test_family_sft_export_grounded_inference_and_serve(arch, kb, tmp_path):
    from fastapi.testclient import TestClient

    from qihuang.serve.app import create_app

    base = build_tiny_model(tmp_path / "base", arch)
    template = "bloom_deploy" if arch == "bloom" else "med_template"
    _train(base, tmp_path / "lora", "lora", template)
    _train(base, tmp_path / "full", "full", template)
    assert main(["export", "--adapter", str(tmp_path / "lora"), "--out", str(tmp_path / "merged")]) == 0
    for out in ("lora", "merged", "full"):
        engine = _grounded_answer(tmp_path / out, kb)
        assert engine.template.name == template
    client = TestClient(create_app(Answerer(engine, kb, params=GenerationParams(max_new_tokens=4))))
    reply = client.post("/v1/chat/completions", json={"model": "qihuang", "messages": [
        {"role": "user", "content": "感冒了怎么办"}, {"role": "assistant", "content": "多休息。"},
        {"role": "user", "content": "感冒吃什么药"}]})
    assert reply.status_code == 200, reply.text
    body = reply.json()  # a random model may say nothing; the grounding and the disclaimer are still there
    assert isinstance(body["choices"][0]["message"]["content"], str)
    assert body["qihuang"]["citations"][0]["entity"] == "感冒"
