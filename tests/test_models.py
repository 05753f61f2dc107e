"""Tests for the tiny model fixtures and qihuang.models.load."""

from __future__ import annotations


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
