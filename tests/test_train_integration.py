"""The real default model: a few SFT steps lower the dev loss, and the output loads for
inference with its template by itself. (Slow on CPU: kept to a handful of short steps.)"""

from __future__ import annotations

import json

import pytest

from test_train import write_alpaca


@pytest.mark.integration
def test_sft_default_model_lowers_dev_loss_and_keeps_template(default_model, tmp_path, capsys):
    from qihuang.cli import main
    from qihuang.models.load import load_for_inference

    data = write_alpaca(tmp_path / "data", n_train=16, n_dev=4)
    out = tmp_path / "run"
    code = main(["train", "--stage", "sft", "--model", default_model, "--dataset", str(data), "--finetuning", "lora",
                 "--template", "med_template", "--grounded", "--max-steps", "4", "--batch-size", "2",
                 "--learning-rate", "1e-3", "--save-steps", "100", "--output", str(out),
                 "--num-threads", "1"])  # one thread: far faster than two on a CPU shared with other jobs
    assert code == 0, capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 4 and metrics["tokens_per_s"] > 0
    assert metrics["dev_loss"] < metrics["dev_loss_initial"]
    assert json.loads((out / "qihuang_meta.json").read_text())["base_model"] == "default"
    model, tokenizer, template = load_for_inference(str(out))  # base model and template found by itself
    assert template.name == "med_template" and tokenizer.eos_token == "<|im_end|>"
    assert type(model).__name__ == "PeftModelForCausalLM"
