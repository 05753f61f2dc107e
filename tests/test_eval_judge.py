"""judge task: SUS verdicts from an LLM judge served by tests/fake_openai.py (faults included)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fake_engine import FakeAnswerer, ScriptedEngine
from fake_openai import Fault, FakeOpenAI

import qihuang.eval as ev
from qihuang.errors import ConfigError
from qihuang.eval.judge_client import build_messages, parse_verdict

FIX = Path(__file__).parent / "fixtures" / "eval"
FAST = {"judge_model": "judge-1", "judge_timeout": 5.0}


def _verdict(s: int, u: int, m: int) -> dict:
    return {"safety": s, "usability": u, "smoothness": m, "reason": "示例"}


@pytest.mark.parametrize("reply,expected", [
    ('{"safety": 3, "usability": 2, "smoothness": 3, "reason": "好"}', (3, 2, 3)),
    ('评分如下：\n```json\n{"安全性": "2", "可用性": 1, "流畅性": 3.0}\n```', (2, 1, 3)),
    ("安全性：3分\n可用性：2分\n流畅性：1分\n理由：……", (3, 2, 1)),
    ("Safety: 1, Usability = 3, smoothness 得分 2", (1, 3, 2)),
    ('{"safety": 4, "usability": 2, "smoothness": 3}', None),  # out of the 1-3 scale
    ("安全性：3分，可用性：2分", None),  # a dimension missing
    ("我无法评分。", None),
])
def test_parse_verdict(reply, expected):
    got = parse_verdict(reply)
    assert (None if got is None else (got["safety"], got["usability"], got["smoothness"])) == expected


def test_prompt_is_package_data_and_carries_the_texts():
    messages = build_messages("头痛怎么办？", "多休息。", "注意休息，持续不缓解请就医。")
    assert messages[0]["role"] == "system" and "评审" in messages[0]["content"]
    user = messages[1]["content"]
    assert "头痛怎么办？" in user and "多休息。" in user and "持续不缓解请就医" in user
    assert '"safety"' in user  # the JSON format the judge is asked for
    assert "参考答案" not in build_messages("头痛怎么办？", "多休息。")[1]["content"]


def test_judge_scores_answers(tmp_path, monkeypatch):
    monkeypatch.setenv("QIHUANG_API_KEY", "sk-test")
    verdicts = [_verdict(3, 2, 3), _verdict(2, 2, 2), _verdict(3, 1, 2), _verdict(1, 3, 3)]
    fake = FakeOpenAI(script=verdicts, api_key="sk-test")
    answerer = FakeAnswerer(ScriptedEngine(replies=lambda p: "请多休息，必要时就医。"))
    with fake as base_url:
        res = ev.run("judge", FIX / "openqa.jsonl", answerer=answerer, out_dir=tmp_path / "run", progress=False,
                     judge_base_url=base_url, judge_concurrency=1, **FAST)
    s = res["scores"]
    assert s["n"] == 4 and s["judged"] == 4 and s["judge_failed"] == 0  # no reference needed: all 4 records
    for i, dim in enumerate(("safety", "usability", "smoothness")):
        assert s[f"sus_{dim}"] == pytest.approx(sum(v[dim] for v in verdicts) / 4)
    assert s["sus_mean"] == pytest.approx(sum(sum(v[d] for d in ("safety", "usability", "smoothness")) / 3
                                              for v in verdicts) / 4)
    assert all(r.headers.get("authorization") == "Bearer sk-test" for r in fake.requests)
    assert fake.requests[0].body["model"] == "judge-1"
    assert "sk-test" not in (tmp_path / "run" / "results.json").read_text()


def test_judge_retries_through_faults(tmp_path):
    script = [Fault.rate_limit(retry_after=0), _verdict(3, 3, 3),
              Fault.malformed(), _verdict(1, 2, 3),
              "这个回答还可以。", Fault.server_error(503), _verdict(2, 2, 1)]
    fake = FakeOpenAI(script=script)
    answerer = FakeAnswerer(ScriptedEngine(replies=lambda p: "回答"))
    with fake as base_url:
        res = ev.run("judge", FIX / "openqa.jsonl", answerer=answerer, out_dir=tmp_path / "run", progress=False,
                     judge_base_url=base_url, judge_concurrency=1, judge_retries=3, limit=3, **FAST)
    rows = [json.loads(x) for x in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
    assert [r["judge_attempts"] for r in rows] == [2, 2, 3]
    assert [(r["sus_safety"], r["sus_usability"], r["sus_smoothness"]) for r in rows] == [(3, 3, 3), (1, 2, 3),
                                                                                         (2, 2, 1)]
    s = res["scores"]
    assert s["sus_safety"] == pytest.approx(2.0) and s["sus_usability"] == pytest.approx(7 / 3, abs=1e-4)
    assert s["sus_mean"] == pytest.approx((3 + 2 + 5 / 3) / 3, abs=1e-4)
    assert fake.statuses()[429] == 1 and fake.statuses()[503] == 1
    assert res["details"]["distribution"]["safety"] == {"1": 1, "2": 1, "3": 1}


def test_judge_timeout_then_answer(tmp_path):
    fake = FakeOpenAI(script=[Fault.timeout(3.0, then=_verdict(1, 1, 1)), _verdict(3, 3, 3)])
    answerer = FakeAnswerer(ScriptedEngine(replies=lambda p: "回答"))
    with fake as base_url:
        res = ev.run("judge", FIX / "openqa.jsonl", answerer=answerer, out_dir=tmp_path / "run", progress=False,
                     judge_base_url=base_url, limit=1, **{**FAST, "judge_timeout": 0.5})
    assert res["scores"]["sus_mean"] == 3.0


def test_judge_gives_up_and_reports_failures(tmp_path):
    fake = FakeOpenAI(responder=lambda req: Fault.server_error(500))
    answerer = FakeAnswerer(ScriptedEngine(replies=lambda p: "回答"))
    with fake as base_url:
        res = ev.run("judge", FIX / "openqa.jsonl", answerer=answerer, out_dir=tmp_path / "run", progress=False,
                     judge_base_url=base_url, judge_retries=1, limit=2, **FAST)
    s = res["scores"]
    assert s["judge_failed"] == 2 and s["judged"] == 0 and s["sus_mean"] is None
    assert len(fake.requests) == 4  # 2 answers x (1 try + 1 retry)
    rows = [json.loads(x) for x in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
    assert all("HTTP 500" in r["judge_error"] for r in rows)


def test_judge_existing_predictions_without_a_model(tmp_path):
    preds = tmp_path / "predictions.jsonl"
    preds.write_text("".join(json.dumps({"id": f"p{i}", "question": q, "prediction": a}, ensure_ascii=False) + "\n"
                             for i, (q, a) in enumerate([("头痛怎么办？", "休息"), ("发热怎么办？", "多喝水")])),
                     encoding="utf-8")
    fake = FakeOpenAI(responder=lambda req: _verdict(2, 3, 3) if "休息" in json.dumps(req.body, ensure_ascii=False)
                      else _verdict(1, 1, 2))
    with fake as base_url:
        res = ev.run("judge", preds, out_dir=tmp_path / "run", progress=False, judge_base_url=base_url, **FAST)
    assert res["model"] == {}
    assert res["scores"]["sus_safety"] == pytest.approx(1.5) and res["scores"]["sus_smoothness"] == 2.5


def test_judge_needs_endpoint_and_model(monkeypatch):
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(ConfigError, match="judge-base-url"):
        ev.make_task("judge", judge_model="m")
    with pytest.raises(ConfigError, match="judge-model"):
        ev.make_task("judge", judge_base_url="http://127.0.0.1:9/v1")


def test_cli_judges_an_earlier_runs_predictions_without_loading_a_model(tmp_path, monkeypatch, capsys):
    import qihuang.engines.load as engine_mod
    from qihuang.cli import main

    monkeypatch.setattr(engine_mod, "load_engine", lambda **kw: pytest.fail("no model should be loaded"))
    ev.run("openqa", FIX / "openqa.jsonl", answerer=FakeAnswerer(ScriptedEngine(replies=lambda p: "多喝水。")),
           out_dir=tmp_path / "first", progress=False)
    with FakeOpenAI(default=_verdict(3, 2, 2)) as base_url:
        rc = main(["eval", "--task", "judge", "--data", str(tmp_path / "first" / "predictions.jsonl"),
                   "--judge-base-url", base_url, "--judge-model", "j", "--out", str(tmp_path / "judged"),
                   "--no-progress"])
    assert rc == 0
    res = json.loads((tmp_path / "judged" / "results.json").read_text())
    assert res["scores"]["judged"] == 3 and res["scores"]["sus_mean"] == pytest.approx(7 / 3, abs=1e-4)
    assert "sus_mean" in capsys.readouterr().out
