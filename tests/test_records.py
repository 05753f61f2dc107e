"""qihuang.records: the one record schema, role table, column maps, reader (true lines) and views."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qihuang.errors import InputError
from qihuang.records import (FIELDS, IGNORE_INDEX, ROLES, make_record, provenance_problems, read_items, read_numbered,
                             read_records, remap_columns, scan_records, to_conversation, to_prompt)

A = {"instruction": "感冒吃什么药？", "output": "可以多休息。"}
B = {"instruction": "头痛怎么办？", "output": "建议就医。"}
C = {"conversations": [{"from": "human", "value": "发烧了"}, {"from": "gpt", "value": "多喝水。"}]}


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# ---- the reader: true line numbers in every format --------------------------------------------
def test_json_lines_give_physical_lines_past_blank_lines(tmp_path):
    path = write(tmp_path / "d.jsonl", "\n".join(["", json.dumps(A), "", "", json.dumps(B), json.dumps(C)]) + "\n")
    assert [(n.number, n.line) for n in read_numbered(path)] == [(1, 2), (2, 5), (3, 6)]
    assert [rec for _, rec in read_records(path)] == [A, B, C]


def test_json_array_spread_over_lines_gives_the_line_each_record_starts_on(tmp_path):
    text = "[\n" + json.dumps(A, indent=2) + ",\n\n" + json.dumps(B) + ",\n" + json.dumps(C, indent=1) + "\n]\n"
    path = write(tmp_path / "d.json", text)
    lines = text.splitlines()
    got = list(read_numbered(path))
    assert [n.record for n in got] == [A, B, C]
    for n in got:  # the reported line is where the record's text begins
        assert lines[n.line - 1].lstrip().startswith("{")
    assert [(n.number, n.line) for n in got] == [(1, 2), (2, 7), (3, 8)]


def test_single_line_array_shares_line_one_and_numbers_records(tmp_path):
    path = write(tmp_path / "d.json", json.dumps([A, B, C], ensure_ascii=False))
    assert [(n.number, n.line) for n in read_numbered(path)] == [(1, 1), (2, 1), (3, 1)]


def test_json_file_holding_json_lines_and_trailing_comma_array(tmp_path):
    lines = write(tmp_path / "lines.json", json.dumps(A) + "\n" + json.dumps(B) + "\n")
    assert [line for line, _ in read_records(lines)] == [1, 2]
    trailing = write(tmp_path / "t.json", "[" + json.dumps(A) + ",\n" + json.dumps(B) + ",\n]")
    assert [line for line, _ in read_records(trailing)] == [1, 2]
    strings = write(tmp_path / "q.json", '[\n"感冒吃什么药？",\n"头痛怎么办？"\n]')
    assert [(n.line, n.record) for n in read_items(strings)] == [(2, "感冒吃什么药？"), (3, "头痛怎么办？")]


def test_reader_errors_name_the_file_and_true_line(tmp_path):
    bad = write(tmp_path / "bad.jsonl", json.dumps(A) + "\n\n{broken\n")
    with pytest.raises(InputError, match=r"bad\.jsonl:3: invalid JSON"):
        list(read_records(bad))
    array = write(tmp_path / "bad.json", "[\n" + json.dumps(A) + ",\n" + json.dumps(B) + "\n{x}\n]")
    with pytest.raises(InputError, match=r"bad\.json:4"):
        list(read_records(array))
    not_object = write(tmp_path / "list.json", "[\n" + json.dumps(A) + ",\n[1, 2]\n]")
    with pytest.raises(InputError, match=r"list\.json:3: expected a JSON object, got list"):
        list(read_records(not_object))
    with pytest.raises(InputError, match="file not found"):
        list(read_records(tmp_path / "missing.jsonl"))


def test_scan_goes_on_past_a_bad_line(tmp_path):
    path = write(tmp_path / "d.jsonl", json.dumps(A) + "\n{broken\n[1]\n" + json.dumps(B) + "\n")
    got = [(s.number, s.line, s.error is None) for s in scan_records(path)]
    assert got == [(1, 1, True), (2, 2, False), (3, 3, False), (4, 4, True)]


@pytest.mark.parametrize("layout", ["jsonl", "spread", "one_line"])
def test_shape_errors_name_file_line_and_field(tmp_path, layout):
    bad = {"instruction": "q", "output": "a", "history": [["only one"]]}
    if layout == "jsonl":
        path, line = write(tmp_path / "d.jsonl", json.dumps(A) + "\n\n" + json.dumps(bad) + "\n"), 3
    elif layout == "spread":
        path, line = write(tmp_path / "d.json", "[\n" + json.dumps(A) + ",\n\n" + json.dumps(bad) + "\n]"), 4
    else:
        path, line = write(tmp_path / "d.json", json.dumps([A, bad])), 1
    with pytest.raises(InputError) as err:
        for n in read_numbered(path):
            to_conversation(n.record, path, n.line)
    assert str(err.value).startswith(f"{path}:{line}: field 'history':")
    assert (err.value.path, err.value.line, err.value.field) == (str(path), line, "history")


# ---- roles: one table for training, evaluation and inference -----------------------------------
@pytest.mark.parametrize("user,bot", [(u, b) for u in ROLES if ROLES[u] == "user" for b in ROLES
                                      if ROLES[b] == "assistant"])
def test_every_role_name_is_read_alike_by_training_openqa_infer_and_pairs(tmp_path, user, bot):
    from qihuang.records import question_of
    from qihuang.data.pairwise import to_pair
    from qihuang.eval.tasks.openqa import load_qa

    record = {"conversations": [{"from": "system", "value": "你是医生"}, {"from": user, "value": "你好"},
                                {"from": bot, "value": "你好。"}, {"from": user.upper(), "value": "感冒吃什么药？"},
                                {"from": bot, "value": "多休息。"}]}
    conv = to_conversation(record)
    assert [m["role"] for m in conv["messages"]] == ["user", "assistant"] * 2 and conv["system"] == "你是医生"
    path = write(tmp_path / "d.jsonl", json.dumps(record, ensure_ascii=False) + "\n")
    ds = load_qa(path, need_reference=True)
    assert not ds.skipped
    ex = ds.examples[0]
    assert (ex.question, ex.reference, ex.history) == ("感冒吃什么药？", "多休息。", [["你好", "你好。"]])
    item = question_of(record, str(path), 1)
    assert (item["question"], item["reference"], item["system"]) == ("感冒吃什么药？", "多休息。", "你是医生")
    pair = to_pair({"conversations": record["conversations"][:4], "chosen": {"from": bot, "value": "多休息。"},
                    "rejected": {"role": bot, "content": "不用管。"}})
    assert (pair["chosen"], pair["rejected"]) == ("多休息。", "不用管。")


def test_unknown_role_is_an_error_everywhere(tmp_path):
    from qihuang.eval.tasks.openqa import load_qa

    record = {"conversations": [{"from": "doctor", "value": "q"}, {"from": "gpt", "value": "a"}]}
    with pytest.raises(InputError, match="conversations"):
        to_conversation(record)
    with pytest.raises(InputError, match="conversations"):
        to_prompt(record)
    ds = load_qa(write(tmp_path / "d.jsonl", json.dumps(record) + "\n"), need_reference=True)
    assert not ds.examples and "conversations" in ds.skipped[0].reason


# ---- to_prompt ------------------------------------------------------------------------------------
def test_to_prompt_reads_every_shape():
    assert to_prompt({"instruction": "胃痛", "input": "三天了", "output": "就医。"}) == \
        ("胃痛\n三天了", [], None, "就医。")
    assert to_prompt({"context": "头痛？", "target": "休息。"}).reference == "休息。"  # Med-ChatGLM
    assert to_prompt({"question": "咳嗽？", "answer": "多喝水。"})[::3] == ("咳嗽？", "多喝水。")
    flat = to_prompt({"instruction": "<user>: 你好 <bot>: 你好。 <user>: 发烧怎么办？ <bot>:", "output": "退烧。"})
    assert flat.question == "发烧怎么办？" and flat.history == [["你好", "你好。"]]
    open_turn = to_prompt({"messages": [{"role": "user", "content": "q1"}, {"role": "model", "content": "a1"},
                                        {"role": "user", "content": "q2"}], "system": "s"})
    assert open_turn == ("q2", [["q1", "a1"]], "s", None)
    with pytest.raises(InputError, match="'instruction'"):
        to_prompt({"instruction": "  ", "output": "x"}, "f.jsonl", 3)
    assert to_prompt({"instruction": "", "predict": "x"}, allow_empty=True).question == ""
    with pytest.raises(InputError, match="f.jsonl:2: unrecognised record"):
        to_prompt({"foo": 1}, "f.jsonl", 2)


# ---- schema and column maps ------------------------------------------------------------------------
def test_make_record_has_the_standard_fields_and_provenance_is_checked():
    rec = make_record("single", "q", "a", knowledge=[["s", "r", "o"]], entity="e", attribute="drugs", id="s-1",
                      pattern=3)
    assert tuple(rec) == FIELDS and rec["pattern"] == 3
    assert provenance_problems(rec) == []
    assert provenance_problems({**rec, "kind": "quiz", "pattern": "3"}) == [
        "unknown kind 'quiz'", "field 'pattern' should be a non-negative integer or null, got '3'"]


def test_column_maps_and_sharegpt_tags():
    out = remap_columns({"q": "头痛？", "a": "休息。"}, {"prompt": "q", "response": "a"})
    assert to_conversation(out)["messages"][-1]["content"] == "休息。"
    turns = remap_columns({"c": [{"who": "me", "text": "q"}, {"who": "ai", "text": "a"}]},
                          {"messages": "c"}, {"role_tag": "who", "content_tag": "text", "user_tag": "me",
                                              "assistant_tag": "ai"}, "sharegpt")
    assert [m["role"] for m in to_conversation(turns)["messages"]] == ["user", "assistant"]


def test_ignore_index_is_defined_once():
    import inspect
    import re

    from qihuang.data import collate, pairwise, prompts

    for module in (collate, pairwise, prompts):  # imported from the record module, not defined again
        assert not re.search(r"^IGNORE_INDEX\s*=", inspect.getsource(module), re.M), module.__name__
        assert module.IGNORE_INDEX == IGNORE_INDEX == -100


# ---- every stage reports the same true lines -------------------------------------------------------
def test_eval_validate_and_infer_report_true_lines_of_a_json_array(tmp_path):
    from qihuang.datagen.validate import validate_file
    from qihuang.eval.tasks.openqa import load_qa

    text = "[\n" + json.dumps(A, indent=2) + ",\n" + json.dumps({"instruction": "", "output": "x"}) + ",\n" + \
        json.dumps(B) + "\n]"
    path = write(tmp_path / "d.json", text)
    ds = load_qa(path, need_reference=True)
    assert [ex.line for ex in ds.examples] == [2, 7] and [s.line for s in ds.skipped] == [6]
    report = validate_file(path)
    assert [(p.line, p.record) for p in report.errors] == [(6, 2)]
    one_line = write(tmp_path / "one.json", json.dumps([A, B, C], ensure_ascii=False))
    ds = load_qa(one_line, need_reference=True)
    assert [ex.line for ex in ds.examples] == [1, 1, 1]
    assert [ex.id for ex in ds.examples] == ["one.json#1", "one.json#2", "one.json#3"]  # ids stay distinct


def test_knowledge_question_lists_report_true_lines(tmp_path):
    from qihuang.datagen.knowledge import read_questions

    path = write(tmp_path / "q.json", '[\n  "感冒吃什么药？",\n\n  "头痛怎么办？"\n]')
    assert list(read_questions(path)) == [(2, "感冒吃什么药？"), (4, "头痛怎么办？")]
