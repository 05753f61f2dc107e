"""Continued pretraining finds data as LLaMA-Factory users bring it: names in --dataset-dir,
dataset_info.json columns.prompt, .txt one document per line, directories without bookkeeping files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from qihuang.cli import main
from qihuang.errors import ConfigError
from qihuang.train.pt import text_sources

PT = Path(__file__).parent / "fixtures" / "seeds" / "llamafactory_pt"


def test_names_resolve_in_dataset_dir_with_their_column():
    (corpus,) = text_sources("med_corpus", dataset_dir=PT)
    assert corpus.path.name == "med_corpus.json" and corpus.column == "content"
    both = text_sources("med_corpus,med_lines", dataset_dir=PT)
    assert [s.path.name for s in both] == ["med_corpus.json", "med_lines.txt"]
    with pytest.raises(ConfigError, match="dataset_dir"):
        text_sources("no_such_corpus", dataset_dir=PT)


def test_directory_uses_dataset_info_else_skips_bookkeeping(tmp_path):
    assert {s.path.name for s in text_sources(str(PT))} == {"med_corpus.json", "med_lines.txt"}
    plain = tmp_path / "plain"
    plain.mkdir()
    shutil.copy(PT / "med_lines.txt", plain / "a.txt")
    (plain / "stats.json").write_text(json.dumps({"n": 3}), encoding="utf-8")
    assert [s.path.name for s in text_sources(str(plain))] == ["a.txt"]


def test_pt_cli_by_name_counts_one_document_per_line(tiny_llama, tmp_path, capsys):
    from qihuang.config import build_config
    from qihuang.models.load import load_tokenizer
    from qihuang.train.pt import prepare_data

    config = build_config({"stage": "pt", "model": str(tiny_llama), "dataset": "med_corpus,med_lines",
                           "dataset_dir": str(PT), "cutoff_len": 1024, "output": str(tmp_path / "o")})
    tok = load_tokenizer(tiny_llama)
    data = prepare_data(config, tok)
    docs = ["慢性阻塞性肺疾病以持续气流受限为特征，吸烟是最主要的危险因素。",
            "社区获得性肺炎常见症状为发热、咳嗽、咳痰，胸部影像可见新出现的浸润影。",
            "骨质疏松症是以骨量减少、骨微结构破坏为特征的全身性骨病。", "缺铁性贫血最常见的原因是慢性失血。",
            "痛风与血尿酸水平长期升高有关。"]
    n_tokens = sum(len(tok(d, add_special_tokens=False)["input_ids"]) + 1 for d in docs)  # + EOS per document
    (block,) = data.train  # one block holds it all: five documents, each ended by EOS
    assert len(block["input_ids"]) == n_tokens and block["input_ids"].count(tok.eos_token_id) == 5
    assert main(["train", "--stage", "pt", "--model", str(tiny_llama), "--dataset", "med_corpus",
                 "--dataset-dir", str(PT), "--max-steps", "1", "--cutoff-len", "16", "--batch-size", "2",
                 "--output", str(tmp_path / "pt"), "--no-eval-at-start", "--num-threads", "1"]) == 0
    assert (tmp_path / "pt" / "adapter_model.safetensors").is_file()
