"""Training on tiny random models: outputs, LoRA/full, resume after a crash, pt packing,
label masks, the selective-logits objective. (DDP: test_train_ddp.py; real model:
test_train_integration.py.)"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from qihuang.errors import ConfigError
from qihuang.train import TrainConfig, run
from qihuang.train.callbacks import Callback

FACTS = {"偏头痛": ("症状", "头痛、恶心、畏光"), "感冒": ("药物治疗", "对乙酰氨基酚、布洛芬"),
         "高血压": ("并发症", "冠心病、脑卒中"), "糖尿病": ("药物治疗", "二甲双胍")}


def write_alpaca(directory: Path, n_train: int = 24, n_dev: int = 6) -> Path:
    """A small alpaca + knowledge dataset dir (train.jsonl, dev.jsonl), some multi-turn."""
    directory.mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n_train + n_dev):
        entity, (relation, values) = list(FACTS.items())[i % len(FACTS)]
        history = [[f"{entity}是什么病？", f"{entity}是常见病。"]] if i % 3 == 0 else []
        records.append({"instruction": f"{entity}的{relation}有哪些？", "input": "", "history": history,
                        "output": f"{entity}的{relation}包括{values}。", "kind": "single", "id": str(i),
                        "knowledge": [[entity, relation, v] for v in values.split("、")]})
    for name, part in (("train", records[:n_train]), ("dev", records[n_train:])):
        (directory / f"{name}.jsonl").write_text(
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in part), encoding="utf-8")
    return directory


@pytest.fixture
def dataset(tmp_path):
    return write_alpaca(tmp_path / "data")


def _cfg(model, dataset, output, **kw) -> dict:
    base = {"model": str(model), "dataset": str(dataset), "output": str(output), "max_steps": 6,
            "batch_size": 4, "save_steps": 3, "learning_rate": 5e-3, "logging_steps": 1, "cutoff_len": 128,
            "num_threads": 1}
    return {**base, **kw}


def test_sft_lora_writes_complete_output(tiny_llama, dataset, tmp_path):
    from safetensors.torch import load_file

    from qihuang.models.load import load_for_inference

    out = tmp_path / "run"
    result = run(_cfg(tiny_llama, dataset, out, template="med_template", grounded=True), progress=False)
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "qihuang_template.json",
                 "qihuang_meta.json", "train_config.yaml", "metrics.json", "loss.png", "checkpoints/step-3"):
        assert (out / name).exists(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 6 and metrics["num_train_examples"] == 24 and metrics["num_dev_examples"] == 6
    assert all(math.isfinite(h["loss"]) for h in metrics["history"]) and len(metrics["history"]) == 6
    assert metrics["dev_loss"] < metrics["dev_loss_initial"]
    assert metrics["tokens_per_s"] > 0 and 0 < metrics["trainable_params"] < metrics["total_params"]
    assert (out / "loss.png").read_bytes()[:4] == b"\x89PNG"
    # LoRA B matrices start at zero: training moved them
    adapter = load_file(out / "adapter_model.safetensors")
    assert any(float(t.abs().sum()) > 0 for k, t in adapter.items() if "lora_B" in k)
    assert TrainConfig(**yaml.safe_load((out / "train_config.yaml").read_text())).grounded is True
    meta = json.loads((out / "qihuang_meta.json").read_text())
    assert meta["base_model"] == str(Path(tiny_llama).resolve()) and meta["template"] == "med_template"
    model, tok, template = load_for_inference(str(out))  # the output dir alone is enough
    assert template.name == "med_template" and type(model).__name__ == "PeftModelForCausalLM"
    assert result.metrics["dev_loss"] == metrics["dev_loss"]


def test_full_finetuning_qwen2_changes_weights(tiny_qwen2, dataset, tmp_path):
    from safetensors.torch import load_file

    from qihuang.models.load import load_for_inference

    out = tmp_path / "full"
    run(_cfg(tiny_qwen2, dataset, out, finetuning="full", max_steps=3, save_steps=10, learning_rate=1e-3,
             template="alpaca"), progress=False)
    before, after = load_file(Path(tiny_qwen2) / "model.safetensors"), load_file(out / "model.safetensors")
    changed = [k for k in before if k in after and not before[k].equal(after[k])]
    assert "model.layers.0.self_attn.q_proj.weight" in changed
    assert not (out / "adapter_config.json").exists()
    assert load_for_inference(str(out))[2].name == "alpaca"


class CrashAt(Callback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, state):
        if state.step == self.step:
            raise KeyboardInterrupt(f"simulated kill at step {state.step}")


def test_resume_after_crash_matches_uninterrupted(tiny_llama, dataset, tmp_path):
    common = dict(max_steps=8, save_steps=4, grad_accum=2, batch_size=3, lora_dropout=0.1, eval_at_start=False)
    full = run(_cfg(tiny_llama, dataset, tmp_path / "a", **common), progress=False).metrics
    with pytest.raises(KeyboardInterrupt):
        run(_cfg(tiny_llama, dataset, tmp_path / "b", **common), callbacks=[CrashAt(6)], progress=False)
    assert not (tmp_path / "b" / "metrics.json").exists()
    assert (tmp_path / "b" / "checkpoints" / "step-4").is_dir()
    with pytest.raises(ConfigError, match="--resume"):
        run(_cfg(tiny_llama, dataset, tmp_path / "b", **common), progress=False)
    resumed = run(_cfg(tiny_llama, dataset, tmp_path / "b", resume=True, **common), progress=False).metrics
    assert resumed["steps"] == full["steps"] == 8
    assert [h["step"] for h in resumed["history"]] == list(range(1, 9))
    assert resumed["train_loss"] == pytest.approx(full["train_loss"], rel=1e-4)
    assert resumed["dev_loss"] == pytest.approx(full["dev_loss"], rel=1e-4)


def test_pt_stage_packs_text(tiny_llama, tmp_path):
    from qihuang.config import build_config
    from qihuang.models.load import load_tokenizer
    from qihuang.train.pt import prepare_data

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    para = "偏头痛是一种常见的慢性神经血管性疾病，表现为反复发作的头痛。"
    (corpus / "a.txt").write_text("\n\n".join([para] * 12), encoding="utf-8")
    (corpus / "b.jsonl").write_text(json.dumps({"text": "高血压是以体循环动脉血压增高为主要特征的疾病。" * 4},
                                                ensure_ascii=False) + "\n", encoding="utf-8")
    config = build_config(_cfg(tiny_llama, corpus, tmp_path / "pt", stage="pt", cutoff_len=64, val_size=0.2))
    data = prepare_data(config, load_tokenizer(tiny_llama))
    assert data.info["packed"] and data.dev
    blocks = data.train + data.dev
    assert all(f["labels"] == f["input_ids"] for f in blocks)
    assert sum(len(f["input_ids"]) != 64 for f in blocks) <= 1  # only the last partial block is shorter
    result = run(config, progress=False)
    assert result.metrics["steps"] == 6 and (tmp_path / "pt" / "adapter_model.safetensors").is_file()


def test_sft_labels_multi_turn_and_grounded(tiny_llama, dataset):
    from qihuang.config import build_config
    from qihuang.data.prompts import get_template
    from qihuang.models.load import load_tokenizer
    from qihuang.train.sft import prepare_data

    tok = load_tokenizer(tiny_llama)
    for grounded in (False, True):
        data = prepare_data(build_config({"dataset": str(dataset), "grounded": grounded}), tok, get_template("auto"))
        feat = data.train[0]  # multi-turn example (history of one turn)
        trained = tok.decode([i for i, lab in zip(feat["input_ids"], feat["labels"]) if lab != -100])
        assert trained == "偏头痛是常见病。<|im_end|>偏头痛的症状包括头痛、恶心、畏光。<|im_end|>"
        assert ("参考知识" in tok.decode(feat["input_ids"])) is grounded


def _masked_batch():
    """Two rows of 12 tokens: the first 5 unlabelled, the second row right-padded after 9."""
    import torch

    ids = torch.randint(3, 700, (2, 12))
    labels = ids.clone()
    labels[:, :5] = -100
    labels[1, 9:] = -100
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    return ids, mask, labels


def test_selective_objective_equals_full_logits_loss(tiny_llama):
    import torch
    from transformers import AutoModelForCausalLM

    from qihuang.train.objective import CausalLMObjective

    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    ids, mask, labels = _masked_batch()
    with torch.no_grad():
        out = CausalLMObjective(model)(input_ids=ids, attention_mask=mask, labels=labels)
        reference = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    assert float(out["loss_sum"] / out["count"]) == pytest.approx(float(reference), rel=1e-5)


def test_fused_head_loss_gradients_equal_full_logits_loss(tiny_llama):
    import torch
    from transformers import AutoModelForCausalLM

    from qihuang.train.objective import CausalLMObjective

    torch.manual_seed(0)
    models = [AutoModelForCausalLM.from_pretrained(tiny_llama) for _ in range(2)]  # every weight trainable
    ids, mask, labels = _masked_batch()
    out = CausalLMObjective(models[0])(input_ids=ids, attention_mask=mask, labels=labels)
    reference = models[1](input_ids=ids, attention_mask=mask, labels=labels).loss * out["count"]
    (out["loss_sum"] * 0.5).backward()
    (reference * 0.5).backward()
    assert float(out["loss_sum"]) == pytest.approx(float(reference), rel=1e-5)
    grads = [(name, a.grad, b.grad) for (name, a), b in zip(models[0].named_parameters(), models[1].parameters())]
    assert any("lm_head" in name or "embed" in name for name, _, _ in grads)
    for name, got, want in grads:
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6, msg=name)


def test_run_errors(tiny_llama, dataset, tmp_path):
    from qihuang.train.run import stage_module

    with pytest.raises(ConfigError, match="unknown stage"):
        stage_module("xyz")
    with pytest.raises(ConfigError, match="field 'dataset'"):
        run(_cfg(tiny_llama, tmp_path / "nope", tmp_path / "o"), progress=False)
    with pytest.raises(ConfigError, match="too few"):
        run(_cfg(tiny_llama, dataset, tmp_path / "o2", batch_size=20, grad_accum=4), progress=False)


def test_qlora_needs_cuda(tiny_llama, dataset, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(ConfigError, match="qlora needs a CUDA GPU"):
        run(_cfg(tiny_llama, dataset, tmp_path / "q", finetuning="qlora"), progress=False)


def test_cli_config_file_and_overrides(tiny_llama, dataset, tmp_path, capsys):
    from qihuang.cli import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(_cfg(tiny_llama, dataset, tmp_path / "cli", max_steps=50)), encoding="utf-8")
    assert main(["train", "--config", str(cfg), "--lora-rank", "4", "max_steps=2", "eval_at_start=false"]) == 0
    saved = yaml.safe_load((tmp_path / "cli" / "train_config.yaml").read_text())
    assert saved["max_steps"] == 2 and saved["lora_rank"] == 4 and saved["eval_at_start"] is False
    assert "output: " in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset: x\nlora_rank: zero\n", encoding="utf-8")
    assert main(["train", "--config", str(bad)]) == 2
    assert "field 'lora_rank'" in capsys.readouterr().err
    assert main(["train", "--config", str(cfg), "colour=red"]) == 2
    assert "unknown field 'colour'" in capsys.readouterr().err


def test_time_budget_stops_early_and_still_writes_output(tiny_llama, dataset, tmp_path):
    out = tmp_path / "budget"
    result = run(_cfg(tiny_llama, dataset, out, max_steps=500, max_minutes=1e-4, save_steps=1000), progress=False)
    assert result.metrics["steps"] == 1 and "time budget" in result.metrics["stopped_early"]
    assert (out / "adapter_model.safetensors").is_file() and (out / "metrics.json").is_file()
    assert result.metrics["dev_loss"] is not None
