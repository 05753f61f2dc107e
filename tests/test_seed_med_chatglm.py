"""Med-ChatGLM's data/train.txt ({"context", "target"} JSON lines) trains, validates and infers as is;
models that ship their own code need an explicit, documented trust_remote_code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qihuang.records import question_of
from qihuang.cli import main
from qihuang.config import TrainConfig, build_config
from qihuang.data.formats import to_conversation
from qihuang.data.registry import iter_conversations, resolve_dataset
from qihuang.errors import ConfigError
from qihuang.models import load as mload

TRAIN = Path(__file__).parent / "fixtures" / "seeds" / "med_chatglm" / "data" / "train.txt"


def test_context_target_records_read_as_alpaca():
    convs = [conv for _, _, conv in iter_conversations(resolve_dataset(str(TRAIN)).train)]
    assert len(convs) == 4
    assert convs[0]["messages"][0]["content"].startswith("问题：我这几天小便")
    assert convs[0]["messages"][1]["content"].startswith("这些表现常见于下尿路感染")
    mixed = to_conversation({"instruction": "问", "output": "答", "context": "别的用途"})
    assert mixed["messages"][0]["content"] == "问"  # alpaca fields win; context is left alone
    assert question_of({"context": "问题：头晕怎么办？"}, "f", 1)["question"] == "问题：头晕怎么办？"


def test_validate_accepts_med_chatglm_txt(capsys):
    assert main(["data", "validate", str(TRAIN)]) == 0
    assert "4 records, ok" in capsys.readouterr().out


def test_sft_on_med_chatglm_file(tiny_llama, tmp_path):
    assert main(["train", "--model", str(tiny_llama), "--dataset", str(TRAIN), "--max-steps", "1",
                 "--batch-size", "2", "--cutoff-len", "64", "--output", str(tmp_path / "o"), "--num-threads", "1",
                 "--no-eval-at-start"]) == 0
    assert (tmp_path / "o" / "adapter_model.safetensors").is_file()


def test_trust_remote_code_is_off_by_default_and_documented():
    field = TrainConfig.model_fields["trust_remote_code"]
    assert field.default is False and "trust" in field.description and "your permissions" in field.description
    assert build_config({"dataset": "x", "trust_remote_code": True}).trust_remote_code


def test_remote_code_error_names_qihuangs_option(tmp_path, monkeypatch):
    import transformers

    def refuse(*args, **kwargs):
        assert kwargs.get("trust_remote_code") is False
        raise ValueError("The repository contains custom code which must be executed to correctly load the "
                         "model. Please pass the argument `trust_remote_code=True` to allow custom code to be run.")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", refuse)
    (tmp_path / "tokenizer_config.json").write_text("{}", encoding="utf-8")
    for call in (lambda: mload.load_model(str(tmp_path)), lambda: mload.load_tokenizer(str(tmp_path))):
        with pytest.raises(ConfigError, match="--trust-remote-code") as info:
            call()
        assert "your permissions" in str(info.value) and "`trust_remote_code=True`" not in str(info.value)


def test_trust_remote_code_reaches_transformers(tiny_llama, monkeypatch):
    import transformers

    seen = []
    real = transformers.AutoTokenizer.from_pretrained.__func__

    def spy(cls, *args, **kwargs):
        seen.append(kwargs.get("trust_remote_code"))
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", classmethod(spy))
    mload.load_tokenizer(str(tiny_llama))
    mload.load_tokenizer(str(tiny_llama), trust_remote_code=True)
    assert seen == [False, True]
    assert json.loads((Path(tiny_llama) / "config.json").read_text())["model_type"] == "llama"


@pytest.mark.parametrize("flag", [[], ["--trust-remote-code"]])
def test_trust_remote_code_reaches_the_engine_from_every_answering_command(monkeypatch, flag):
    import qihuang.engines.load as engine_mod
    from qihuang.answer.cli import build_answerer
    from qihuang.cli import build_parser

    seen = {}

    def fake_load_engine(*args, **kwargs):
        seen.update(kwargs)
        raise RuntimeError("stop here")

    monkeypatch.setattr(engine_mod, "load_engine", fake_load_engine)
    for command in (["infer", "--input", "a.json", "--output", "b.jsonl"], ["chat"], ["serve"], ["webui"]):
        args = build_parser().parse_args(command + ["--no-grounded", *flag])
        seen.clear()
        with pytest.raises(RuntimeError, match="stop here"):
            build_answerer(args)
        assert seen["trust_remote_code"] is bool(flag), command
    for command in (["export", "--adapter", "a", "--out", "b"], ["eval", "--task", "kbqa"]):
        assert build_parser().parse_args(command + flag).trust_remote_code is bool(flag)
