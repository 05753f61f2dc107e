"""Every YAML under examples/ parses and validates: training configs through TrainConfig,
accelerate configs through accelerate's own config loader (plus the DeepSpeed JSON they name)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from qihuang.config import load_config

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
ACCELERATE = EXAMPLES / "accelerate"
ALL_YAML = sorted(p for p in EXAMPLES.rglob("*") if p.suffix in (".yaml", ".yml"))
TRAINING = [p for p in ALL_YAML if ACCELERATE not in p.parents and "stage" in (yaml.safe_load(p.read_text()) or {})]
ACCEL = [p for p in ALL_YAML if ACCELERATE in p.parents]


def _id(path: Path) -> str:
    return str(path.relative_to(EXAMPLES))


def test_examples_exist():
    names = {_id(p) for p in ALL_YAML}
    assert {"sft_lora_default.yaml", "sft_lora_qwen2.5-7b.yaml", "pt.yaml", "accelerate/ddp_cpu.yaml",
            "accelerate/fsdp_cpu.yaml",
            "accelerate/deepspeed_zero2.yaml", "accelerate/deepspeed_zero3.yaml", "accelerate/fsdp.yaml"} <= names


@pytest.mark.parametrize("path", ALL_YAML, ids=_id)
def test_every_yaml_parses_to_a_mapping(path):
    assert isinstance(yaml.safe_load(path.read_text(encoding="utf-8")), dict)


@pytest.mark.parametrize("path", TRAINING, ids=_id)
def test_training_config_validates(path):
    config = load_config(path)
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert config.model_dump(include=set(raw)) == {k: config.model_dump()[k] for k in raw}  # nothing dropped
    assert config.stage in ("sft", "pt", "rm", "dpo") and config.dataset


@pytest.mark.parametrize("path", ACCEL, ids=_id)
def test_accelerate_config_validates(path):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(path))  # raises on unknown keys or bad enum values
    assert config.num_processes >= 1 and config.num_machines >= 1
    assert 0 <= config.machine_rank < config.num_machines
    ds_file = (config.deepspeed_config or {}).get("deepspeed_config_file")
    if config.distributed_type.name == "DEEPSPEED":
        assert ds_file, "a DeepSpeed config must name its JSON"
        ds = json.loads((ROOT / ds_file).read_text(encoding="utf-8"))
        stage = ds["zero_optimization"]["stage"]
        assert f"zero{stage}" in path.name
        assert ds["gradient_accumulation_steps"] == "auto"  # filled from TrainConfig.grad_accum by accelerate
    if config.distributed_type.name == "FSDP":
        assert config.fsdp_config.get("fsdp_auto_wrap_policy")


def test_deepspeed_json_files_parse():
    files = sorted((EXAMPLES / "deepspeed").glob("*.json"))
    assert files
    for f in files:
        assert json.loads(f.read_text(encoding="utf-8"))["zero_optimization"]["stage"] in (2, 3)


def test_a_broken_training_yaml_names_the_field(tmp_path):
    from qihuang.errors import ConfigError

    bad = tmp_path / "bad.yaml"
    text = (EXAMPLES / "sft_lora_default.yaml").read_text()
    assert re.search(r"^lora_dropout: .*$", text, flags=re.M)
    bad.write_text(re.sub(r"^lora_dropout: .*$", "lora_dropout: 2", text, flags=re.M), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"bad\.yaml: .*field 'lora_dropout'"):
        load_config(bad)
    twice = tmp_path / "twice.yaml"  # appended again: a key given twice is refused, not silently the last
    twice.write_text(text + "lora_dropout: 2\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"twice\.yaml:\d+: invalid YAML: key 'lora_dropout' given twice"):
        load_config(twice)


def _autos(node, prefix=""):
    if isinstance(node, dict):
        return [k for key, value in node.items() for k in _autos(value, f"{prefix}{key}.")]
    return [prefix[:-1]] if node == "auto" else []


@pytest.mark.parametrize("name", ["ds_z2_config.json", "ds_z3_config.json"])
def test_deepspeed_autos_left_are_the_ones_accelerate_fills(name):
    """qihuang passes accelerate no dataloader and an objective without ``.config``: the per-GPU
    batch, the clipping norm and ZeRO-3's bucket sizes are filled from the training config and
    the model instead (else ``accelerator.prepare`` raises under DeepSpeed)."""
    from qihuang.train.distributed import fill_deepspeed_config

    ds = json.loads((EXAMPLES / "deepspeed" / name).read_text(encoding="utf-8"))
    filled = fill_deepspeed_config(ds, batch_size=4, max_grad_norm=0.5, hidden_size=576)
    assert sorted(_autos(filled)) == ["bf16.enabled", "fp16.enabled", "gradient_accumulation_steps",
                                      "train_batch_size"]
    assert filled["train_micro_batch_size_per_gpu"] == 4 and filled["gradient_clipping"] == 0.5
    if filled["zero_optimization"]["stage"] == 3:
        assert filled["zero_optimization"]["reduce_bucket_size"] == 576 * 576
