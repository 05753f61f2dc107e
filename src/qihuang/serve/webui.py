"""``qihuang webui``: a Gradio chat page showing the answer, the cited facts and the triage banner.

``build_webui(answerer)`` returns a ``gr.Blocks``; answers stream into the chat while they are
generated. The page uses system fonts only (no request leaves the machine).
"""

from __future__ import annotations

import html

from qihuang import DISCLAIMER

_CSS = """
#triage-banner .banner { padding: 12px 16px; border-radius: 8px; font-weight: 600; white-space: pre-line; }
#triage-banner .emergency, #triage-banner .refuse { background: #fde2e1; color: #8a1c12; border: 2px solid #d93025; }
#triage-banner .urgent { background: #fff4d6; color: #6b4a00; border: 2px solid #f2a600; }
#disclaimer { font-size: 0.85em; color: #666; }
mark.qh-unsupported { background: #fde2e1; text-decoration: underline wavy #d93025; }
mark.qh-wrong_attribute { background: #fff4d6; text-decoration: underline wavy #f2a600; }
"""

_STATUS_TITLE = {"unsupported": "引用的知识中没有这一条", "wrong_attribute": "引用的知识中有它，但属于另一项属性"}

_LEVEL_TITLE = {"emergency": "⚠ 紧急情况", "urgent": "⚠ 请尽快就医", "refuse": "⛔ 无法回答"}


def banner_html(triage) -> str:
    """The triage banner (empty when there is no red flag)."""
    if triage is None or triage.level == "none":
        return ""
    title = _LEVEL_TITLE.get(triage.level, triage.level)
    return (f'<div class="banner {triage.level}" role="alert" data-level="{triage.level}">'
            f"{html.escape(title)}<br>{html.escape(triage.message)}</div>")


def citations_markdown(answer) -> str:
    """The facts cited by ``answer`` as a Markdown list (or why there are none)."""
    if answer is None:
        return ""
    if answer.refused:
        return "**引用的知识**：无（请求被拒绝，未生成回答）"
    if not answer.citations:
        return "**引用的知识**：知识库中没有找到相关条目，此回答未经知识库核对。"
    lines = [f"{i}. **{c.entity}** · {c.relation}：{'、'.join(c.values)}" for i, c in enumerate(answer.citations, 1)]
    return "**引用的知识**\n\n" + "\n".join(lines)


def marked_html(answer) -> str:
    """``answer.text`` HTML-escaped, with its unsupported and wrong-attribute spans in ``<mark>``."""
    text = answer.text
    bad = sorted(answer.verification.bad, key=lambda c: c.start)
    out, pos = [], 0
    for c in bad:
        if c.start < pos or c.end > len(text):
            continue
        title = f"{_STATUS_TITLE[c.status]}（{'、'.join(c.presented) or '未说明属性'}）"
        out += [html.escape(text[pos:c.start]),
                f'<mark class="qh-{c.status}" data-status="{c.status}" title="{html.escape(title)}">'
                f"{html.escape(text[c.start:c.end])}</mark>"]
        pos = c.end
    out.append(html.escape(text[pos:]))
    return "".join(out)


def dropped_note(answer) -> str:
    """A note when earlier turns were left out of the prompt to fit the model's context window."""
    n = answer.dropped_turns
    return f"（对话较长：最早的 {n} 条消息未放入模型的上下文）" if n else ""


def verification_markdown(answer) -> str:
    """One line on what verification found (empty when all is supported and nothing was cut)."""
    v = answer.verification
    if not v.checked:
        return ""
    if not v.ok:
        from qihuang.answer.verify import load_config

        return "\n\n⚠ " + load_config().messages["warning"].format(n=len(v.bad))
    if v.dropped:
        return f"\n\n（已删去 {len(v.dropped)} 处知识库不支持的内容）"
    return ""


def respond(answerer, message: str, chat: list[dict], history: list[list[str]], grounded: bool):
    """Stream one answer: yields (textbox, chat, history, banner, citations) updates."""
    message = (message or "").strip()
    if not message:
        yield "", chat, history, "", ""
        return
    chat = [*chat, {"role": "user", "content": message}, {"role": "assistant", "content": ""}]
    text, answer = "", None
    for item in answerer.stream(message, history=history, grounded=grounded):  # fitted to the context window
        if isinstance(item, str):
            text += item
            chat[-1] = {"role": "assistant", "content": text}
            yield "", chat, history, "", ""
        else:
            answer = item
    chat[-1] = {"role": "assistant", "content": marked_html(answer)}
    if not answer.refused:  # an abstained turn stays too: a red flag in it still counts later
        history = [*history, [answer.question, answer.model_text or answer.text]]
    notes = citations_markdown(answer) + verification_markdown(answer)
    if dropped_note(answer):
        notes += "\n\n" + dropped_note(answer)
    yield "", chat, history, banner_html(answer.triage), notes


def build_webui(answerer, title: str = "岐黄 qihuang"):
    """The Gradio app serving ``answerer``."""
    import gradio as gr

    with gr.Blocks(title=title, analytics_enabled=False) as demo:
        gr.Markdown(f"## {html.escape(title)}\n知识库增强的中文医疗问答：回答附带引用的知识条目，危险信号会被标出。")
        banner = gr.HTML("", elem_id="triage-banner")
        chat = gr.Chatbot(label="对话", elem_id="chatbot", height=360, buttons=["copy"])
        with gr.Row():
            box = gr.Textbox(placeholder="请输入你的健康问题，例如：偏头痛吃什么药？", show_label=False,
                             elem_id="question", scale=5)
            send = gr.Button("发送", variant="primary", elem_id="send", scale=1)
        with gr.Row():
            grounded = gr.Checkbox(value=answerer.kb is not None, label="使用知识库（引用事实）",
                                   interactive=answerer.kb is not None, elem_id="grounded")
            reset = gr.Button("清空对话", elem_id="reset")
        cites = gr.Markdown("", elem_id="citations")
        gr.Markdown(f"※ {DISCLAIMER}", elem_id="disclaimer")
        state = gr.State([])

        def on_send(message, chat_value, history, use_kb):
            yield from respond(answerer, message, chat_value or [], history or [], bool(use_kb))

        outputs = [box, chat, state, banner, cites]
        send.click(on_send, [box, chat, state, grounded], outputs)
        box.submit(on_send, [box, chat, state, grounded], outputs)
        reset.click(lambda: ("", [], [], "", ""), None, outputs)
    demo.qihuang_launch_kwargs = {"css": _CSS, "theme": _theme(gr)}
    return demo


def _theme(gr):
    return gr.themes.Default(font=["system-ui", "Noto Sans CJK SC", "sans-serif"],
                             font_mono=["ui-monospace", "monospace"])


def launch(demo, host: str = "127.0.0.1", port: int = 7860, max_queue: int = 8, block: bool = True):
    """Start the page (``block=False`` returns at once, for tests)."""
    extra = getattr(demo, "qihuang_launch_kwargs", {})
    demo.queue(max_size=max_queue)
    return demo.launch(server_name=host, server_port=port, share=False, prevent_thread_lock=not block,
                       quiet=not block, footer_links=[], **extra)
