"""``python scripts/gpu_check_fixture.py DIR``: what scripts/gpu_check.sh trains and serves, made
here without network: ``DIR/model`` (a small random Llama: 2 layers, hidden size 256, head size
64 so vLLM's attention kernels take it; the byte-level BPE tokenizer of tests/tiny_models.py) and
``DIR/data`` (train.jsonl / dev.jsonl, alpaca records with knowledge triples)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FACTS = [("偏头痛", "症状", "头痛、恶心、畏光"), ("感冒", "药物治疗", "对乙酰氨基酚、布洛芬"),
         ("高血压", "并发症", "冠心病、脑卒中"), ("糖尿病", "药物治疗", "二甲双胍")]


def build_model(out: Path) -> Path:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_models import build_tokenizer

    tokenizer = build_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id,
                                               eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def build_data(out: Path, n_train: int = 64, n_dev: int = 8) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n_train + n_dev):
        entity, relation, values = FACTS[i % len(FACTS)]
        records.append({"instruction": f"{entity}的{relation}有哪些？", "input": "", "id": str(i),
                        "output": f"{entity}的{relation}包括{values}。",
                        "knowledge": [[entity, relation, v] for v in values.split("、")]})
    for name, part in (("train", records[:n_train]), ("dev", records[n_train:])):
        (out / f"{name}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in part),
                                           encoding="utf-8")
    return out


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    target = Path(sys.argv[1])
    print(build_model(target / "model"), build_data(target / "data"))
