"""``--stage dpo`` on tiny random models: from an SFT adapter, reference = the SFT policy, metrics, CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from qihuang.errors import ConfigError
from qihuang.train import run
from test_train import write_alpaca
from test_train_rm import write_pairs


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> Path:
    return write_pairs(tmp_path_factory.mktemp("pairs") / "data")


@pytest.fixture(scope="module")
def sft(tiny_llama, tmp_path_factory) -> Path:
    """A LoRA SFT output of the tiny model (what DPO starts from)."""
    root = tmp_path_factory.mktemp("sft")
    out = root / "sft"
    run({"model": str(tiny_llama), "dataset": str(write_alpaca(root / "data")), "output": str(out), "max_steps": 4,
         "batch_size": 4, "save_steps": 100, "learning_rate": 5e-3, "cutoff_len": 128, "lora_rank": 8,
         "eval_at_start": False, "num_threads": 1}, progress=False)
    return out


def _cfg(model, dataset, output, **kw) -> dict:
    base = {"stage": "dpo", "model": str(model), "dataset": str(dataset), "output": str(output), "max_steps": 6,
            "batch_size": 4, "save_steps": 3, "learning_rate": 5e-3, "logging_steps": 1, "cutoff_len": 128,
            "num_threads": 1}
    return {**base, **kw}


def test_dpo_continues_the_sft_adapter_against_the_sft_policy(sft, pairs, tmp_path):
    from safetensors.torch import load_file

    out = tmp_path / "dpo"
    metrics = run(_cfg(sft, pairs, out, pref_beta=0.2), progress=False).metrics
    # at step 0 the policy is the SFT model and so is the reference: every margin is 0, loss = log 2
    assert metrics["dev_loss_initial"] == pytest.approx(math.log(2), abs=1e-5)
    assert metrics["dev_reward_margin_initial"] == pytest.approx(0.0, abs=1e-5)
    assert metrics["reference_model"] == str(sft)
    assert metrics["dev_loss"] < metrics["dev_loss_initial"] and all(math.isfinite(h["loss"]) for h in metrics["history"])
    assert metrics["dev_reward_margin"] > 0 and 0.0 <= metrics["dev_reward_accuracy"] <= 1.0
    assert metrics["dev_reward_margin"] == pytest.approx(metrics["dev_reward_chosen"] - metrics["dev_reward_rejected"],
                                                         abs=1e-3)
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["dev_reward_accuracy"] == metrics["dev_reward_accuracy"] and "train_reward_margin" in saved
    # one model in memory: the base plus one adapter, exactly as in SFT (no reference copy)
    sft_metrics = json.loads((sft / "metrics.json").read_text())
    assert metrics["total_params"] == sft_metrics["total_params"]
    assert metrics["trainable_params"] == sft_metrics["trainable_params"]
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 8  # the SFT adapter, continued
    before, after = load_file(sft / "adapter_model.safetensors"), load_file(out / "adapter_model.safetensors")
    assert before.keys() == after.keys() and any(not before[k].equal(after[k]) for k in before)


def test_reference_logps_are_the_sft_models(sft, pairs, tiny_llama):
    import torch

    from qihuang.config import build_config
    from qihuang.data.collate import pad_batch
    from qihuang.data.prompts import get_template
    from qihuang.models.load import load_model, load_tokenizer
    from qihuang.train.dpo import prepare_data, sequence_logps
    from qihuang.models.lora import quiet_peft

    tok = load_tokenizer(sft)
    data = prepare_data(build_config(_cfg(sft, pairs, "unused")), tok, get_template("auto"))
    feature = data.dev[0]
    rows = [{"input_ids": feature[f"{s}_input_ids"], "labels": feature[f"{s}_labels"]} for s in ("chosen", "rejected")]
    batch = pad_batch(rows, tok.pad_token_id)
    with torch.no_grad(), quiet_peft():
        sft_logps = sequence_logps(load_model(tiny_llama, adapter=sft), **batch)
        base_logps = sequence_logps(load_model(tiny_llama), **batch)
        full = load_model(tiny_llama, adapter=sft)(input_ids=batch["input_ids"]).logits.log_softmax(-1)
    assert feature["ref_chosen_logp"] == pytest.approx(float(sft_logps[0]), abs=1e-4)
    assert feature["ref_rejected_logp"] == pytest.approx(float(sft_logps[1]), abs=1e-4)
    assert abs(feature["ref_chosen_logp"] - float(base_logps[0])) > 1e-3  # not the base model
    labels = batch["labels"][0, 1:]
    keep = labels != -100
    manual = full[0, :-1][keep].gather(-1, labels[keep].unsqueeze(-1)).sum()  # the selective head is exact
    assert float(sft_logps[0]) == pytest.approx(float(manual), abs=1e-4)


def test_dpo_template_must_match_the_sft_output(sft, pairs, tmp_path):
    with pytest.raises(ConfigError, match="trained with template 'auto'"):
        run(_cfg(sft, pairs, tmp_path / "o", template="alpaca"), progress=False)


def test_cli_dpo_full_from_sft_adapter(sft, pairs, tmp_path, capsys):
    from qihuang.cli import main

    out = tmp_path / "dpo-full"
    assert main(["train", "--stage", "dpo", "--model", str(sft), "--dataset", str(pairs), "--output", str(out),
                 "--finetuning", "full", "--pref-beta", "0.5", "max_steps=2", "save_steps=10",
                 "learning_rate=1e-4", "num_threads=1"]) == 0
    assert "output: " in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["dev_loss_initial"] == pytest.approx(math.log(2), abs=1e-5)  # reference = merged SFT model
    assert metrics["finetuning"] == "full" and (out / "model.safetensors").is_file()
    assert not (out / "adapter_config.json").exists() and "dev_reward_margin" in metrics


def test_dpo_output_loads_as_its_base_plus_one_adapter(sft, pairs, tiny_llama, tmp_path):
    """The DPO adapter already holds SFT + DPO (it continued the SFT adapter): loading it must apply it
    once to the real base model, not on top of the SFT adapter again."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from qihuang.models.load import load_for_inference, read_meta

    out = tmp_path / "dpo"
    run(_cfg(sft, pairs, out, max_steps=2), progress=False)
    meta = read_meta(out)
    assert meta["base_model"] == str(Path(tiny_llama).resolve()) and meta["continued_from"] == str(sft.resolve())
    model = load_for_inference(str(out))[0]
    expected = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama), str(out)).eval()
    ids = torch.randint(3, 500, (1, 8))
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, expected(input_ids=ids).logits)
