"""Tests for the tiny model fixtures and qihuang.models.load."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from qihuang.errors import ConfigError
from qihuang.models import load as mload


def test_tiny_fixtures_load(tiny_llama, tiny_qwen2):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for path, model_type in ((tiny_llama, "llama"), (tiny_qwen2, "qwen2")):
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path)
        assert model.config.model_type == model_type
        assert tok.pad_token_id == tok.eos_token_id == model.config.eos_token_id
        text = tok.apply_chat_template([{"role": "user", "content": "偏头痛"}], tokenize=False,
                                       add_generation_prompt=True)
        assert text.endswith("<|im_start|>assistant\n")
        assert tok.decode(tok(text)["input_ids"]) == text  # byte-level BPE round-trips Chinese


def test_resolve_model_passes_dirs_and_hub_ids(tiny_llama, tmp_path):
    assert mload.resolve_model(tiny_llama) == str(Path(tiny_llama).resolve())
    assert mload.resolve_model("Qwen/Qwen2.5-7B-Instruct") == "Qwen/Qwen2.5-7B-Instruct"
    with pytest.raises(ConfigError, match="GGUF file not found"):
        mload.resolve_model(tmp_path / "missing.gguf")
    (tmp_path / "file.bin").write_text("x")
    with pytest.raises(ConfigError, match="not a model directory"):
        mload.resolve_model(tmp_path / "file.bin")


def test_gguf_conversion_is_cached_atomic_and_locked(tmp_path, monkeypatch, qihuang_home):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    calls = []

    def fake_convert(src, out):
        calls.append(out)
        assert not (qihuang_home / "models" / "gguf-m").exists()  # target appears only when complete
        time.sleep(0.2)
        (out / "config.json").write_text("{}")
        return out

    monkeypatch.setattr(mload, "convert_gguf", fake_convert)
    results = []
    threads = [threading.Thread(target=lambda: results.append(mload.resolve_model(gguf))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(set(results)) == 1
    assert Path(results[0]) == qihuang_home / "models" / "gguf-m"
    assert not [p for p in (qihuang_home / "models").iterdir() if p.name.startswith(".tmp")]

    def failing(src, out):
        raise RuntimeError("boom")

    monkeypatch.setattr(mload, "convert_gguf", failing)
    gguf2 = tmp_path / "n.gguf"
    gguf2.write_bytes(b"GGUF")
    with pytest.raises(RuntimeError):
        mload.resolve_model(gguf2)
    assert not (qihuang_home / "models" / "gguf-n").exists()


def test_missing_model_and_bad_dtype(tmp_path, tiny_llama):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="cannot load model"):
        mload.load_model(tmp_path / "empty")
    with pytest.raises(ConfigError, match="dtype"):
        mload.load_model(tiny_llama, dtype="int3")
    with pytest.raises(ConfigError, match="not a LoRA adapter"):
        mload.load_model(tiny_llama, adapter=tmp_path / "empty")


def _make_adapter(base: Path, out: Path, template: str | None) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from qihuang.data.prompts import get_template, save_template

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=2, target_modules="all-linear", task_type="CAUSAL_LM"))
    model.save_pretrained(out)
    (out / mload.META_FILE).write_text(json.dumps({"base_model": str(base)}))
    if template:
        save_template(get_template(template), out)
    return out


def test_load_for_inference_template_priority(tiny_llama, tmp_path):
    from qihuang.data.prompts import get_template, save_template

    adapter = _make_adapter(Path(tiny_llama), tmp_path / "adapter", "med_template")
    model, tok, template = mload.load_for_inference(adapter=str(adapter))  # base from metadata
    assert template.name == "med_template" and not model.training
    assert type(model).__name__ == "PeftModelForCausalLM"
    assert mload.load_for_inference(str(adapter))[2].name == "med_template"  # output dir as --model
    assert mload.load_for_inference(adapter=str(adapter), template="alpaca")[2].name == "alpaca"
    plain = _make_adapter(Path(tiny_llama), tmp_path / "plain", None)
    assert mload.load_for_inference(adapter=str(plain))[2].name == "auto"
    # a full model directory carrying its own template
    import shutil

    full = tmp_path / "full"
    shutil.copytree(tiny_llama, full)
    save_template(get_template("bloom_deploy"), full)
    assert mload.load_for_inference(str(full))[2].name == "bloom_deploy"
    assert mload.load_for_inference(str(full), adapter=str(adapter))[2].name == "med_template"


@pytest.mark.integration
def test_default_model_converts_and_generates(default_model):
    model, tok, template = mload.load_for_inference(default_model)
    assert template.name == "auto" and tok.eos_token == "<|im_end|>"
    config = json.loads((Path(mload.resolve_model("default")) / "config.json").read_text())
    assert "quantization_config" not in config
    prompt = template.render(tok, [{"role": "user", "content": "What is the capital of France?"}])
    ids = tok(prompt, return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    assert "Paris" in tok.decode(out[0][ids["input_ids"].shape[1]:])


def test_load_for_inference_merges_the_adapter_for_generation(tiny_llama, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    out = tmp_path / "adapter"
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama),  # random B: the adapter matters
                           LoraConfig(r=2, target_modules="all-linear", init_lora_weights=False,
                                      task_type="CAUSAL_LM"))
    model.save_pretrained(out)
    (out / mload.META_FILE).write_text(json.dumps({"base_model": str(tiny_llama)}))
    unmerged = mload.load_for_inference(adapter=str(out))[0]
    merged = mload.load_for_inference(adapter=str(out), merge=True)[0]
    base = mload.load_for_inference(str(tiny_llama), merge=True)[0]
    assert type(unmerged).__name__ == "PeftModelForCausalLM" and type(merged).__name__ == "LlamaForCausalLM"
    assert not merged.training and not any("lora" in name for name, _ in merged.named_parameters())
    ids = torch.randint(3, 500, (2, 7))
    with torch.no_grad():
        want, got = unmerged(input_ids=ids).logits, merged(input_ids=ids).logits
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
        assert not torch.allclose(base(input_ids=ids).logits, want, atol=1e-3)
