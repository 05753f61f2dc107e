"""Knowledge base: import, idempotency, atomicity, error paths, queries and CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from kb_fixture import TINY_KB_JSONL, make_tiny_kb
from qihuang.cli import main
from qihuang.errors import InputError
from qihuang.kb import KnowledgeBase
from qihuang.kb import importers


@pytest.fixture()
def kb(tmp_path):
    kb = make_tiny_kb(tmp_path / "kb.sqlite")
    yield kb
    kb.close()


def test_import_builds_entities_types_aliases_and_attributes(kb):
    stats = kb.stats()
    assert stats["entities"] == 30
    assert stats["entity_types"]["disease"] == 18 and stats["entity_types"]["drug"] == 7
    e = kb.show("偏头痛")
    assert e.type == "disease" and e.aliases == ["偏头风"]
    # most-cited first: 对乙酰氨基酚 treats 3 fixture diseases, 布洛芬 2, 佐米曲普坦 1
    assert e.values("drugs") == ["对乙酰氨基酚", "布洛芬", "佐米曲普坦"]
    assert kb.facts("偏头痛", ["drugs"], max_values=1)[0].value == "对乙酰氨基酚"
    assert {f.relation for f in e.facts if f.attribute == "symptoms"} == {"临床症状及体征"}
    # an alias resolves to its entity; raw relations are kept next to the canonical attribute
    drug = kb.show("芬必得")
    assert drug.name == "布洛芬缓释胶囊" and drug.type == "drug"
    assert [f.relation for f in kb.facts("芬必得", ["indications"])] == ["适应症"] * 5
    assert kb.show("不存在的病") is None


def test_value_nodes_are_typed_entities(kb):
    assert kb.entity_type("布洛芬") == "drug"  # only a value of 药物治疗, still a linkable drug
    assert kb.entity_type("神经内科") == "department"
    assert "布洛芬" not in kb.entity_names()  # but not a subject


def test_reimport_is_idempotent(kb):
    before = kb.stats()
    report = kb.import_source(TINY_KB_JSONL, progress=False)
    after = kb.stats()
    assert report.triples_added == 0 and report.triples_in_source == before["triples"]
    for key in ("entities", "nodes", "triples", "aliases"):
        assert after[key] == before[key]
    assert len(after["sources"]) == 1


def test_merge_second_source(kb, tmp_path):
    csv = tmp_path / "extra.csv"
    csv.write_text("subject,predicate,object\n偏头痛,药物治疗,普萘洛尔\n新病,常见症状,\"咳嗽,发热\"\n", encoding="utf-8")
    report = kb.import_source(csv, progress=False)
    assert report.triples_added == 2
    assert "普萘洛尔" in kb.show("偏头痛").values("drugs")
    assert kb.show("新病").values("symptoms") == ["咳嗽,发热"]


def test_failed_import_leaves_previous_kb_intact(kb, monkeypatch):
    before = kb.stats()
    calls = {"n": 0}
    real_flush = importers._flush

    def exploding_flush(writer):
        calls["n"] += 1
        real_flush(writer)
        if calls["n"] == 1:
            raise RuntimeError("disk full")

    monkeypatch.setattr(importers, "BATCH", 5)
    monkeypatch.setattr(importers, "_flush", exploding_flush)
    bigger = TINY_KB_JSONL.read_text(encoding="utf-8").replace("偏头痛", "偏头痛乙")
    path = kb.path.parent / "bigger.jsonl"
    path.write_text(bigger, encoding="utf-8")
    with pytest.raises(RuntimeError):
        kb.import_source(path, progress=False)
    assert kb.stats()["triples"] == before["triples"]
    assert kb.show("偏头痛乙") is None


def test_killed_import_leaves_previous_kb_intact(kb, tmp_path):
    before = kb.stats()["triples"]
    big = tmp_path / "big.csv"
    big.write_text("".join(f"实体{i},常见症状,症状{i}\n" for i in range(3000)), encoding="utf-8")
    script = textwrap.dedent(f"""
        import os, signal
        from qihuang.kb import KnowledgeBase, importers
        importers.BATCH = 500
        real = importers._flush
        def flush_then_die(writer):
            real(writer)
            os.kill(os.getpid(), signal.SIGKILL)
        importers._flush = flush_then_die
        KnowledgeBase.open({str(kb.path)!r}).import_source({str(big)!r}, progress=False)
    """)
    kb.close()
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr
    reopened = KnowledgeBase.open(kb.path)
    assert reopened.stats()["triples"] == before
    assert reopened.show("实体1") is None
    reopened.close()


@pytest.mark.parametrize(("content", "line", "reason"), [
    (b'{"\xe4\xb8\xad\xe5\xbf\x83\xe8\xaf\x8d": "A", "x": ["1"]}\n{broken\n', 2, "malformed JSON"),
    ('{"中心词": "A", "x": ["1"]}\n{"相关症状": ["咳嗽"]}\n'.encode(), 2, "missing 中心词"),
    ('{"中心词": "A", "常见症状": [{"a": 1}]}\n'.encode(), 1, "bad value"),
    ('{"中心词": "A", "x": ["1"]}\n'.encode() + '{"中心词": "乙"}\n'.encode("gbk"), 2, "not UTF-8"),
])
def test_jsonl_errors_name_file_and_line(tmp_path, content, line, reason):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content)
    kb = KnowledgeBase.create(tmp_path / "kb.sqlite")
    with pytest.raises(InputError) as err:
        kb.import_source(path, progress=False)
    assert err.value.line == line and str(path) in str(err.value) and reason in str(err.value)
    assert kb.stats()["triples"] == 0


def test_csv_errors_and_skip_bad(tmp_path):
    path = tmp_path / "bad.tsv"
    path.write_text("头实体\t关系\t尾实体\n感冒\t常见症状\t咳嗽\n感冒\t常见症状\n\t就诊科室\t呼吸内科\n感冒\t就诊科室\t呼吸内科\n",
                    encoding="utf-8")
    kb = KnowledgeBase.create(tmp_path / "kb.sqlite")
    with pytest.raises(InputError, match=r"bad.tsv:3: wrong column count"):
        kb.import_source(path, progress=False)
    report = kb.import_source(path, skip_bad=True, progress=False)
    assert report.skipped == 2 and report.skip_reasons == {"wrong column count": 1, "empty field": 1}
    assert report.triples_added == 2 and any(":4:" in e for e in report.skip_examples)
    assert kb.show("感冒").values("department") == ["呼吸内科"]


def test_link_mixed_width_and_traditional(kb):
    text = "偏頭痛吃什麼藥？ＣＴ要做嗎"
    result = kb.link(text)
    assert [(m.name, m.surface, m.start, m.end) for m in result.entities][0] == ("偏头痛", "偏頭痛", 0, 3)
    assert result.attributes[0] == "drugs"
    assert {f.value for f in result.facts} == {"布洛芬", "对乙酰氨基酚", "佐米曲普坦"}
    half = kb.find_entities("芬必得和ａｍｏｘ，心電圖")
    assert [(m.name, text_) for m, text_ in zip(half, ["芬必得", "心電圖"])] == [
        ("布洛芬缓释胶囊", "芬必得"), ("心电图", "心電圖")]
    assert half[1].surface == "心電圖"


def test_link_longest_match_first_and_attribute_cues(kb):
    mentions = kb.find_entities("布洛芬缓释胶囊和布洛芬有什么副作用")
    assert [m.name for m in mentions] == ["布洛芬缓释胶囊", "布洛芬"]
    assert mentions[1].forms == ("布洛芬缓释胶囊",)  # the bare substance: its product is one of its forms
    assert kb.detect_attributes("布洛芬缓释胶囊有什么副作用") == ["adverse_reactions"]  # not "作用" -> indications
    assert kb.detect_attributes("高血压挂什么科") == ["department"]
    assert set(kb.detect_attributes("糖尿病怎么治")) >= {"drugs", "treatment"}
    nothing = kb.link("今天天气很好")
    assert nothing.entities == [] and nothing.facts == []


def test_link_defaults_when_no_attribute_asked(kb):
    result = kb.link("说说糖尿病")
    assert result.attributes == []
    assert {f.attribute for f in result.facts} == {"symptoms", "department", "drugs"}
    capped = kb.link("说说糖尿病", max_values=1)
    assert len(capped.facts) == 3


def test_cli_roundtrip(tmp_path, capsys):
    db = str(tmp_path / "cli.sqlite")
    assert main(["kb", "import", "--source", str(TINY_KB_JSONL), "--db", db, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["entities"] == 30
    assert main(["kb", "show", "偏头痛", "--db", db, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert "布洛芬" in shown["relations"]["药物治疗"]
    assert main(["kb", "link", "偏头痛吃什么药？", "--db", db, "--json"]) == 0
    linked = json.loads(capsys.readouterr().out)
    assert linked["entities"][0]["name"] == "偏头痛" and "drugs" in linked["attributes"] and linked["facts"]
    assert main(["kb", "stats", "--db", db, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["triples"] > 100
    assert main(["kb", "show", "无此词", "--db", db]) == 2
    assert "no entity named" in capsys.readouterr().err
    assert main(["kb", "stats", "--db", str(tmp_path / "missing.sqlite")]) == 2


def test_link_shared_cues_pick_the_attribute_the_entity_has(kb):
    herb = kb.link("人参有什么作用？")  # 作用 of a herb: its 功效
    assert herb.attributes == ["efficacy"] and {f.attribute for f in herb.facts} == {"efficacy"}  # as answered
    assert kb.linker.detect_attributes("人参有什么作用？") == ["efficacy", "indications"]  # as asked
    drug = kb.link("二甲双胍片有什么作用？")  # a drug has no 功效: its 适应症
    assert {f.attribute for f in drug.facts} == {"indications"}
    treated = kb.link("糖尿病怎么治？")
    assert {f.attribute for f in treated.facts} == {"drugs"}  # no 治疗 facts: the drugs
    assert treated.attributes == ["treatment"]  # ... answer it; what was asked is how it is treated
    assert kb.link("二甲双胍片治疗什么？").attributes == ["indications"]  # 治疗 of a drug: its indications
    assert {f.attribute for f in kb.link("当归的功能主治是什么？").facts} == {"indications"}  # not 功能 -> 功效


def test_link_yields_to_and_cues_inside_value_entities(kb):
    assert kb.detect_attributes("糖尿病常用的治疗药物有哪些？") == ["drugs"]  # not treatment in general
    assert kb.detect_attributes("请列举治疗糖尿病的常用药物。") == ["drugs"]
    assert kb.detect_attributes("甲状腺功能亢进症是什么") == []  # 功能 inside a disease's name is part of it
    # ... but a cue inside the name of an entity of the kind the attribute lists still counts
    text = "甲状腺功能亢进症要做甲状腺功能检查吗"
    assert kb.linker.detect_attribute_groups(text, kb.find_entities(text)) == [("examinations",)]


def test_whether_to_operate_asks_treatment_too(kb):
    """需要手术吗 weighs surgery against other treatment (how real questions are labelled); a question about
    the operation itself asks only about surgery."""
    for text in ("偏头痛需要手术吗？", "偏头痛是否可以不动手术", "偏头痛要不要做切除"):
        assert set(kb.linker.detect_attributes(text)) == {"surgery", "treatment"}, text
    assert kb.linker.detect_attributes("偏头痛手术的具体操作方法") == ["surgery"]
    assert "treatment" not in kb.linker.detect_attributes("偏头痛手术后有什么后遗症")


def test_no_much_is_told_not_asked_and_use_verbs_ask_precautions(kb):
    # 没什么效果 / 没啥用 tell (a clause with them asks nothing); the cue 药物 there is not read
    told = "一直服用药物没什么效果，可以改用布洛芬吗？"
    assert "drugs" not in kb.linker.detect_attributes(told)
    assert "drugs" in kb.linker.detect_attributes("偏头痛用什么药物？")  # 什么 still asks
    assert "precautions" in kb.linker.detect_attributes("我有偏头痛，平时饮食要注意么")  # a final 么 still asks
    for verb in ("使用", "服用", "食用"):  # 可以使用X吗 asks what to mind, like 可以吃X吗
        assert "precautions" in kb.linker.detect_attributes(f"偏头痛的人可以{verb}布洛芬吗？"), verb


def test_every_question_phrasing_retrieves_its_own_attribute(kb):
    """Data building and grounding agree: each phrasing of an attribute, asked about an entity that
    has it, makes ``link`` retrieve that attribute's facts and no other's."""
    from qihuang.phrasebook import load_phrasebook

    book = load_phrasebook()
    rows = kb.conn.execute("SELECT DISTINCT e.name, e.type, t.attribute FROM triples t "
                           "JOIN entities e ON e.id = t.subject_id ORDER BY e.name").fetchall()
    checked, wrong = 0, []
    for name, etype, attribute in rows:
        phrasing = book.attributes.get(attribute)
        if phrasing is None or not phrasing.qa:
            continue
        phrasing = book.get(attribute, etype)
        for pattern in sorted(set(phrasing.patient) | set(phrasing.clinician)):
            question = pattern.format(entity=name)
            got = sorted({f.attribute for f in kb.link(question).facts if f.entity == name})
            checked += 1
            if got != [attribute]:
                wrong.append((question, attribute, got))
    assert checked > 500 and wrong == []
