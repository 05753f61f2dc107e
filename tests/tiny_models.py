"""Tiny random causal LMs for CPU tests.

``build_tiny_model(out_dir, arch)`` writes a Hugging Face model directory with random
weights (2 layers, hidden size 64) and a byte-level BPE tokenizer trained here on a few
Chinese and English sentences. Like the default model (SmolLM2-Instruct) it has a ChatML
chat template and ``pad_token == eos_token == "<|im_end|>"``.

Architectures (``ARCHS``): llama, qwen2, glm (GLM-4-9B's ``glm``), glm4 (GLM-4-0414's ``glm4``)
and bloom. The bloom model is shaped like the real ones where it matters: its config has no
``max_position_embeddings`` (ALiBi) and its tokenizer has no chat template and says
``model_max_length = int(1e30)`` (the "unknown" sentinel), as ``bigscience/bloomz-*`` do.
"""

from __future__ import annotations

from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

_CORPUS = [
    "偏头痛的症状有哪些？偏头痛常见症状包括头痛、恶心、呕吐、畏光。",
    "感冒应该吃什么药？感冒可以使用对乙酰氨基酚、布洛芬缓解症状。",
    "高血压的并发症有哪些？高血压可导致冠心病、脑卒中、肾功能损害。",
    "糖尿病患者可以使用二甲双胍控制血糖，注意饮食和运动。",
    "阿司匹林的不良反应包括胃肠道出血、过敏反应。",
    "下面是一个问题，运用医学知识来正确回答提问。### 问题: ### 回答: 知识:",
    "What are the symptoms of migraine? Headache, nausea and sensitivity to light.",
    "You are a helpful assistant. Below is an instruction that describes a task.",
    "Human: Assistant: system user assistant Instruction Input Response",
    "0123456789 ,.;:!?()[]{}<>-_=+*/\\|'\"`~@#$%^& 。，、；：？！（）《》“”‘’【】",
]


def build_tokenizer(vocab_size: int = 800):
    """Train a byte-level BPE tokenizer on the fixture corpus; returns a fast HF tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 3, trainer=trainer)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
        model_max_length=2048,
    )
    hf.chat_template = CHAT_TEMPLATE
    return hf


ARCHS = ("llama", "qwen2", "glm", "glm4", "bloom")


def _config(arch: str, vocab_size: int, tokenizer):
    from transformers import BloomConfig, Glm4Config, GlmConfig, LlamaConfig, Qwen2Config

    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id)
    if arch == "bloom":
        return BloomConfig(vocab_size=vocab_size, hidden_size=64, n_layer=2, n_head=4, tie_word_embeddings=True, **ids)
    common = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    if arch == "llama":
        return LlamaConfig(**common)
    if arch == "qwen2":
        return Qwen2Config(**common)
    if arch == "glm":
        return GlmConfig(**common, head_dim=16)
    if arch == "glm4":
        return Glm4Config(**common, head_dim=16)
    raise ValueError(f"unknown tiny arch {arch!r} (one of {ARCHS})")


def build_tiny_model(out_dir: str | Path, arch: str = "llama", seed: int = 0) -> Path:
    """Write a tiny random ``arch`` model + tokenizer to ``out_dir``; returns the directory."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    config = _config(arch, len(tokenizer), tokenizer)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    if arch == "bloom":  # as the real Bloom tokenizers: no chat template, no known length
        tokenizer.chat_template = None
        tokenizer.model_max_length = int(1e30)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


if __name__ == "__main__":  # pragma: no cover - manual use: python tests/tiny_models.py DIR [arch]
    import sys

    print(build_tiny_model(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "llama"))
