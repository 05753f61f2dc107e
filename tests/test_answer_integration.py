"""Integration: the real default model (SmolLM2-135M-Instruct) answers grounded questions."""

from __future__ import annotations

import json

import pytest
from kb_fixture import make_tiny_kb

from qihuang import DISCLAIMER

pytestmark = pytest.mark.integration


def test_default_model_answers_grounded_with_citations(default_model, tmp_path):
    from qihuang.answer.answerer import Answerer
    from qihuang.engines.base import GenerationParams
    from qihuang.engines.load import load_engine

    kb = make_tiny_kb(tmp_path / "kb.sqlite")
    answerer = Answerer(load_engine(default_model), kb, params=GenerationParams(max_new_tokens=16))
    answer = answerer.answer("偏头痛吃什么药？")
    assert answer.grounded and answer.disclaimer == DISCLAIMER
    drugs = kb.show("偏头痛").values("drugs")
    assert answer.citations[0].entity == "偏头痛" and set(answer.citations[0].values) == set(drugs)
    assert answer.text.strip() and answer.completion_tokens > 0 and "\ufffd" not in answer.text[-1:]
    plain = answerer.answer("偏头痛吃什么药？", grounded=False)
    assert not plain.grounded and plain.citations == []


def test_infer_default_model_on_huatuo_lines(default_model, tmp_path):
    from qihuang.cli import main

    make_tiny_kb(tmp_path / "kb.sqlite")
    src = tmp_path / "infer.json"
    rows = [{"instruction": "高血压有哪些并发症？", "output": "脑卒中、冠心病。"},
            {"instruction": "我爸突然胸口痛，一直冒冷汗", "output": "立即拨打120。"}]
    src.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    out = tmp_path / "pred.jsonl"
    assert main(["infer", "--input", str(src), "--output", str(out), "--kb", str(tmp_path / "kb.sqlite"),
                 "--max-new-tokens", "12", "--quiet"]) == 0
    pred = [json.loads(ln) for ln in out.read_text(encoding="utf-8").splitlines()]
    assert pred[0]["citations"][0]["entity"] == "高血压" and pred[0]["prediction"]
    assert pred[1]["triage"]["level"] == "emergency" and pred[1]["prediction"].startswith("【紧急】")
