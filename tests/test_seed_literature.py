"""HuaTuo's literature data (one-line JSON array): numbered by record in infer and validate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from answer_fakes import FakeEngine
from kb_fixture import make_tiny_kb

from qihuang.answer.answerer import Answerer
from qihuang.answer.infer import run_infer
from qihuang.cli import main
from qihuang.data.formats import read_numbered
from qihuang.datagen.validate import validate_file

LITERATURE = Path(__file__).parent / "fixtures" / "seeds" / "huatuo" / "data-literature" / "gastric_literature.json"


@pytest.fixture()
def kb(tmp_path):
    return make_tiny_kb(tmp_path / "kb.sqlite")


def test_fixture_is_a_one_line_array():
    text = LITERATURE.read_text(encoding="utf-8")
    assert "\n" not in text and text.startswith("[{")
    assert [(n.number, n.line) for n in read_numbered(LITERATURE)] == [(i, 1) for i in range(1, 7)]


def test_infer_numbers_rows_by_record_and_resumes(tmp_path, kb):
    out = tmp_path / "pred.jsonl"
    first = run_infer(LITERATURE, out, Answerer(FakeEngine(), kb), limit=4, progress=False)
    assert first["written"] == 4
    rows = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    assert [r["record"] for r in rows] == [1, 2, 3, 4] and {r["line"] for r in rows} == {1}
    assert rows[0]["id"] == 12 and rows[1]["instruction"].startswith(" <user>: 幽门螺杆菌")
    engine = FakeEngine()
    again = run_infer(LITERATURE, out, Answerer(engine, kb), progress=False)
    assert again["skipped"] == 4 and again["written"] == 2
    rows = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    assert [r["record"] for r in rows] == [1, 2, 3, 4, 5, 6]


def test_validate_names_the_record_of_a_bad_array_item(tmp_path, capsys):
    records = json.loads(LITERATURE.read_text(encoding="utf-8"))
    records[4]["output"] = ""
    bad = tmp_path / "lit.json"
    bad.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    report = validate_file(bad)
    assert report.records == 6 and [(p.line, p.record) for p in report.errors] == [(1, 5)]
    assert main(["data", "validate", str(bad)]) == 1
    assert f"{bad}:1 (record 5): field 'output'" in capsys.readouterr().out
    clean = validate_file(LITERATURE)
    assert clean.ok and not clean.warnings and clean.shapes["multi_turn"] == 2  # integer ids are fine
