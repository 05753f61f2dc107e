"""Tests for qihuang.data.formats and qihuang.data.registry."""

from __future__ import annotations

import json

import pytest

from qihuang.data.formats import read_records, read_texts, to_conversation
from qihuang.errors import InputError

ALPACA = {
    "instruction": "偏头痛吃什么药？", "input": "", "output": "可用布洛芬。",
    "history": [["偏头痛有什么症状？", "头痛、恶心。"]],
    "knowledge": [["偏头痛", "药物治疗", "布洛芬"]], "system": "你是医生", "kind": "dialogue", "id": "x1",
}


def test_alpaca_with_history_knowledge_and_input():
    conv = to_conversation(ALPACA)
    assert conv["system"] == "你是医生"
    assert [m["role"] for m in conv["messages"]] == ["user", "assistant", "user", "assistant"]
    assert conv["messages"][0]["content"] == "偏头痛有什么症状？"
    assert conv["messages"][-1]["content"] == "可用布洛芬。"
    assert conv["knowledge"] == [["偏头痛", "药物治疗", "布洛芬"]]
    conv = to_conversation({"instruction": "翻译", "input": "头痛", "output": "headache"})
    assert conv["messages"][0]["content"] == "翻译\n头痛" and conv["system"] is None and conv["knowledge"] == []


def test_flattened_multi_turn_alpaca():
    record = {"instruction": "<user>: 我头痛 <bot>: 多久了？ <user>: 三天", "output": "建议就医。"}
    conv = to_conversation(record)
    assert conv["messages"] == [
        {"role": "user", "content": "我头痛"}, {"role": "assistant", "content": "多久了？"},
        {"role": "user", "content": "三天"}, {"role": "assistant", "content": "建议就医。"},
    ]
    trailing = {"instruction": "<user>: 我头痛 <bot>:", "output": "多久了？"}
    assert to_conversation(trailing)["messages"][-1] == {"role": "assistant", "content": "多久了？"}


@pytest.mark.parametrize("turns", [
    [{"from": "system", "value": "S"}, {"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}],
    [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}],
])
def test_sharegpt_both_styles(turns):
    conv = to_conversation({"conversations": turns})
    assert conv["system"] == "S"
    assert conv["messages"] == [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]


@pytest.mark.parametrize("record,field", [
    ({"instruction": "Q", "output": ""}, "output"),
    ({"instruction": "Q", "output": "A", "history": [["only one"]]}, "history"),
    ({"instruction": "Q", "output": "A", "knowledge": [["a", "b"]]}, "knowledge"),
    ({"instruction": 5, "output": "A"}, "instruction"),
])
def test_bad_alpaca_names_field_and_line(record, field):
    with pytest.raises(InputError) as info:
        to_conversation(record, path="d.jsonl", line=7)
    assert info.value.field == field and "d.jsonl:7" in str(info.value)


def test_bad_shapes():
    with pytest.raises(InputError, match="unrecognised"):
        to_conversation({"question": "Q"})
    with pytest.raises(InputError, match="alternate"):
        to_conversation({"conversations": [{"from": "human", "value": "Q"}, {"from": "human", "value": "Q"},
                                           {"from": "gpt", "value": "A"}]})
    with pytest.raises(InputError, match="last turn"):
        to_conversation({"conversations": [{"from": "human", "value": "Q"}]})


def test_read_records_jsonl_array_and_errors(tmp_path):
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text(json.dumps(ALPACA, ensure_ascii=False) + "\n\n" + json.dumps(ALPACA) + "\n", encoding="utf-8")
    assert [n for n, _ in read_records(jsonl)] == [1, 3]
    arr = tmp_path / "b.json"
    arr.write_text("[\n" + json.dumps(ALPACA) + ",\n" + json.dumps(ALPACA, indent=1) + "\n]", encoding="utf-8")
    records = list(read_records(arr))
    assert [n for n, _ in records] == [2, 3] and records[1][1]["output"] == "可用布洛芬。"
    lines = tmp_path / "c.json"
    lines.write_text(json.dumps(ALPACA) + "\n" + json.dumps(ALPACA), encoding="utf-8")
    assert len(list(read_records(lines))) == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(ALPACA) + "\n{oops\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"bad\.jsonl:2: invalid JSON"):
        list(read_records(bad))
    notobj = tmp_path / "n.jsonl"
    notobj.write_text("[1, 2]\n", encoding="utf-8")
    with pytest.raises(InputError, match="n.jsonl:1: expected a JSON object"):
        list(read_records(notobj))
    with pytest.raises(InputError, match="file not found"):
        list(read_records(tmp_path / "missing.jsonl"))


def test_read_texts(tmp_path):
    txt = tmp_path / "book.txt"
    txt.write_text("第一段。\n续行。\n\n\n第二段。\n", encoding="utf-8")
    assert list(read_texts(txt)) == [(1, "第一段。\n续行。"), (5, "第二段。")]
    jl = tmp_path / "t.jsonl"
    jl.write_text('{"text": "abc"}\n{"text": 3}\n', encoding="utf-8")
    with pytest.raises(InputError, match="t.jsonl:2"):
        list(read_texts(jl))
