"""One reader for HuaTuo's flattened `<user>: … <bot>: …` dialogues: training, infer, eval and every
command that answers through the Answerer (chat, serve, webui) split it the same way."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from answer_fakes import FakeEngine
from kb_fixture import make_tiny_kb

from qihuang.answer.answerer import Answerer
from qihuang.records import question_of
from qihuang.data.formats import to_conversation, with_flat_turns
from qihuang.eval.tasks.openqa import qa_record

LITERATURE = Path(__file__).parent / "fixtures" / "seeds" / "huatuo" / "data-literature" / "gastric_literature.json"
RECORDS = json.loads(LITERATURE.read_text(encoding="utf-8"))


@pytest.mark.parametrize("record", RECORDS, ids=[str(i) for i in range(len(RECORDS))])
def test_train_infer_eval_and_answerer_agree(record):
    conv = to_conversation(record)["messages"]
    train = (conv[-2]["content"], [[conv[i]["content"], conv[i + 1]["content"]] for i in range(0, len(conv) - 2, 2)])
    item = question_of(record, "f", 1)
    assert (item["question"], item["history"]) == train
    assert qa_record(record)[0::2] == train
    assert with_flat_turns(record["instruction"], None)[0] == train[0]
    assert (with_flat_turns(record["instruction"], None)[1] or []) == train[1]


def test_answerer_splits_a_flat_dialogue_like_history(tmp_path):
    kb = make_tiny_kb(tmp_path / "kb.sqlite")
    engine = FakeEngine()
    flat = Answerer(engine, kb).answer(" <user>: 偏头痛是什么？ <bot>: 一种常见的头痛。 <user>: 偏头痛吃什么药？")
    turns = Answerer(engine, kb).answer("偏头痛吃什么药？", history=[["偏头痛是什么？", "一种常见的头痛。"]])
    assert engine.prompts[0] == engine.prompts[1] and "<user>" not in engine.prompts[0]
    assert flat.text == turns.text and flat.citations == turns.citations


def test_dict_history_and_text_that_only_mentions_a_marker():
    question, history = with_flat_turns("<user>: 头痛 <bot>: 休息 <user>: 还要吃药吗", [{"role": "user", "content": "a"},
                                                                                   {"role": "assistant", "content": "b"}])
    assert question == "还要吃药吗" and history[-2:] == [{"role": "user", "content": "头痛"},
                                                    {"role": "assistant", "content": "休息"}]
    assert with_flat_turns("我在文档里看到 <user>: 这个标记是什么意思", None) == ("我在文档里看到 <user>: 这个标记是什么意思", None)
