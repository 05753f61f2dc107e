"""``qihuang chat``: a multi-turn terminal chat that streams answers, shows citations and triage.

Commands: ``/reset`` clears the conversation, ``/exit`` (or ``/quit``, or end of input) quits,
``/help`` lists them. With piped input, each line is one question and no prompt is printed. The
conversation is fitted into the model's context window by the Answerer (oldest turns dropped first,
said under the answer), as the API and the web UI do.
"""

from __future__ import annotations

from typing import TextIO

from qihuang import DISCLAIMER
from qihuang.errors import QihuangError

HELP = "命令：/reset 清空对话  /exit 退出  /help 帮助"
BANNER = f"岐黄 qihuang chat — 输入问题后回车。{HELP}\n※ {DISCLAIMER}"


def _read(stdin: TextIO, stdout: TextIO, interactive: bool) -> str | None:
    if interactive:
        stdout.write("\n你> ")
        stdout.flush()
    line = stdin.readline()
    return None if line == "" else line.strip()


def warning_line(answer) -> str | None:
    """A warning when the answer keeps claims its citations do not support (None otherwise),
    or a note of what the policy removed."""
    v = answer.verification
    if not v.ok:
        from qihuang.answer.verify import load_config

        spans = "、".join(f"「{c.text}」({'属性不符' if c.status == 'wrong_attribute' else '无依据'})" for c in v.bad)
        return "⚠ " + load_config().messages["warning"].format(n=len(v.bad)) + f" {spans}"
    if v.dropped:
        return f"（已删去 {len(v.dropped)} 处知识库不支持的内容）"
    return None


def _footer(answer) -> list[str]:
    lines = [f"（对话较长：最早的 {answer.dropped_turns} 条消息未放入模型的上下文）"] if answer.dropped_turns else []
    warning = warning_line(answer)
    if warning:
        lines.append(warning)
    if answer.citations:
        lines.append("引用的知识：")
        lines += [f"  [{i}] {c.text()}" for i, c in enumerate(answer.citations, 1)]
    elif not answer.refused and not answer.abstained:
        lines.append("（知识库中没有找到相关条目：此回答未经知识库核对）")
    lines.append(f"※ {answer.disclaimer}")
    return lines


def _answer_turn(answerer, question: str, history: list[list[str]], stdout: TextIO):
    """Stream one answer to ``stdout``; returns the final Answer (None if interrupted)."""
    stdout.write("岐黄> ")
    answer, shown = None, []
    try:
        for item in answerer.stream(question, history=history):
            if isinstance(item, str):
                shown.append(item)
                stdout.write(item)
                stdout.flush()
            else:
                answer = item
    except KeyboardInterrupt:
        stdout.write("\n（已中断）\n")
        return None
    except QihuangError as exc:  # e.g. a question longer than the model's context: say so, keep chatting
        stdout.write(f"\n（无法回答：{exc}）\n")
        return None
    if "".join(shown).strip() != answer.text.strip():  # the policy changed what was streamed
        stdout.write("\n（核对后的回答）\n" + answer.text)
    stdout.write("\n" + "\n".join(_footer(answer)) + "\n")
    stdout.flush()
    return answer


def run_chat(answerer, stdin: TextIO, stdout: TextIO, interactive: bool | None = None) -> int:
    """Run the chat loop until ``/exit`` or end of input; returns the exit code. The whole conversation
    goes to the Answerer, which fits it into the model's context window (oldest turns dropped first)."""
    interactive = stdin.isatty() if interactive is None else interactive
    stdout.write(BANNER + "\n")
    history: list[list[str]] = []
    while True:
        try:
            question = _read(stdin, stdout, interactive)
        except KeyboardInterrupt:
            question = None
        if question is None or question in ("/exit", "/quit"):
            break
        if not question:
            continue
        if question == "/reset":
            history.clear()
            stdout.write("（对话已清空）\n")
            continue
        if question.startswith("/"):
            stdout.write(("" if question == "/help" else f"未知命令 {question}。") + HELP + "\n")
            continue
        answer = _answer_turn(answerer, question, history, stdout)
        if answer is not None and not answer.refused:
            history.append([answer.question, answer.model_text or answer.text])
    stdout.write("再见。\n")
    return 0
