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
    md = tmp_path / "book.md"
    md.write_text("第一段。\n续行。\n\n\n第二段。\n", encoding="utf-8")
    assert list(read_texts(md)) == [(1, "第一段。\n续行。"), (5, "第二段。")]
    txt = tmp_path / "book.txt"  # one document per line, as LLaMA-Factory reads .txt
    txt.write_text("第一篇。\n第二篇。\n\n第三篇。\n", encoding="utf-8")
    assert list(read_texts(txt)) == [(1, "第一篇。"), (2, "第二篇。"), (4, "第三篇。")]
    jl = tmp_path / "t.jsonl"
    jl.write_text('{"text": "abc"}\n{"text": 3}\n', encoding="utf-8")
    with pytest.raises(InputError, match="t.jsonl:2"):
        list(read_texts(jl))


# ---- qihuang.data.registry --------------------------------------------------------------------
def _jsonl(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def test_registry_dir_with_split_files(tmp_path):
    from qihuang.data.registry import load_split, resolve_dataset

    _jsonl(tmp_path / "train.jsonl", [ALPACA] * 3)
    _jsonl(tmp_path / "dev.jsonl", [ALPACA])
    spec = resolve_dataset(str(tmp_path))
    assert [s.path.name for s in spec.train] == ["train.jsonl"] and [s.path.name for s in spec.dev] == ["dev.jsonl"]
    train, dev = load_split(spec, max_samples=2)
    assert len(train) == 2 and len(dev) == 1


def test_registry_dataset_info_columns_tags_and_names(tmp_path):
    from qihuang.data.registry import load_split, resolve_dataset
    from qihuang.errors import ConfigError

    d = tmp_path / "lf"
    d.mkdir()
    _jsonl(d / "t.jsonl", [{"q": "Q1", "a": "A1", "kn": [["s", "r", "o"]]}, {"q": "Q2", "a": "A2"}])
    _jsonl(d / "s.jsonl", [{"msgs": [{"who": "u", "text": "Q"}, {"who": "b", "text": "A"}]}])
    info = {"mine_train": {"file_name": "t.jsonl", "columns": {"prompt": "q", "response": "a", "knowledge": "kn"}},
            "chat": {"file_name": "s.jsonl", "formatting": "sharegpt", "columns": {"messages": "msgs"},
                     "tags": {"role_tag": "who", "content_tag": "text", "user_tag": "u", "assistant_tag": "b"}}}
    (d / "dataset_info.json").write_text(json.dumps(info), encoding="utf-8")
    train, dev = load_split(resolve_dataset(str(d)), val_size=0.5, seed=1)
    assert len(train) == 1 and len(dev) == 1  # no dev file: val_size held out
    assert {c["messages"][0]["content"] for c in train + dev} == {"Q1", "Q2"}
    # NAMEs from a registry dir; several joined by commas
    spec = resolve_dataset("chat,mine_train", dataset_dir=d)
    convs, _ = load_split(spec)
    assert convs[0]["messages"] == [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]
    assert convs[1]["knowledge"] == [["s", "r", "o"]]
    with pytest.raises(ConfigError, match="'nope' is not a directory"):
        resolve_dataset("nope", dataset_dir=d)
    info["bad"] = {"file_name": "missing.jsonl"}
    (d / "dataset_info.json").write_text(json.dumps(info), encoding="utf-8")
    with pytest.raises(InputError, match="missing.jsonl"):
        resolve_dataset("bad", dataset_dir=d)


def test_registry_bad_record_names_file_and_line(tmp_path):
    from qihuang.data.registry import load_split, resolve_dataset

    _jsonl(tmp_path / "train.jsonl", [ALPACA, {"instruction": "Q", "output": 3}])
    with pytest.raises(InputError, match=r"train\.jsonl:2: field 'output'"):
        load_split(resolve_dataset(str(tmp_path)))


def test_collate_pads_labels_separately_and_plans_batches():
    from qihuang.data.collate import batch_plan, pad_batch, shard_batches

    batch = pad_batch([{"input_ids": [5, 2], "labels": [-100, 2]}, {"input_ids": [7], "labels": [7]}], pad_id=2)
    assert batch["input_ids"].tolist() == [[5, 2], [7, 2]]
    assert batch["labels"].tolist() == [[-100, 2], [7, -100]]  # the real EOS (=pad) stays trained
    assert batch["attention_mask"].tolist() == [[1, 1], [1, 0]]
    lengths = [i % 7 + 1 for i in range(40)]
    plan = batch_plan(lengths, 4, seed=3, epoch=0)
    assert plan == batch_plan(lengths, 4, seed=3, epoch=0) != batch_plan(lengths, 4, seed=3, epoch=1)
    assert sorted(i for b in plan for i in b) == list(range(40))
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in plan)
    assert spread < sum(max(lengths[i] for i in b) - min(lengths[i] for i in b)
                        for b in batch_plan(lengths, 4, seed=3, epoch=0, group_by_length=False))
    assert [len(shard_batches(plan, r, 3)) for r in range(3)] == [3, 3, 3]
