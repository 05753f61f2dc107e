"""The published benchmark shapes (resources/eval_shapes.yaml): one fixture per shape, written in that exact
shape with toy questions of our own (tests/fixtures/eval/bench, laid out as each project publishes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from qihuang.errors import ConfigError, InputError
from qihuang.eval.shapes import all_shapes, detect, get_shape, parse_shapes
from qihuang.eval.tasks.benchqa import load_bench_qa
from qihuang.eval.tasks.classify import load_labelled
from qihuang.eval.tasks.mcq_formats import load_exam

BENCH = Path(__file__).parent / "fixtures" / "eval" / "bench"


def _answers(data):
    return [(ex.id, ex.fields["answer"]) for ex in data.examples]


def _skipped(data):
    return [(s.line, s.reason) for s in data.skipped]


# ------------------------------------------------------------------ the registry itself


def test_every_shipped_shape_validates_and_each_fixture_is_detected_as_its_shape():
    shapes = all_shapes()
    assert {"cmexam", "cmb-exam", "mmedbench", "medqa-mcmle", "medmcqa", "cnmle", "cmmlu", "ceval", "generic",
            "kuake-qic", "cmid", "promptcblue-cls", "cmb-clin", "promptcblue-gen"} <= set(shapes)
    from qihuang.eval.dataio import iter_rows

    expected = {"CMExam/data/test.csv": "cmexam", "CMB/data/CMB-Exam/CMB-val/CMB-val-merge.json": "cmb-exam",
                "MMedBench/Test/Chinese.jsonl": "mmedbench",
                "MedQA/data_clean/questions/Mainland/test.jsonl": "medqa-mcmle", "medmcqa/dev.json": "medmcqa",
                "CNMLEQA/data/CNMLEQA-3k.json": "cnmle", "CMMLU/data/test/anatomy.csv": "cmmlu",
                "ceval-exam/val/physician_val.csv": "ceval"}
    for rel, name in expected.items():
        rows = [r.row for r in iter_rows(BENCH / rel) if r.row is not None]
        assert detect(rows, "mcq", rel).name == name, rel
    for rel, name in {"CBLUE/KUAKE-QIC/KUAKE-QIC_dev.json": "kuake-qic", "CMID/CMID.json": "cmid",
                      "PromptCBLUE/dev.json": "promptcblue-cls"}.items():
        rows = [r.row for r in iter_rows(BENCH / rel) if r.row is not None]
        assert detect(rows, "classify", rel).name == name, rel


@pytest.mark.parametrize("raw,error", [
    ({"shapes": {"x": {"kind": "mcq", "summary": "s", "requires": ["q"], "question": ["q"]}}}, "needs options"),
    ({"shapes": {"x": {"kind": "quiz", "summary": "s", "requires": ["q"]}}}, "shapes.x.kind"),
    ({"shapes": {"x": {"kind": "classify", "summary": "s", "requires": ["t"], "text": ["t"], "label": ["l"],
                       "prompt": "{text}"}}}, "labels or labels_key"),
    ({"shapes": {"x": {"kind": "classify", "summary": "s", "requires": ["t"], "text": ["t"], "label": ["l"],
                       "labels": ["a"], "prompt": "{txt}"}}}, "placeholder"),
    ({"shapes": {"x": {"kind": "mcq", "summary": "s", "requires": ["q"], "question": ["q"], "answer": ["a"],
                       "options": {"key": "o", "columns": ["a"]}}}}, "either 'key' or 'columns'"),
    ({"shapes": {"x": {"kind": "mcq", "summary": "s", "requires": [], "question": ["q"], "answer": ["a"],
                       "options": {"key": "o"}}}}, "requires"),
    ({"shapes": {"x": {"kind": "benchqa", "summary": "s", "requires": ["q"], "colour": "red"}}}, "colour"),
])
def test_shape_registry_errors_name_the_field(raw, error):
    with pytest.raises(ConfigError, match=error):
        parse_shapes(raw, "my_shapes.yaml")


def test_an_unknown_file_shape_names_the_fields_found_and_the_shapes_supported(tmp_path):
    path = tmp_path / "odd.jsonl"
    path.write_text('{"stem": "问题", "choices": ["甲", "乙"], "key": 0}\n', encoding="utf-8")
    with pytest.raises(InputError) as exc:
        load_exam(path)
    msg = str(exc.value)
    assert str(path) in msg and "['choices', 'key', 'stem']" in msg
    assert "cmexam (Question, Options, Answer)" in msg and "cnmle (question, opa, opb, answer)" in msg
    assert "medmcqa-hf" in msg and "only with --shape" in msg
    with pytest.raises(InputError, match="kuake-qic"):
        load_labelled(path)


def test_a_named_shape_must_be_of_the_task(tmp_path):
    with pytest.raises(ConfigError, match="unknown mcq shape 'kuake-qic'"):
        get_shape("kuake-qic", "mcq")


# ------------------------------------------------------------------ multiple choice


def test_cmexam_csv_multi_letter_answers_and_an_unanswered_row():
    data = load_exam(BENCH / "CMExam" / "data" / "test.csv")
    assert [a for _, a in _answers(data)] == ["B", "B", "AB"]
    assert data.examples[0].fields["options"]["B"] == "12～20次" and len(data.examples[0].fields["options"]) == 5
    assert data.examples[0].fields["explanation"].startswith("成人静息")
    assert _skipped(data) == [(17, "field 'Answer': missing or empty answer")]


def test_cmb_exam_test_questions_joined_to_the_answer_file_by_id():
    questions = BENCH / "CMB" / "data" / "CMB-Exam" / "CMB-test" / "CMB-test-choice-question-merge.json"
    data = load_exam(questions, answers=BENCH / "CMB" / "data" / "CMB-test-choice-answer.json")
    assert _answers(data) == [("1", "A"), ("2", "B"), ("3", "ABD"), ("4", "B")]
    assert [ex.subject for ex in data.examples][:2] == ["医师考试/执业医师", "护理考试/护士执业资格"]
    without = load_exam(questions)  # CMB-test alone has no answers: every row says so
    assert not without.examples and all("field 'answer': missing" in s.reason for s in without.skipped)


def test_cmb_val_options_dict_and_a_row_without_options():
    data = load_exam(BENCH / "CMB" / "data" / "CMB-Exam" / "CMB-val" / "CMB-val-merge.json")
    assert [a for _, a in _answers(data)] == ["C"] and data.examples[0].fields["options"]["C"] == "6.1 mmol/L"
    assert [r for _, r in _skipped(data)] == ["field 'option': missing or empty options"]


def test_medqa_mcmle_and_mmedbench_use_answer_idx():
    medqa = load_exam(BENCH / "MedQA" / "data_clean" / "questions" / "Mainland" / "test.jsonl")
    assert [a for _, a in _answers(medqa)] == ["A", "B", "C"]
    mmed = load_exam(BENCH / "MMedBench" / "Test" / "Chinese.jsonl")
    assert [a for _, a in _answers(mmed)] == ["A", "B"]
    assert mmed.examples[0].fields["explanation"].startswith("酒精")  # rationale


def test_cnmle_columns_opa_to_ope_with_the_answer_naming_the_column():
    data = load_exam(BENCH / "CNMLEQA" / "data" / "CNMLEQA-3k.json")
    assert _answers(data) == [("cn-1", "B"), ("cn-2", "D")]
    assert list(data.examples[0].fields["options"]) == ["A", "B", "C", "D", "E"]
    assert data.examples[1].fields["options"]["D"] == "维生素D"
    assert _skipped(data) == [(28, "field 'answer': 'opf' names none of the option columns opa, opb, opc, opd, ope")]


def test_medmcqa_cop_is_one_based_as_released_and_zero_based_when_named_hf():
    data = load_exam(BENCH / "medmcqa" / "dev.json")
    assert _answers(data) == [("m-1", "B"), ("m-2", "A")]
    assert [ex.subject for ex in data.examples] == ["Biochemistry", "Anatomy"]
    assert _skipped(data) == [(3, "field 'cop': option number 5 is outside 1..4")]
    hf = load_exam(BENCH / "medmcqa" / "dev.json", shape="medmcqa-hf")
    assert _answers(hf) == [("m-1", "C"), ("m-2", "B")]


def test_cmmlu_subjects_from_file_names():
    data = load_exam(BENCH / "CMMLU" / "data" / "test")
    assert sorted({ex.subject for ex in data.examples}) == ["anatomy", "chinese_history", "elementary_mathematics",
                                                              "virology"]
    assert len(data.examples) == 8 and not data.skipped


def test_ceval_subjects_from_file_names_and_ids_unique_across_files():
    data = load_exam(BENCH / "ceval-exam" / "val")
    assert [(ex.subject, ex.id) for ex in data.examples] == [
        ("basic_medicine", "basic_medicine_val/0"), ("computer_network", "computer_network_val/0"),
        ("physician", "physician_val/0"), ("physician", "physician_val/1")]
    dev = load_exam(BENCH / "ceval-exam" / "dev")
    assert {ex.subject for ex in dev.examples} == {"basic_medicine", "computer_network", "physician"}


# ------------------------------------------------------------------ classification and open questions


def test_kuake_qic_labels_and_a_label_outside_the_set():
    data, left = load_labelled(BENCH / "CBLUE" / "KUAKE-QIC" / "KUAKE-QIC_dev.json")
    assert [ex.fields["label"] for ex in data.examples] == ["治疗方案", "病因分析", "医疗费用", "指标解读"]
    assert len(data.examples[0].fields["labels"]) == 11 and "孩子发烧" in data.examples[0].question
    assert "医疗费用" in data.examples[0].question  # the label set is shown
    assert len(data.skipped) == 1 and "'不存在的意图' is not one of the labels" in data.skipped[0].reason and not left


def test_cmid_four_classes_by_default_and_36_when_named():
    data, _ = load_labelled(BENCH / "CMID" / "CMID.json")
    assert [ex.fields["label"] for ex in data.examples] == ["病症", "药物", "治疗方案", "其他"]
    assert "2 labels" in data.skipped[0].reason
    fine, _ = load_labelled(BENCH / "CMID" / "CMID.json", shape="cmid-36")
    assert [ex.fields["label"] for ex in fine.examples] == ["临床表现", "用法", "费用", "设备用法"]
    assert len(fine.examples[0].fields["labels"]) == 36


def test_promptcblue_records_split_between_classify_and_benchqa():
    path = BENCH / "PromptCBLUE" / "dev.json"
    cls, left = load_labelled(path)
    assert [(ex.id, ex.subject, ex.fields["label"]) for ex in cls.examples] == [
        ("dev-1", "KUAKE-QIC", "治疗方案"), ("dev-2", "CHIP-STS", "是的"), ("dev-3", "CHIP-CTC", "年龄"),
        ("dev-4", "CHIP-CTC", "非上述类型")]
    assert cls.examples[3].fields["labels"] == ["年龄", "性别", "诊断", "非上述类型"]
    assert cls.examples[0].question.startswith("判断下面搜索词的意图")  # PromptCBLUE's input is the prompt
    assert left == {"task_type 'ner'": 1, "task_type 'response_generation'": 1}
    gen, left = load_bench_qa(path)
    assert [(ex.id, ex.subject) for ex in gen.examples] == [("dev-5", "CMeEE-V2"), ("dev-6", "MedDG")]
    assert gen.examples[1].reference.startswith("可能是海鲜过敏")
    assert left == {"task_type 'cls'": 3, "task_type 'matching'": 1}


def test_cmb_clin_cases_become_one_question_each_with_the_case_as_context():
    data, _ = load_bench_qa(BENCH / "CMB" / "data" / "CMB-Clin" / "CMB-Clin-qa.json")
    first, second, third = data.examples
    assert [ex.id for ex in data.examples] == ["0-1", "0-2", "1-1"]
    assert first.question.startswith("以下是一位病人的病例：\n现病史") and first.question.endswith("简述该病人的诊断及诊断依据。")
    assert first.history == [] and first.reference.startswith("诊断：社区获得性肺炎")
    assert second.question == "简述该病人的治疗原则。"
    assert second.history == [[first.question, first.reference]]  # the earlier question with its reference
    assert third.history == [] and "2型糖尿病" in third.reference
    assert [(s.line, "QA_pairs" in s.reason) for s in data.skipped] == [(28, True)]
