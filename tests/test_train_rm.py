"""``--stage rm`` on tiny random models: reward head training, pairwise accuracy, scoring, CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from qihuang.train import run

PAIRS = {"偏头痛": ("症状", "头痛、恶心、畏光", "咳嗽、腹泻"),
         "感冒": ("药物治疗", "对乙酰氨基酚、布洛芬", "二甲双胍、胰岛素"),
         "高血压": ("并发症", "冠心病、脑卒中", "感冒、腹泻"),
         "糖尿病": ("药物治疗", "二甲双胍", "布洛芬")}


def write_pairs(directory: Path, n_train: int = 24, n_dev: int = 6) -> Path:
    """A small ranking dataset dir (train.jsonl, dev.jsonl): the KB answer vs swapped values."""
    directory.mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n_train + n_dev):
        entity, (relation, good, bad) = list(PAIRS.items())[i % len(PAIRS)]
        records.append({"instruction": f"{entity}的{relation}有哪些？", "input": "",
                        "chosen": f"{entity}的{relation}包括{good}。", "rejected": f"{entity}的{relation}包括{bad}。",
                        "knowledge": [[entity, relation, v] for v in good.split("、")], "corruption": "swap"})
    for name, part in (("train", records[:n_train]), ("dev", records[n_train:])):
        (directory / f"{name}.jsonl").write_text(
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in part), encoding="utf-8")
    return directory


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> Path:
    return write_pairs(tmp_path_factory.mktemp("pairs") / "data")


def _cfg(model, dataset, output, **kw) -> dict:
    base = {"stage": "rm", "model": str(model), "dataset": str(dataset), "output": str(output), "max_steps": 8,
            "batch_size": 4, "save_steps": 4, "learning_rate": 5e-3, "logging_steps": 1, "cutoff_len": 128,
            "num_threads": 1}
    return {**base, **kw}


def test_rm_lora_trains_head_and_reports_pairwise_accuracy(tiny_llama, pairs, tmp_path):
    from safetensors.torch import load_file

    from qihuang.data.pairwise import read_pairs
    from qihuang.train.rm import load_reward_model, reward_scores

    out = tmp_path / "rm"
    result = run(_cfg(tiny_llama, pairs, out), progress=False)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["stage"] == "rm" and metrics["num_train_pairs"] == 24 and metrics["num_dev_pairs"] == 6
    assert all(math.isfinite(h["loss"]) for h in metrics["history"]) and len(metrics["history"]) == 8
    assert metrics["dev_loss"] < metrics["dev_loss_initial"]
    assert 0.0 <= metrics["dev_reward_accuracy"] <= 1.0 and metrics["dev_reward_pairs"] == 6
    assert metrics["dev_reward_margin"] > metrics["dev_reward_margin_initial"]
    assert len(metrics["reward_history"]) == len(metrics["eval_history"]) == 3
    assert "train_reward_accuracy" in metrics and result.metrics["dev_reward_accuracy"] == metrics["dev_reward_accuracy"]
    adapter_config = json.loads((out / "adapter_config.json").read_text())
    assert adapter_config["task_type"] == "SEQ_CLS" and "score" in adapter_config["modules_to_save"]
    weights = load_file(out / "adapter_model.safetensors")
    assert any("score" in k for k in weights)
    assert any(float(t.abs().sum()) > 0 for k, t in weights.items() if "lora_B" in k)  # moved from zero
    # the saved reward model scores the dev pairs as the training run measured them
    model, tok, template = load_reward_model(out)
    dev = [p for _, p in read_pairs(pairs / "dev.jsonl")]
    chosen = reward_scores(model, tok, template, [p["messages"] + [{"role": "assistant", "content": p["chosen"]}]
                                                  for p in dev])
    rejected = reward_scores(model, tok, template, [p["messages"] + [{"role": "assistant", "content": p["rejected"]}]
                                                    for p in dev])
    accuracy = sum(c > r for c, r in zip(chosen, rejected)) / len(dev)
    assert accuracy == pytest.approx(metrics["dev_reward_accuracy"])
    margin = sum(c - r for c, r in zip(chosen, rejected)) / len(dev)
    assert margin == pytest.approx(metrics["dev_reward_margin"], abs=1e-3)


def test_reward_is_read_at_the_answer_end_whatever_the_padding(tiny_llama):
    import torch

    from qihuang.data.collate import pad_batch
    from qihuang.train.rm import load_sequence_classifier, sequence_rewards

    model = load_sequence_classifier(str(tiny_llama)).eval()
    short = {"input_ids": [5, 6, 7, 8, 9], "labels": [-100, -100, 7, 8, -100]}
    long = {"input_ids": list(range(10, 30)), "labels": [-100] * 10 + list(range(20, 30))}
    with torch.no_grad():
        alone = sequence_rewards(model, **pad_batch([short], pad_id=0))
        together = sequence_rewards(model, **pad_batch([short, long], pad_id=0))
        upto = sequence_rewards(model, **pad_batch([{"input_ids": short["input_ids"][:4],
                                                     "labels": short["labels"][:4]}], pad_id=0))
    assert float(alone[0]) == pytest.approx(float(together[0]), abs=1e-5)
    assert float(alone[0]) == pytest.approx(float(upto[0]), abs=1e-5)  # last labelled token, not the last token


def test_cli_rm_full_finetuning_qwen2(tiny_qwen2, pairs, tmp_path, capsys):
    from qihuang.cli import main

    out = tmp_path / "rm-full"
    assert main(["train", "--stage", "rm", "--model", str(tiny_qwen2), "--dataset", str(pairs), "--output", str(out),
                 "--finetuning", "full", "--template", "alpaca", "max_steps=2", "batch_size=4", "save_steps=10",
                 "learning_rate=1e-3", "num_threads=1"]) == 0
    assert "output: " in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForSequenceClassification"] and len(config["id2label"]) == 1
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["finetuning"] == "full" and metrics["trainable_params"] == metrics["total_params"]
    assert "dev_reward_accuracy" in metrics
    assert main(["train", "--stage", "rm", "--model", str(tiny_qwen2), "--dataset", str(tmp_path / "none"),
                 "--output", str(tmp_path / "x")]) == 2


def test_rm_from_a_lora_sft_output_merges_the_adapter_into_the_classifier(tiny_llama, pairs, tmp_path):
    """A causal-LM (SFT) adapter as ``model``: the reward model's backbone is the SFT-merged model's."""
    import torch

    from qihuang.models.prepare import load_merged_causal_lm, load_sequence_classifier
    from test_train import write_alpaca

    sft = tmp_path / "sft"
    run({"model": str(tiny_llama), "dataset": str(write_alpaca(tmp_path / "alpaca")), "output": str(sft),
         "max_steps": 2, "batch_size": 4, "save_steps": 100, "learning_rate": 5e-2, "cutoff_len": 128,
         "lora_rank": 4, "eval_at_start": False, "num_threads": 1}, progress=False)
    rm = load_sequence_classifier(str(sft)).model.state_dict()
    merged = load_merged_causal_lm(str(sft)).model.state_dict()
    untuned = load_sequence_classifier(str(tiny_llama)).model.state_dict()
    assert rm.keys() == merged.keys()
    assert all(torch.equal(rm[k], merged[k]) for k in rm)
    assert any(not torch.equal(rm[k], untuned[k]) for k in rm)  # the SFT delta is in the backbone
    metrics = run(_cfg(sft, pairs, tmp_path / "rm", max_steps=2), progress=False).metrics
    assert metrics["stage"] == "rm" and all(math.isfinite(h["loss"]) for h in metrics["history"])
