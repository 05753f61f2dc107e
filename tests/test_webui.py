"""`qihuang webui` in a real headless Chromium (Debian `chromium`, driven by Playwright)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from answer_fakes import FakeEngine, free_port
from kb_fixture import make_tiny_kb

from qihuang import DISCLAIMER
from qihuang.answer.answerer import Answerer
from qihuang.answer.triage import triage
from qihuang.serve.webui import banner_html, build_webui, launch, respond

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
ARTIFACTS = Path(__file__).parent / "artifacts"
BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run"]


def test_respond_streams_and_ends_with_banner_and_citations(tmp_path):
    answerer = Answerer(FakeEngine(), make_tiny_kb(tmp_path / "kb.sqlite"))
    updates = list(respond(answerer, "孩子高烧还抽搐了，感冒会这样吗", [], [], True))
    assert len(updates) > 2
    _, chat, history, banner, cites = updates[-1]
    assert chat[-1]["content"].startswith("【紧急】") and 'data-level="emergency"' in banner
    assert "感冒" in cites and len(history) == 1
    assert banner_html(triage("偏头痛吃什么药")) == ""
    assert "&lt;" in banner_html(type("T", (), {"level": "urgent", "message": "<b>x</b>"})())


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium not installed (make chromium)")
def test_webui_in_headless_chromium(tmp_path):
    from playwright.sync_api import sync_playwright

    answerer = Answerer(FakeEngine(), make_tiny_kb(tmp_path / "kb.sqlite"))
    demo = build_webui(answerer)
    port = free_port()
    launch(demo, port=port, block=False)
    url = f"http://127.0.0.1:{port}/"
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
            page = browser.new_page(viewport={"width": 1100, "height": 1000})
            # nothing may leave the machine
            page.route("**/*", lambda route: route.continue_() if route.request.url.startswith(
                ("http://127.0.0.1", "data:", "blob:")) else route.abort())
            page.goto(url, wait_until="domcontentloaded", timeout=60_000)
            box = page.locator("#question textarea")
            box.wait_for(timeout=60_000)

            box.fill("偏头痛吃什么药？")
            page.locator("#send").click()
            page.wait_for_function("document.querySelector('#citations')?.innerText.includes('偏头痛')",
                                   timeout=30_000)
            cites = page.inner_text("#citations")
            assert "药物治疗" in cites and "布洛芬" in cites
            assert "根据知识库" in page.inner_text("#chatbot")
            assert page.inner_text("#triage-banner").strip() == ""

            box.fill("我爸突然胸口痛，一直冒冷汗，他有高血压")
            page.locator("#send").click()
            page.wait_for_selector("#triage-banner .banner.emergency", timeout=30_000)
            assert "120" in page.inner_text("#triage-banner")
            page.wait_for_function("document.querySelector('#citations')?.innerText.includes('高血压')",
                                   timeout=30_000)
            assert DISCLAIMER[:10] in page.inner_text("body")
            ARTIFACTS.mkdir(exist_ok=True)
            shot = ARTIFACTS / "webui.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
            browser.close()
    finally:
        demo.close()


BAD_IBU = "布洛芬缓释胶囊的适应症包括头痛、皮疹和痛经。它也能治疗肺炎。"


def test_unsupported_and_wrong_attribute_spans_are_marked(tmp_path):
    from qihuang.serve.webui import marked_html

    answerer = Answerer(FakeEngine(reply=lambda p: BAD_IBU + "<b>"), make_tiny_kb(tmp_path / "kb.sqlite"),
                        on_unsupported="flag")
    _, chat, _, _, cites = list(respond(answerer, "布洛芬缓释胶囊的适应症是什么？", [], [], True))[-1]
    content = chat[-1]["content"]
    assert '<mark class="qh-wrong_attribute" data-status="wrong_attribute"' in content
    assert '<mark class="qh-unsupported" data-status="unsupported"' in content and ">肺炎</mark>" in content
    assert "&lt;b&gt;" in content  # the model's text is escaped
    assert "⚠" in cites and "2处" in cites
    dropped = Answerer(FakeEngine(reply=lambda p: BAD_IBU), make_tiny_kb(tmp_path / "kb.sqlite"))
    ans = dropped.answer("布洛芬缓释胶囊的适应症是什么？")
    assert "<mark" not in marked_html(ans) and "肺炎" not in marked_html(ans)


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium not installed (make chromium)")
def test_webui_marks_spans_in_headless_chromium(tmp_path):
    from playwright.sync_api import sync_playwright

    answerer = Answerer(FakeEngine(reply=lambda p: BAD_IBU), make_tiny_kb(tmp_path / "kb.sqlite"),
                        on_unsupported="flag")
    demo = build_webui(answerer)
    port = free_port()
    launch(demo, port=port, block=False)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.route("**/*", lambda route: route.continue_() if route.request.url.startswith(
                ("http://127.0.0.1", "data:", "blob:")) else route.abort())
            page.goto(f"http://127.0.0.1:{port}/", wait_until="domcontentloaded", timeout=60_000)
            box = page.locator("#question textarea")
            box.wait_for(timeout=60_000)
            box.fill("布洛芬缓释胶囊的适应症是什么？")
            page.locator("#send").click()
            page.wait_for_selector("#chatbot mark", timeout=30_000)
            marks = page.locator("#chatbot mark").all_inner_texts()
            assert "皮疹" in marks and "肺炎" in marks
            assert "⚠" in page.inner_text("#citations")
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "webui_verification.png"), full_page=True)
            browser.close()
    finally:
        demo.close()
