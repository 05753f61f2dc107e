"""HuaTuo's template names reproduce HuaTuo's prompt strings; HuaTuo template JSON files load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qihuang.data.prompts import IGNORE_INDEX, Template, get_template, list_templates
from qihuang.errors import ConfigError

HUATUO = Path(__file__).parent / "fixtures" / "seeds" / "huatuo"
Q = "胃溃疡的典型症状有哪些？"
TURNS = [{"role": "user", "content": "慢性胃炎需要做胃镜吗？"}, {"role": "assistant", "content": "反复不适时建议做。"},
         {"role": "user", "content": "做之前要空腹多久？"}]


@pytest.fixture(scope="module")
def tok(tiny_llama):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llama)


# HuaTuo-Llama-Med-Chinese templates/*.json prompt_no_input, with {instruction} filled the way
# its utils/prompter.py does (str.format); written out here as the reference strings.
@pytest.mark.parametrize("name, expected", [
    ("med_template", f"下面是一个问题，运用医学知识来正确回答提问.\n### 问题:\n{Q}\n### 回答:\n"),
    ("literature_template", f"以下是描述任务的说明，编写适当地回复完成请求的响应。\n\n ### 说明:\n <user>: {Q}\n\n### 回复:\n"),
    ("bloom_deploy", f"下面是一个问题，运用医学知识来正确回答提问.\n{Q}\n### 回答：\n"),
    ("ori_template", f"问题：{Q} 回答:"),
])
def test_huatuo_names_render_huatuo_strings(tok, name, expected):
    assert get_template(name).render(tok, [{"role": "user", "content": Q}]) == expected


def test_literature_multi_turn_is_flattened_like_huatuo_data(tok):
    """HuaTuo's literature records hold the dialogue flat in `instruction`: " <user>: … <bot>: … <user>: …"."""
    text = get_template("literature_template").render(tok, TURNS)
    assert text == ("以下是描述任务的说明，编写适当地回复完成请求的响应。\n\n ### 说明:\n"
                    " <user>: 慢性胃炎需要做胃镜吗？ <bot>: 反复不适时建议做。 <user>: 做之前要空腹多久？\n\n### 回复:\n")
    ids, labels = get_template("literature_template").encode_supervised(
        tok, TURNS + [{"role": "assistant", "content": "一般空腹六小时以上。"}])
    trained = tok.decode([i for i, lab in zip(ids, labels) if lab != IGNORE_INDEX])
    assert trained == "一般空腹六小时以上。" + tok.eos_token  # only the last answer is trained


def test_qihuang_variants_keep_their_own_names():
    names = set(list_templates())
    assert {"qihuang_literature", "qihuang_human_assistant"} <= names
    assert get_template("qihuang_human_assistant").format_user.startswith("Human:")


def test_huatuo_template_json_file_loads_as_template(tok):
    path = HUATUO / "templates" / "clinic_template.json"
    template = get_template(str(path))
    assert template.name == "clinic_template" and template.response_split == "### 答复:"
    assert template.render(tok, [{"role": "user", "content": Q}]) == f"请结合临床常识回答.\n### 提问:\n{Q}\n### 答复:\n"
    flat = template.render(tok, TURNS, knowledge=[["胃镜", "检查前准备", "空腹"]])
    assert "参考知识：\n- 胃镜 检查前准备：空腹\n <user>: 慢性胃炎" in flat


def test_huatuo_med_template_file_equals_registered_med_template(tmp_path, tok):
    """A user's copy of HuaTuo's med_template.json gives the same prompt as the built-in name."""
    data = {"description": "copy", "prompt_input": "下面是一个问题，运用医学知识来正确回答提问.\n### 问题:\n{instruction}\n### 回答:\n",
            "prompt_no_input": "下面是一个问题，运用医学知识来正确回答提问.\n### 问题:\n{instruction}\n### 回答:\n",
            "response_split": "### 回答:"}
    path = tmp_path / "med_template.json"
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    msgs = [{"role": "user", "content": Q}, {"role": "assistant", "content": "上腹痛。"}]
    assert get_template(str(path)).encode_supervised(tok, msgs) == get_template("med_template").encode_supervised(tok, msgs)


@pytest.mark.parametrize("fields, message", [
    ({"prompt_no_input": "没有槽位"}, "must be a string containing {instruction}"),
    ({"prompt_input": "{instruction}"}, "'prompt_no_input' is required"),
    ({"prompt_no_input": "{instruction}", "dialogue": "nested"}, "field 'dialogue'"),
    ({"prompt_no_input": "{instruction}", "kind": "chat"}, "needs kind 'text'"),
])
def test_bad_prompt_style_template_names_field(fields, message):
    with pytest.raises(ConfigError, match=message):
        Template.from_dict(fields, name="bad")


@pytest.mark.parametrize("name", list_templates())
def test_every_registered_template_renders_and_round_trips(tok, name, tmp_path):
    """Each entry of resources/templates.yaml builds, renders a grounded prompt, and survives save/load."""
    from qihuang.data.prompts import load_template, save_template

    template = get_template(name)
    prompt = template.render(tok, TURNS, knowledge=[["胃镜", "检查前准备", "空腹"]])
    assert "做之前要空腹多久？" in prompt and "参考知识：" in prompt
    save_template(template, tmp_path)
    assert load_template(tmp_path) == template
