"""``qihuang data validate``: the shapes users bring pass; broken fixtures fail with line numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kb_fixture import make_tiny_kb
from qihuang.cli import main
from qihuang.datagen import build_dataset
from qihuang.datagen.validate import validate_file, validate_path
from qihuang.errors import InputError

FIX = Path(__file__).parent / "fixtures" / "datagen"


@pytest.mark.parametrize("name, shapes", [
    ("good_alpaca.jsonl", {"alpaca": 3, "multi_turn": 1, "with_knowledge": 2}),
    ("good_array.json", {"alpaca": 2, "multi_turn": 1}),
    ("jsonl_named_json.json", {"alpaca": 2}),
    ("flattened.json", {"alpaca": 1, "flattened_dialogue": 1, "multi_turn": 1}),
    ("sharegpt.jsonl", {"sharegpt": 2, "multi_turn": 1, "with_knowledge": 1}),
])
def test_accepted_shapes_pass(name, shapes):
    report = validate_file(FIX / name)
    assert report.ok, report.errors
    assert dict(report.shapes) == shapes
    assert main(["data", "validate", str(FIX / name)]) == 0


def test_broken_jsonl_reports_every_bad_line_with_its_reason(capsys):
    report = validate_file(FIX / "broken.jsonl")
    assert report.records == 8  # the line with invalid JSON is not a record
    reasons = {p.line: p.reason for p in report.errors}
    assert sorted(reasons) == [2, 3, 4, 5, 6, 7, 8]
    assert "invalid JSON" in reasons[2]
    assert "'output'" in reasons[3]
    assert "'history'" in reasons[4]
    assert "alternate" in reasons[5]
    assert "'knowledge'" in reasons[6]
    assert "empty question" in reasons[7]
    assert "JSON object" in reasons[8]
    assert main(["data", "validate", str(FIX / "broken.jsonl")]) == 1
    out = capsys.readouterr().out
    assert f"{FIX / 'broken.jsonl'}:2: invalid JSON" in out and "7 bad records" in out


def test_broken_array_stops_at_the_syntax_error_line(capsys):
    report = validate_file(FIX / "broken_array.json")
    assert not report.ok and report.records == 1
    assert report.errors[0].line == 3 and "invalid JSON" in report.errors[0].reason
    assert main(["data", "validate", str(FIX / "broken_array.json"), "--json"]) == 1
    assert json.loads(capsys.readouterr().out)[0]["errors"][0]["line"] == 3


def test_built_dataset_directory_validates(tmp_path):
    kb = make_tiny_kb(tmp_path / "kb.sqlite")
    out = tmp_path / "ds"
    build_dataset(kb, out, sharegpt=True)
    reports = validate_path(out)
    assert len(reports) == 6 and all(r.ok for r in reports)
    assert sum(r.records for r in reports) == 2 * json.loads((out / "stats.json").read_text())["total"]
    assert main(["data", "validate", str(out / "train.jsonl")]) == 0


def test_missing_path_and_empty_file_are_errors(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        validate_path(tmp_path / "nope.jsonl")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n", encoding="utf-8")
    assert validate_file(empty).errors[0].reason == "no records"
    assert main(["data", "validate", str(tmp_path / "nope.jsonl")]) == 2
