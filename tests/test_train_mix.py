"""``--mix FILE_OR_NAME:RATIO``: general data mixed into a training stage by ratio, deterministic, recorded."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import yaml
from test_train import _cfg, write_alpaca

from qihuang.config import build_config
from qihuang.errors import ConfigError
from qihuang.train import run
from qihuang.train.mix import draw, mix_in

GENERAL = ["长城位于中国北方。", "水在标准大气压下一百度沸腾。", "一年有十二个月。", "三角形有三条边。", "地球绕太阳转。"]


def write_general(path: Path) -> Path:
    """An alpaca file of general (non-medical) questions."""
    rows = [{"instruction": f"请复述：{t}", "input": "", "output": t} for t in GENERAL]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_draw_uses_every_item_before_repeating_and_is_seeded():
    pool = list(range(5))
    picked = draw(pool, 12, random.Random("s"))
    assert sorted(picked[:5]) == pool and sorted(picked[5:10]) == pool and len(picked) == 12
    assert picked == draw(pool, 12, random.Random("s"))
    assert draw(pool, 3, random.Random("s")) == picked[:3]
    assert draw(pool, 0, random.Random("s")) == []


@pytest.mark.parametrize("value,error", [
    ("general.jsonl", "FILE_OR_NAME:RATIO"), ("general.jsonl:0", "0 < RATIO"), ("general.jsonl:much", "RATIO"),
    (":0.5", "FILE_OR_NAME"), ("a.jsonl:-1", "RATIO"),
])
def test_bad_mix_entries_name_the_field(value, error, tmp_path):
    with pytest.raises(ConfigError, match=f"field 'mix'.*{error}"):
        build_config({"dataset": str(tmp_path), "mix": value})


def test_mix_entries_split_on_commas_and_keep_paths_with_colons(tmp_path):
    cfg = build_config({"dataset": str(tmp_path), "mix": "a.jsonl:0.5, C:/data/b.json:2"})
    assert cfg.mix == ["a.jsonl:0.5", "C:/data/b.json:2"]


def test_sft_mix_adds_ratio_times_n_general_examples_deterministically(tiny_llama, tmp_path):
    from qihuang.data.prompts import get_template
    from qihuang.models.load import load_tokenizer
    from qihuang.train import sft

    data_dir = write_alpaca(tmp_path / "data", n_train=8, n_dev=2)
    general = write_general(tmp_path / "general.jsonl")
    tok, template = load_tokenizer(str(tiny_llama)), get_template("auto")
    config = build_config(_cfg(tiny_llama, data_dir, tmp_path / "o", mix=[f"{general}:1.5"]))

    def mixed(cfg):
        data = sft.prepare_data(cfg, tok, template)
        report = mix_in(data, cfg, sft, tok, template)
        return data, report

    data, report = mixed(config)
    assert report == [{"source": str(general), "ratio": 1.5, "available": 5, "added": 12}]
    assert len(data.train) == 8 + 12
    texts = [tok.decode(f["input_ids"]) for f in data.train[8:]]
    assert all(any(g in t for g in GENERAL) for t in texts)  # the added examples are the general ones
    assert all(not any(g in tok.decode(f["input_ids"]) for g in GENERAL) for f in data.train[:8])
    again, _ = mixed(config)
    assert [f["input_ids"] for f in again.train] == [f["input_ids"] for f in data.train]
    other, _ = mixed(config.model_copy(update={"seed": 7}))
    assert [f["input_ids"] for f in other.train[8:]] != [f["input_ids"] for f in data.train[8:]]


def test_pt_stage_mixes_text_blocks(tiny_llama, tmp_path):
    from qihuang.models.load import load_tokenizer
    from qihuang.train import pt

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "med.txt").write_text("\n".join(["偏头痛是一种常见的神经血管性疾病。"] * 40), encoding="utf-8")
    general = tmp_path / "general.txt"
    general.write_text("\n".join(GENERAL * 8), encoding="utf-8")
    tok = load_tokenizer(str(tiny_llama))
    config = build_config(_cfg(tiny_llama, corpus, tmp_path / "o", stage="pt", cutoff_len=32,
                               mix=[f"{general}:0.5"]))
    data = pt.prepare_data(config, tok)
    n = len(data.train)
    report = mix_in(data, config, pt, tok, None)
    assert report[0]["added"] == round(0.5 * n) > 0 and len(data.train) == n + report[0]["added"]


def test_training_run_records_the_mix_in_config_and_metrics(tiny_llama, tmp_path, capsys):
    from qihuang.cli import main

    data_dir = write_alpaca(tmp_path / "data", n_train=8, n_dev=2)
    general = write_general(tmp_path / "general.jsonl")
    second = write_general(tmp_path / "second.jsonl")
    out = tmp_path / "run"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(_cfg(tiny_llama, data_dir, out, max_steps=2)), encoding="utf-8")
    assert main(["train", "--config", str(cfg), "--mix", f"{general}:0.5", "--mix", f"{second}:0.25",
                 "eval_at_start=false"]) == 0
    saved = yaml.safe_load((out / "train_config.yaml").read_text(encoding="utf-8"))
    assert saved["mix"] == [f"{general}:0.5", f"{second}:0.25"]
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert [(m["source"], m["added"]) for m in metrics["mix"]] == [(str(general), 4), (str(second), 2)]
    result = run(build_config({**saved, "output": str(tmp_path / "again"), "mix": []}), progress=False)
    assert "mix" not in result.metrics
    capsys.readouterr()


def test_a_mix_source_without_examples_is_an_error(tiny_llama, tmp_path):
    data_dir = write_alpaca(tmp_path / "data", n_train=4, n_dev=1)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(ConfigError, match="mix|no training examples"):
        run(_cfg(tiny_llama, data_dir, tmp_path / "o", mix=[f"{empty}:0.5"]), progress=False)
