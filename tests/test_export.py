"""`qihuang export`: LoRA merged into the base loads with plain transformers and gives the same greedy output."""

from __future__ import annotations

import pytest
from answer_fakes import make_tiny_adapter

from qihuang.cli import main

PROMPTS = ["### 问题:\n偏头痛吃什么药？\n### 回答:\n", "### 问题:\n感冒了怎么办\n### 回答:\n"]


def _greedy(model, tokenizer, n=12):
    import torch

    tokenizer.padding_side = "left"
    enc = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=n, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return out[:, enc["input_ids"].shape[1]:].tolist()


@pytest.fixture(scope="module")
def adapter(tiny_llama, tmp_path_factory):
    return make_tiny_adapter(tiny_llama, tmp_path_factory.mktemp("adapter") / "lora")


def test_export_round_trip(tiny_llama, adapter, tmp_path, capsys):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "merged"
    assert main(["export", "--adapter", str(adapter), "--out", str(out)]) == 0
    assert "merged model written" in capsys.readouterr().out
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "qihuang_template.json",
            "qihuang_meta.json"} <= names
    assert "adapter_config.json" not in names

    tokenizer = AutoTokenizer.from_pretrained(out)
    merged = AutoModelForCausalLM.from_pretrained(out).eval()  # plain transformers, no peft
    base = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    base_out = _greedy(base, tokenizer)
    with_adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama), str(adapter)).eval()
    assert _greedy(merged, tokenizer) == _greedy(with_adapter, tokenizer)
    assert _greedy(merged, tokenizer) != base_out  # the adapter really changes the model


def test_exported_dir_keeps_the_template(adapter, tmp_path):
    from qihuang.engines.load import load_engine

    out = tmp_path / "merged"
    assert main(["export", "--adapter", str(adapter), "--out", str(out)]) == 0
    engine = load_engine(str(out), dtype="float32")
    assert engine.template.name == "med_template"


def test_existing_output_needs_force(adapter, tmp_path, capsys):
    out = tmp_path / "merged"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert main(["export", "--adapter", str(adapter), "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err and (out / "keep.txt").exists()
    assert main(["export", "--adapter", str(adapter), "--out", str(out), "--force"]) == 0
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_not_an_adapter(tiny_llama, tmp_path, capsys):
    assert main(["export", "--adapter", str(tiny_llama), "--out", str(tmp_path / "o")]) == 2
    assert "not a LoRA adapter" in capsys.readouterr().err
