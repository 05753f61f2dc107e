"""Hospital departments: the standard list and the KB-wording map (resources/departments.yaml), patient
groups, a hospital's own list, the ranked department facts at the end of retrieval (tiny KBs written for
these tests), the --departments option, citations and verification of a cited department."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from kb_fixture import TINY_KB_JSONL, make_tiny_kb

from qihuang.answer.grounding import ground
from qihuang.answer.verify import verify
from qihuang.cli import main
from qihuang.errors import ConfigError, InputError
from qihuang.kb import department_rank as dr
from qihuang.kb.departments import ROOT, Patient, load_book, parse_book, patient_groups, read_hospital
from qihuang.paths import resource

BOOK = load_book()
STANDARD = [d.name for d in BOOK.departments]
# words that name a whole branch of medicine, not a department a patient can walk into
UMBRELLA = {"内科", "外科", "门诊", "医院", "科室", "专科", "内外科", "大内科", "大外科"}


def _raw() -> dict:
    return yaml.safe_load(resource("departments.yaml").read_text(encoding="utf-8"))


# ---------------------------------------------------------------- the data file


def test_no_standard_department_is_an_umbrella_word():
    names = STANDARD + [a for d in BOOK.departments for a in d.aliases]
    assert not set(names) & UMBRELLA
    # a name inside another is only ever its parent's (儿科 in 新生儿科): no department "matches" another
    for a in STANDARD:
        for b in STANDARD:
            if a != b and a in b:
                assert a in BOOK.chain(b), (a, b)
    assert BOOK.map_value("内科") == (ROOT,) and BOOK.map_value("外科") == ("普外科",)


def test_every_department_falls_back_to_the_root():
    for name in STANDARD:
        assert BOOK.chain(name)[-1] == ROOT
    assert BOOK.chain("变态反应科") == ["变态反应科", "皮肤科", ROOT]


@pytest.mark.parametrize("value, expected", [
    ("心内科", ("心血管内科",)), ("急诊室", ("急诊科",)), ("GP", (ROOT,)), ("皮肤性病科", ("皮肤科",)),
    ("骨科；肿瘤科", ("骨科", "肿瘤科")), ("内科 — 神经内科", ("神经内科",)), ("外科；骨科", ("骨科",)),
    ("内科；外科", (ROOT, "普外科")), ("耳鼻咽喉—头颈外科", ("耳鼻喉科",)), ("小儿神经科", ("儿科", "神经内科")),
    ("病理科", ()), ("火星科", ()),
])
def test_kb_values_map_to_standard_departments(value, expected):
    got = BOOK.map_value(value)
    assert set(got) == set(expected) and (not got or got[0] == expected[0])
    assert all(d in STANDARD for d in got)


def test_every_department_value_of_the_tiny_kb_maps():
    values = {v for line in TINY_KB_JSONL.read_text(encoding="utf-8").splitlines()
              for v in json.loads(line).get("就诊科室", [])}
    assert values and all(BOOK.map_value(v) for v in values)


@pytest.mark.integration
def test_every_department_value_of_cmekg_is_listed():
    """Each part of every CMeKG 就诊科室 / 所属科室 value is a standard name, an alias or a kb_values entry
    (an entry may say it is no department: [])."""
    from qihuang.kb.departments import _PARTS
    from qihuang.kb.importers import ImportReport, _Skipper, cmekg_path, read_cmekg

    skip = _Skipper(True, ImportReport("cmekg", "cmekg"))
    values = {v for _line, _s, rel, v in read_cmekg(cmekg_path(), skip) if rel in ("就诊科室", "所属科室")}
    assert len(values) > 150
    unknown = {v for v in values if BOOK._one(v) is None and any(BOOK._one(p) is None for p in _PARTS.split(v))}
    assert unknown == set()


@pytest.mark.parametrize("change, field", [
    (lambda r: r["departments"].append({"name": "眼科"}), "listed twice"),
    (lambda r: r["departments"][3].update(parent="火星科"), "parent"),
    (lambda r: r["kb_values"].update({"某科": ["火星科"]}), "kb_values"),
    (lambda r: r["departments"][3].update(family="aliens"), "family"),
    (lambda r: r["groups"]["child"].update(department="火星科"), "groups"),
    (lambda r: r.update(extra=1), "extra"),
    (lambda r: r["body_words"].update({"眉毛": ["火星科"]}), "body_words"),
    (lambda r: r["body_words"].update({"眉": ["皮肤科"]}), "body_words"),
])
def test_bad_data_file_errors_name_the_file_and_field(change, field):
    raw = _raw()
    change(raw)
    with pytest.raises(ConfigError, match=field) as info:
        parse_book(raw, "my_departments.yaml")
    assert str(info.value).startswith("my_departments.yaml: ")


# ---------------------------------------------------------------- patient groups


@pytest.mark.parametrize("text, groups", [
    ("我三岁的孩子流鼻涕", {"child"}), ("宝宝5个月了，下巴起红疹", {"child"}), ("两岁多的小孩发烧", {"child"}),
    ("新生儿眼睛红", {"child", "newborn"}), ("孩子出生10天大，黄疸", {"child", "newborn"}),
    ("孕妇手脚痒怎么办", {"pregnant", "female"}), ("我怀孕20周了，头晕", {"pregnant", "female"}),
    ("我是一个29岁的女性，胸闷", {"female"}), ("我35岁的男性，尿频", {"male"}), ("男，45岁，咳嗽", {"male"}),
    ("74岁老人胸闷气短", {"elderly"}), ("奶奶最近总头晕", {"elderly"}),
    ("我儿子30岁了，总是头晕", {"male"}),  # an explicit age wins over 儿子
    ("我跟男朋友分手后总失眠", set()), ("最近老是头晕", set()),
])
def test_patient_groups(text, groups):
    assert patient_groups(text).groups == groups


def _ranked(*names: str) -> list[dr.Ranked]:
    return [dr.Ranked(n, score=1.0 - i / 10) for i, n in enumerate(names)]


def test_groups_rerank_and_filter_departments():
    order = lambda patient, *names: [r.name for r in dr._by_group(BOOK, _ranked(*names), patient)]  # noqa: E731
    nobody = Patient()
    assert order(nobody, "儿科", "呼吸内科", "妇科") == ["呼吸内科", "妇科"]  # 儿科 only for children
    assert order(Patient(frozenset({"male"})), "妇科", "泌尿外科", "产科") == ["泌尿外科"]
    assert order(Patient(frozenset({"female"})), "男科", "泌尿外科") == ["泌尿外科"]
    child = Patient(frozenset({"child"}))
    assert order(child, "呼吸内科", "耳鼻喉科") == ["儿科", "呼吸内科", "耳鼻喉科"]
    assert order(child, "眼科", "神经内科") == ["眼科", "儿科", "神经内科"]  # a specialty children go to directly
    assert order(Patient(frozenset({"child", "newborn"})), "呼吸内科")[0] == "新生儿科"
    assert order(Patient(frozenset({"pregnant", "female"})), "皮肤科", "妇科")[:2] == ["产科", "皮肤科"]
    assert order(Patient(frozenset({"elderly"})), "心血管内科", "呼吸内科", "神经内科") == \
        ["心血管内科", "呼吸内科", "老年医学科", "神经内科"]


def test_a_diseases_own_childrens_department_yields_only_to_a_known_adult():
    ranked = [dr.Ranked("儿科", 1.0, named=True), dr.Ranked("神经内科", 0.9, named=True)]
    names = lambda patient: [r.name for r in dr._by_group(BOOK, ranked, patient)]  # noqa: E731
    assert names(Patient()) == ["神经内科", "儿科"]  # age unknown: kept, after the others
    assert names(Patient(age=30.0)) == ["神经内科"]
    assert names(Patient(frozenset({"child"}), age=5.0))[0] == "儿科"


# ---------------------------------------------------------------- a hospital's own list


def test_hospital_list_text_and_yaml(tmp_path):
    text = tmp_path / "ours.txt"
    text.write_text("# 本院科室\n内科 = 全科医学科\n外科 = 普外科\n妇产科 = 妇科、产科\n儿科\n心内科  # an alias\n",
                    encoding="utf-8")
    h = read_hospital(text)
    assert h.names == {ROOT: "内科", "普外科": "外科", "妇科": "妇产科", "产科": "妇产科", "儿科": "儿科",
                       "心血管内科": "心内科"}
    assert h.place("心血管内科") == ("心血管内科", "心内科")
    assert h.place("呼吸内科") == (ROOT, "内科")  # the nearest parent the hospital has
    assert h.place("变态反应科") == (ROOT, "内科")
    assert h.place("男科") == ("普外科", "外科")  # 男科 -> 泌尿外科 -> 普外科
    listed = tmp_path / "ours.yaml"
    listed.write_text("- 皮肤科\n- 变态反应科\n", encoding="utf-8")
    assert read_hospital(listed).place("变态反应科") == ("变态反应科", "变态反应科")
    assert read_hospital(listed).place("心血管内科") is None


@pytest.mark.parametrize("content, suffix, match", [
    ("眼科\n火星科\n", ".txt", r"ours\.txt:2: '火星科' is not a standard department"),
    ("内科 = \n", ".txt", r"ours\.txt:1: expected"),
    ("# nothing\n", ".txt", r"ours\.txt: no departments"),
    ("- 眼科\n- [x\n", ".yaml", r"ours\.yaml:\d+: invalid YAML"),
    ("眼科: 1\n", ".yaml", r"ours\.yaml: expected a YAML list"),
])
def test_hospital_list_errors_name_file_and_line(tmp_path, content, suffix, match):
    path = tmp_path / f"ours{suffix}"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(InputError, match=match):
        read_hospital(path)


# ---------------------------------------------------------------- the retrieval hook


@pytest.fixture(scope="module")
def kb(tmp_path_factory):
    return make_tiny_kb(tmp_path_factory.mktemp("departments") / "kb.sqlite")


# CMeKG-style wording: 心内科, 内科, a combined value; 乏力 listed by diseases without a department
OWN = [
    {"中心词": "房颤", "常见症状": ["心悸", "胸闷", "乏力"], "就诊科室": ["心内科"]},
    {"中心词": "甲减", "常见症状": ["乏力", "怕冷"], "就诊科室": ["内科"]},
    {"中心词": "骨肉瘤", "常见症状": ["骨痛"], "就诊科室": ["骨科；肿瘤科"]},
    {"中心词": "慢性疲劳", "常见症状": ["倦怠", "乏力"]},
    {"中心词": "某综合征", "常见症状": ["倦怠", "嗜睡"]},
    {"中心词": "另一综合征", "常见症状": ["倦怠"]},
    # 心肌: once a symptom, mostly a body part
    {"中心词": "病毒性心肌炎", "常见症状": ["心肌", "心悸"], "发病部位": ["心肌"], "就诊科室": ["心内科"]},
    {"中心词": "心肌病", "常见症状": ["气短"], "发病部位": ["心肌"], "就诊科室": ["心内科"]},
    {"中心词": "心肌缺血", "常见症状": ["胸闷"], "发病部位": ["心肌"], "就诊科室": ["心内科"]},
]


def _kb_of(tmp_path_factory, name: str, rows: list[dict]):
    """A knowledge base imported from ``rows`` (CMeKG-style records) in a temporary folder."""
    from qihuang.kb import KnowledgeBase

    root = tmp_path_factory.mktemp(name)
    src = root / f"{name}.jsonl"
    src.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows), encoding="utf-8")
    kb = KnowledgeBase.create(root / f"{name}.sqlite")
    kb.import_source(src, progress=False)
    return kb


@pytest.fixture(scope="module")
def own(tmp_path_factory):
    return _kb_of(tmp_path_factory, "own", OWN)


def _departments(res) -> list:
    return [f for f in res.facts if f.attribute == "department"]


def test_a_symptom_description_gets_ranked_hospital_departments_first(kb):
    res = kb.link("我发热，咳嗽，还胸痛，挂什么科？")
    deps = _departments(res)
    assert deps and res.facts[:len(deps)] == deps and len(deps) <= dr.TOP
    assert deps[0].value == "呼吸内科" and all(f.via == "department" for f in deps)
    assert all(set(f.anchor.split("、")) <= {"发热", "咳嗽", "胸痛"} for f in deps)  # anchored at the symptoms
    assert all(f.value in STANDARD for f in deps)
    assert any(f.via == "symptom" for f in res.facts)  # the candidates' evidence stays


def test_patient_groups_change_the_departments(kb):
    adult = [f.value for f in _departments(kb.link("最近发热咳嗽，怎么办"))]
    assert adult and "儿科" not in adult
    child = _departments(kb.link("我三岁的孩子发热咳嗽，怎么办"))
    assert child[0].value == "儿科" and "儿童" in child[0].relation and "3岁" in child[0].relation
    assert _departments(kb.link("怀孕了，最近发热咳嗽"))[0].value == "产科"


def test_a_named_disease_keeps_its_own_department_and_the_kb_wording(kb, own):
    deps = _departments(kb.link("偏头痛挂哪个科"))
    assert [(f.entity, f.relation, f.value, f.anchor) for f in deps] == [("偏头痛", "就诊科室", "神经内科", "偏头痛")]
    deps = _departments(own.link("房颤挂什么科"))
    assert [(f.entity, f.value) for f in deps] == [("房颤", "心血管内科")]
    assert deps[0].relation == "就诊科室（知识库：心内科）"  # what the KB says stays visible
    deps = _departments(own.link("骨肉瘤挂什么科"))
    assert [f.value for f in deps] == ["骨科", "肿瘤科"]


def test_department_facts_outside_a_description_are_mapped_in_place(own):
    res = own.link("甲减")  # an overview: the default attributes, 就诊科室 among them
    deps = _departments(res)
    assert [(f.value, f.relation, f.via) for f in deps] == [(ROOT, "就诊科室（知识库：内科）", "department")]
    assert not any(f.value in UMBRELLA for f in res.facts if f.attribute == "department")


def test_symptoms_next_to_a_drug_or_a_disease(kb):
    # one symptom next to the drug the question is about is context; two make a description
    assert not _departments(kb.link("氯雷他定片吃了以后发热，是副作用吗"))
    assert _departments(kb.link("氯雷他定片吃了以后发热咳嗽，是副作用吗"))
    # a symptom the named entity's facts explain is no description
    assert not _departments(kb.link("布洛芬缓释胶囊的副作用有恶心、皮疹吗？"))
    # a named disease is the patient's history: its own department counts with the symptom's
    deps = _departments(kb.link("我有糖尿病，最近总是发热"))
    assert deps and deps[0].value == "内分泌科" and deps[0].relation == "就诊科室"


def test_body_words_count_as_cues_where_the_kb_gives_none(own):
    """眉毛 says 皮肤科 to a triage desk; the KB's wording gives no cue for it, so the book's body word stands in."""
    from qihuang.kb.department_rank import DepartmentIndex

    text = "最近眉毛那里总是倦怠"
    ranked = dr.rank(own.departments, [], ["倦怠"], [], patient_groups(text), text)
    assert ranked and ranked[0].name == "皮肤科" and "“眉毛”" in {s.relation for s in ranked[0].sources}
    bare = DepartmentIndex(own, book=BOOK.model_copy(update={"body_words": {}}))
    assert "眉毛" not in bare.cues
    assert "皮肤科" not in [r.name for r in dr.rank(bare, [], ["倦怠"], [], patient_groups(text), text)]


def test_a_complaint_the_kb_names_nothing_of_gets_departments_from_its_words(kb):
    res = kb.link("我腋下长了好几个小东西，这是怎么回事？")
    assert res.entities == []
    assert [(f.entity, f.value, f.via) for f in res.facts] == [("腋下", "皮肤科", "department")]
    assert "按用词" in res.facts[0].relation and "“腋下”" in res.facts[0].relation
    assert kb.link("腋下的淋巴结有哪些？").facts == []  # nobody's complaint: nothing
    assert kb.link("我最近心里有点烦，怎么办？").facts == []  # no word ties to a department: no guess
    # 正常吗 of one's own body asks whether something is wrong, as 怎么回事 does
    normal = kb.link("我腋下长了好几个小东西，正常吗？")
    assert normal.attributes == ["prognosis"] and [f.value for f in normal.facts] == ["皮肤科"]


def test_no_department_when_nothing_is_known_but_a_symptom_gets_the_root_said_as_such(kb, own):
    assert kb.link("今天天气怎么样").facts == []
    assert not _departments(kb.link("布洛芬缓释胶囊的不良反应"))
    # a body part the KB cites three times as where a disease is and once as a symptom is no trouble: no
    # mention, no facts (Lookups.body_parts), and it describes nothing to the departments either
    assert "心肌" in own.lookups.body_parts and "心悸" not in own.lookups.body_parts
    res = own.link("心肌劳损是什么症状")
    assert res.entities == [] and res.facts == []
    index = own.departments
    assert not index.described("心肌") and index.described("心悸") and index.described("倦怠")
    deps = _departments(own.link("最近总是倦怠"))  # listed by three subjects, none with a department
    assert [(f.value, f.relation) for f in deps] == [(ROOT, "就诊科室（无更具体依据）")]
    assert deps[0].anchor == "倦怠"


def test_a_hospital_list_restricts_the_departments(kb, tmp_path):
    ours = tmp_path / "ours.txt"
    ours.write_text("内科 = 全科医学科\n儿科\n", encoding="utf-8")
    kb.use_departments(ours)
    try:
        for text in ("我发热，咳嗽，还胸痛，挂什么科？", "我三岁的孩子发热咳嗽", "偏头痛挂哪个科", "高血压"):
            values = {f.value for f in kb.link(text).facts if f.attribute == "department"}
            assert values and values <= {"内科", "儿科"}, text
        first = _departments(kb.link("我发热，咳嗽，还胸痛，挂什么科？"))[0]
        assert first.value == "内科" and "本院无呼吸内科" in first.relation
    finally:
        kb.use_departments(None)
    assert _departments(kb.link("我发热，咳嗽，还胸痛，挂什么科？"))[0].value == "呼吸内科"


def test_citations_and_verification_of_a_cited_department(kb):
    g = ground(kb, "我发热，咳嗽，还胸痛，挂什么科？")
    cites = [c for c in g.citations if c.via == "department"]
    assert cites and all("医院科室建议" in c.text() and "非诊断" in c.text() for c in cites)
    first = cites[0].values[0]
    v = verify(kb, f"建议先到{first}就诊。", g.facts, ["department"])
    assert v.ok and all(c.status != "unsupported" for c in v.claims)


# ---------------------------------------------------------------- command line and options


def test_kb_link_takes_a_department_list(tiny_db, tmp_path, capsys):
    ours = tmp_path / "ours.txt"
    ours.write_text("内科 = 全科医学科\n", encoding="utf-8")
    assert main(["kb", "link", "我发热，咳嗽，还胸痛", "--db", str(tiny_db), "--departments", str(ours), "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)["facts"]
    assert {f["value"] for f in facts if f["attribute"] == "department"} == {"内科"}
    bad = tmp_path / "bad.txt"
    bad.write_text("火星科\n", encoding="utf-8")
    assert main(["kb", "link", "头痛", "--db", str(tiny_db), "--departments", str(bad)]) == 2
    assert "bad.txt:1" in capsys.readouterr().err


def test_answer_options_carry_the_department_list(kb, tmp_path):
    from qihuang.cli import build_parser
    from qihuang.flags import options_from_args
    from qihuang.options import AnswerOptions

    ours = tmp_path / "ours.txt"
    ours.write_text("儿科\n", encoding="utf-8")
    parse = build_parser().parse_args
    for command in (["infer", "--input", "a", "--output", "b"], ["chat"], ["serve"], ["webui"], ["eval"]):
        opts = options_from_args(AnswerOptions, parse([*command, "--departments", str(ours)]))
        assert opts.departments == str(ours)
    opts.use_departments(kb)
    try:
        assert kb.hospital is not None and kb.hospital.names == {"儿科": "儿科"}
    finally:
        kb.use_departments(None)
    with pytest.raises(ConfigError, match="needs a knowledge base"):
        opts.use_departments(None)
    AnswerOptions().use_departments(None)  # no list: nothing to do


def test_make_answerer_applies_the_list(tiny_db, tmp_path):
    from answer_fakes import FakeEngine

    from qihuang.answer.cli import make_answerer
    from qihuang.options import AnswerOptions, GenerationOptions, ModelOptions

    ours = tmp_path / "ours.txt"
    ours.write_text("内科 = 全科医学科\n", encoding="utf-8")
    answerer = make_answerer(ModelOptions(), GenerationOptions(), AnswerOptions(kb=str(tiny_db), departments=str(ours)),
                             engine=FakeEngine())
    assert answerer.kb.hospital.names == {ROOT: "内科"}


# a disease others list as a symptom (腹泻 in CMeKG): asked what it is, it is someone's complaint
SYMPTOM_LIKE = [
    {"中心词": "甲肠病", "常见症状": ["腹泻", "腹胀"], "就诊科室": ["消化内科"]},
    {"中心词": "乙肠病", "常见症状": ["腹泻"], "就诊科室": ["消化内科"]},
    {"中心词": "丙肠病", "常见症状": ["腹泻", "发热"], "就诊科室": ["消化内科"]},
    {"中心词": "腹泻", "常见症状": ["稀便"], "药物治疗": ["蒙脱石散"], "相关疾病": ["甲肠病"], "就诊科室": ["消化内科"]},
]


@pytest.fixture(scope="module")
def symptom_like(tmp_path_factory):
    return _kb_of(tmp_path_factory, "symptom_like", SYMPTOM_LIKE)


def test_a_symptom_like_disease_asked_what_it_is_gets_departments_after_the_answer(symptom_like):
    assert symptom_like.departments.symptom_like("腹泻")
    plain = symptom_like.link("腹泻吃什么药")  # the disease's own drugs answer: its topic, no description
    assert plain.facts and not _departments(plain)
    res = symptom_like.link("腹泻是什么情况，吃什么药")  # asks what it is: a complaint, and where to go
    deps = _departments(res)
    assert [f.value for f in deps] == ["消化内科"] and deps[0].via == "department"
    assert res.facts[0].attribute != "department"  # the drugs it asks for come first


COMPLAINT = [
    {"中心词": "色素斑", "病因": ["日晒"], "相关疾病": ["雀斑"], "就诊科室": ["皮肤科"]},
    {"中心词": "雀斑", "常见症状": ["色素斑"], "就诊科室": ["皮肤科"]},
]


@pytest.fixture(scope="module")
def complaint(tmp_path_factory):
    return _kb_of(tmp_path_factory, "complaint", COMPLAINT)


def test_a_disease_named_in_someones_complaint_gets_its_departments_after_the_answer(complaint):
    assert not complaint.departments.symptom_like("色素斑")
    plain = complaint.link("色素斑是怎么引起的")  # a question about the disease: its cause, no department
    assert plain.facts and not _departments(plain)
    res = complaint.link("我孩子6岁，脸上有色素斑，越来越多，是怎么回事")  # the patient's own complaint
    deps = _departments(res)
    assert deps and deps[0].via == "department" and {"皮肤科", "儿科"} <= {f.value for f in deps}
    assert res.facts[0].attribute != "department"  # what it is (its cause) comes first
