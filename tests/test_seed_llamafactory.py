"""LLaMA-Factory habits: its option names on the command line and in YAML, `--flag false`,
template `default`, and an export directory others can read."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import yaml
from answer_fakes import make_tiny_adapter

from qihuang.cli import main
from qihuang.config import TrainConfig, load_config
from qihuang.errors import ConfigError
from qihuang.paths import resource
from qihuang.train.aliases import aliases, parse_aliases

CARE = Path(__file__).parent / "fixtures" / "seeds" / "carellama" / "data"
FIELDS = set(TrainConfig.model_fields)
ALIAS_DATA = yaml.safe_load(resource("llamafactory.yaml").read_text(encoding="utf-8"))


@pytest.mark.parametrize("name, target", sorted(ALIAS_DATA["options"].items()))
def test_every_alias_targets_a_field(name, target):
    assert target in FIELDS and aliases().options[name] == target


@pytest.mark.parametrize("data, message", [
    ({"options": {"model_name_or_path": "modle"}}, "not a training config field"),
    ({"options": {"dataset": "model"}}, "shadow"),
    ({"flags": {"bf16": ["mixed_precision"]}}, "expected \\[config field, value\\]"),
    ({"ignored": {"model": "x"}}, "cannot be aliases"),
    ({"extra": {}}, "unknown section"),
])
def test_bad_alias_data_names_the_entry(data, message):
    with pytest.raises(ConfigError, match=message):
        parse_aliases(data, FIELDS, "aliases.yaml")


def test_llamafactory_yaml_loads(tmp_path):
    cfg = tmp_path / "sft.yaml"
    cfg.write_text(yaml.safe_dump({
        "stage": "sft", "do_train": True, "model_name_or_path": "some/model", "dataset": "med_qa_train",
        "dataset_dir": str(CARE), "template": "default", "finetuning_type": "lora", "lora_target": "all",
        "output_dir": "saves/x", "overwrite_output_dir": True, "per_device_train_batch_size": 2,
        "gradient_accumulation_steps": 4, "lr_scheduler_type": "cosine", "num_train_epochs": 1.0,
        "bf16": True, "plot_loss": True, "cutoff_len": 512}), encoding="utf-8")
    c = load_config(cfg)
    assert (c.model, c.template, c.finetuning, c.output, c.overwrite) == ("some/model", "auto", "lora", "saves/x", True)
    assert (c.batch_size, c.grad_accum, c.mixed_precision, c.dataset_dir) == (2, 4, "bf16", str(CARE))


def test_llamafactory_command_line_trains(tiny_llama, tmp_path):
    out = tmp_path / "saves"
    assert main(["train", "--stage", "sft", "--do_train", "--model_name_or_path", str(tiny_llama),
                 "--dataset", "med_qa_train", "--dataset_dir", str(CARE), "--template", "default",
                 "--finetuning_type", "lora", "--output_dir", str(out), "--per_device_train_batch_size", "2",
                 "--max_steps", "1", "--cutoff_len", "64", "--eval-at-start", "false", "--num_threads", "1"]) == 0
    saved = yaml.safe_load((out / "train_config.yaml").read_text(encoding="utf-8"))
    assert saved["template"] == "auto" and saved["eval_at_start"] is False and saved["batch_size"] == 2
    assert (out / "adapter_model.safetensors").is_file()


def test_bool_options_take_values():
    from qihuang.cli import build_parser

    parse = build_parser().parse_args
    assert parse(["train", "--eval-at-start", "false"]).eval_at_start is False
    assert parse(["train", "--eval_at_start", "yes"]).eval_at_start is True
    assert parse(["train", "--grounded"]).grounded is True
    assert parse(["train", "--no-grounded"]).grounded is False
    with pytest.raises(SystemExit):
        parse(["train", "--grounded", "maybe"])


def test_export_directory_is_readable_by_others(tiny_llama, tmp_path):
    adapter = make_tiny_adapter(tiny_llama, tmp_path / "lora")
    out = tmp_path / "merged"
    old = os.umask(0o022)
    try:
        assert main(["export", "--adapter", str(adapter), "--out", str(out)]) == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    assert {stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()} == {0o644}


def test_template_default_works_outside_training_too():
    from qihuang.data.prompts import get_template

    assert get_template("default").kind == "chat" and get_template("default").fallback == "alpaca"


def test_med_chatglm_script_options_parse(tmp_path):
    """Med-ChatGLM's scripts/sft_medchat.sh option set (without adam_epsilon) reads into one config."""
    from qihuang.cli import build_parser
    from qihuang.config import TrainConfig, load_config

    args = build_parser().parse_args([
        "train", "--model_name_or_path", "m", "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "8",
        "--train_file", "./data/train.txt", "--max_seq_length", "256", "--output_dir", "./output/", "--do_train",
        "--logging_steps", "30", "--log_file", "./log/x", "--gradient_accumulation_steps", "2",
        "--learning_rate", "5e-5", "--group_by_length", "False", "--num_train_epochs", "3",
        "--lr_scheduler_type", "linear", "--warmup_ratio", "0.1", "--logging_dir", "./log", "--save_strategy", "epoch",
        "--seed", "2023", "--remove_unused_columns", "False", "--torch_dtype", "auto", "--report_to", "wandb",
        "--run_name", "x", "--finetuning", "full"])
    values = {k: v for k, v in vars(args).items() if k in TrainConfig.model_fields}
    values.update({k[3:]: v for k, v in vars(args).items() if k.startswith("lf_")})
    c = load_config(None, values)
    assert (c.model, c.dataset, c.cutoff_len, c.batch_size, c.grad_accum, c.group_by_length) == \
        ("m", "./data/train.txt", 256, 8, 2, False)
    assert (c.lr_scheduler, c.num_epochs, c.seed, c.eval_batch_size) == ("linear", 3.0, 2023, 8)
