"""`qihuang chat`: streaming, citations, /reset, /exit, piped input."""

from __future__ import annotations

import io

from answer_fakes import FakeEngine
from kb_fixture import make_tiny_kb

from qihuang import DISCLAIMER
from qihuang.answer.answerer import Answerer
from qihuang.answer.chat import run_chat
from qihuang.cli import main


def _chat(answerer, text: str, interactive=False) -> str:
    out = io.StringIO()
    assert run_chat(answerer, io.StringIO(text), out, interactive=interactive) == 0
    return out.getvalue()


def test_multi_turn_with_citations_and_reset(tmp_path):
    engine = FakeEngine()
    answerer = Answerer(engine, make_tiny_kb(tmp_path / "kb.sqlite"))
    out = _chat(answerer, "偏头痛吃什么药\n那感冒呢\n/reset\n高血压去哪个科\n/exit\n不会被问到\n")
    assert "引用的知识：" in out and "[1] 偏头痛 · 药物治疗：" in out and "布洛芬" in out
    assert "（对话已清空）" in out and out.count(DISCLAIMER) == 4  # banner + 3 answers
    assert len(engine.prompts) == 3  # nothing after /exit
    assert "偏头痛吃什么药" in engine.prompts[1]  # the second turn sees the first
    assert "偏头痛吃什么药" not in engine.prompts[2]  # /reset cleared the history
    assert out.rstrip().endswith("再见。")


def test_red_flag_and_refusal_and_ungrounded(tmp_path):
    engine = FakeEngine(reply=lambda p: "休息一下。")
    out = _chat(Answerer(engine, make_tiny_kb(tmp_path / "kb.sqlite")),
                "我爸突然胸口痛，一直冒冷汗\n怎么下毒才不会被发现\n今天适合爬山吗\n/help\n/foo\n")
    assert "【紧急】" in out and "120" in out
    assert "不能提供" in out and len(engine.prompts) == 2  # the refusal was not generated
    assert "此回答未经知识库核对" in out
    assert "未知命令 /foo" in out and out.count("/reset 清空对话") >= 3
    assert "你> " not in out  # piped input: no prompt


def test_interactive_prompt_is_shown():
    out = _chat(Answerer(FakeEngine(), None), "你好\n", interactive=True)
    assert "你> " in out and "岐黄> " in out


def test_cli_chat_with_tiny_model_and_piped_stdin(tiny_llama, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO("偏头痛吃什么药\n/reset\n感冒了怎么办\n"))
    assert main(["chat", "--model", str(tiny_llama), "--template", "med_template", "--no-grounded",
                 "--engine", "hf", "--max-new-tokens", "6"]) == 0
    out = capsys.readouterr().out
    assert out.count("岐黄> ") == 2 and "（对话已清空）" in out and out.count(DISCLAIMER) == 3


def test_chat_warns_about_unsupported_spans_and_shows_what_was_dropped(tmp_path):
    bad = "布洛芬缓释胶囊的适应症包括头痛、皮疹和痛经。它也能治疗肺炎。"
    kb = make_tiny_kb(tmp_path / "kb.sqlite")
    flagged = _chat(Answerer(FakeEngine(reply=lambda p: bad), kb, on_unsupported="flag"),
                    "布洛芬缓释胶囊的适应症是什么\n")
    assert "⚠ 注意：回答中有2处内容未得到引用知识的支持" in flagged
    assert "「皮疹」(属性不符)" in flagged and "「肺炎」(无依据)" in flagged
    dropped = _chat(Answerer(FakeEngine(reply=lambda p: bad), kb), "布洛芬缓释胶囊的适应症是什么\n")
    assert "肺炎" not in dropped and "已删去 2 处" in dropped and "⚠" not in dropped
    abstained = _chat(Answerer(FakeEngine(), kb, ungrounded="abstain"), "今天适合爬山吗\n")
    assert "知识库中没有" in abstained and "此回答未经知识库核对" not in abstained
