"""Tests for qihuang.data.prompts: rendering, supervised masks, knowledge block, persistence."""

from __future__ import annotations

import pytest

from qihuang.data.prompts import (
    IGNORE_INDEX,
    Template,
    format_knowledge,
    get_template,
    list_templates,
    load_template,
    save_template,
)
from qihuang.errors import ConfigError, InputError
from qihuang.kb.types import Fact

MESSAGES = [
    {"role": "user", "content": "偏头痛的症状？"},
    {"role": "assistant", "content": "头痛、恶心。"},
    {"role": "user", "content": "怎么治 {braces}？"},
    {"role": "assistant", "content": "可用布洛芬。"},
]
KNOWLEDGE = [["偏头痛", "症状", "头痛"], ["偏头痛", "症状", "恶心"], ["偏头痛", "药物治疗", "布洛芬"]]


@pytest.fixture(scope="module")
def tokenizers(tiny_llama, tiny_qwen2):
    from transformers import AutoTokenizer

    return [AutoTokenizer.from_pretrained(tiny_llama), AutoTokenizer.from_pretrained(tiny_qwen2)]


def test_registry_has_required_templates():
    assert {"auto", "med_template", "literature_template", "bloom_deploy", "alpaca"} <= set(list_templates())
    assert get_template("auto").kind == "chat"
    assert get_template("med_template").stop == ["### 问题:"]


def test_med_template_matches_huatuo_format(tokenizers):
    text = get_template("med_template").render(tokenizers[0], MESSAGES[:1])
    assert text == "下面是一个问题，运用医学知识来正确回答提问.\n### 问题:\n偏头痛的症状？\n### 回答:\n"


@pytest.mark.parametrize("name", ["auto", "med_template", "qihuang_literature", "qihuang_human_assistant",
                                  "alpaca"])
def test_labels_cover_only_answers_and_eos(tokenizers, name):
    template = get_template(name)
    for tok in tokenizers:
        assert tok.pad_token_id == tok.eos_token_id
        ids, labels = template.encode_supervised(tok, MESSAGES, knowledge=KNOWLEDGE)
        assert len(ids) == len(labels)
        trained = [i for i, lab in zip(ids, labels) if lab != IGNORE_INDEX]
        # every assistant turn is trained, each followed by its EOS (pad id == eos id here)
        assert tok.decode(trained) == "头痛、恶心。<|im_end|>可用布洛芬。<|im_end|>"
        assert trained.count(tok.eos_token_id) == 2
        masked = tok.decode([i for i, lab in zip(ids, labels) if lab == IGNORE_INDEX])
        assert "偏头痛的症状？" in masked and "头痛、恶心" in masked  # prompt + knowledge masked


@pytest.mark.parametrize("name", ["auto", "med_template", "alpaca", "literature_template", "bloom_deploy"])
def test_inference_prompt_is_prefix_of_training_ids(tokenizers, name):
    template = get_template(name)
    tok = tokenizers[1]
    ids, _ = template.encode_supervised(tok, MESSAGES, system="你是医生", knowledge=KNOWLEDGE)
    prompt = template.render(tok, MESSAGES[:3], system="你是医生", knowledge=KNOWLEDGE)
    prompt_ids = tok(prompt)["input_ids"]
    assert ids[: len(prompt_ids)] == prompt_ids
    assert "你是医生" in prompt and "参考知识：" in prompt


def test_cutoff_len_truncates(tokenizers):
    ids, labels = get_template("auto").encode_supervised(tokenizers[0], MESSAGES, cutoff_len=10)
    assert len(ids) == len(labels) == 10


def test_format_knowledge_groups_dedupes_and_accepts_facts():
    facts = [Fact("感冒", "drugs", "药物治疗", "布洛芬"), Fact("感冒", "drugs", "药物治疗", "布洛芬"),
             Fact("感冒", "drugs", "药物治疗", "对乙酰氨基酚"), Fact("感冒", "symptoms", "症状", "发热")]
    block = format_knowledge(facts)
    assert block.splitlines() == ["参考知识：", "- 感冒 药物治疗：布洛芬、对乙酰氨基酚", "- 感冒 症状：发热"]
    assert format_knowledge([["感冒", "药物治疗", "布洛芬"], ["感冒", "药物治疗", "对乙酰氨基酚"],
                             ["感冒", "症状", "发热"]]) == block
    assert format_knowledge([]) == ""
    with pytest.raises(InputError, match="knowledge"):
        format_knowledge([["only", "two"]])


def test_save_and_load_template_roundtrip(tmp_path):
    assert load_template(tmp_path) is None
    template = get_template("med_template")
    path = save_template(template, tmp_path)
    assert path.name == "qihuang_template.json"
    assert load_template(tmp_path) == template


def test_unknown_template_and_bad_fields(tmp_path):
    with pytest.raises(ConfigError, match="unknown template 'nope'"):
        get_template("nope")
    with pytest.raises(ConfigError, match="format_user"):
        Template(name="bad", kind="text", format_user="no slot")
    with pytest.raises(ConfigError, match="colour"):
        Template.from_dict({"name": "x", "colour": "red"})
    custom = tmp_path / "mine.yaml"
    custom.write_text('kind: text\nformat_user: "Q: {content}\\nA: "\n', encoding="utf-8")
    assert get_template(str(custom)).format_user == "Q: {content}\nA: "


def test_chat_without_template_falls_back(tokenizers):
    import copy

    tok = copy.deepcopy(tokenizers[0])
    tok.chat_template = None
    assert get_template("auto").render(tok, MESSAGES[:1]) == get_template("alpaca").render(tok, MESSAGES[:1])
    assert get_template("auto").for_tokenizer(tok).stop == ["### Instruction:"]
    assert get_template("auto").for_tokenizer(tokenizers[0]).name == "auto"


def test_chat_template_without_system_role_folds_system(tokenizers):
    import copy

    tok = copy.deepcopy(tokenizers[0])
    tok.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system') }}{% endif %}"
        "{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )
    text = get_template("auto").render(tok, MESSAGES[:1], system="你是医生")
    assert text.startswith("<|im_start|>user\n你是医生\n\n偏头痛")
    ids, labels = get_template("auto").encode_supervised(tok, MESSAGES[:2], system="你是医生")
    assert tok.decode([i for i, lab in zip(ids, labels) if lab != IGNORE_INDEX]) == "头痛、恶心。<|im_end|>"


def test_bad_messages_rejected(tokenizers):
    with pytest.raises(InputError, match="start with a user"):
        get_template("alpaca").render(tokenizers[0], [{"role": "assistant", "content": "hi"}])
    with pytest.raises(InputError, match="messages"):
        get_template("alpaca").render(tokenizers[0], [{"role": "user", "content": 3}])
