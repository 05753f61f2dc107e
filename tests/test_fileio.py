"""Atomic writes: the whole new file or the old one, never a partial file or a stray temporary."""

from __future__ import annotations

import json

import pytest

from qihuang.fileio import atomic_write_json, atomic_write_jsonl, atomic_write_text


def test_atomic_writes_round_trip_and_leave_no_temporary(tmp_path):
    target = tmp_path / "deep" / "out.json"
    assert atomic_write_json(target, {"病": "偏头痛"}) == target
    assert json.loads(target.read_text(encoding="utf-8")) == {"病": "偏头痛"} and "偏头痛" in target.read_text()
    atomic_write_jsonl(tmp_path / "rows.jsonl", [{"a": 1}, {"b": "二"}])
    assert [json.loads(x) for x in (tmp_path / "rows.jsonl").read_text(encoding="utf-8").splitlines()] == [
        {"a": 1}, {"b": "二"}]
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.json"]
    assert target.stat().st_mode & 0o777 == 0o644


def test_a_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "w" / "out.json"
    atomic_write_text(target, "old")
    with pytest.raises(TypeError):
        atomic_write_json(target, {"x": object()})  # not serialisable: fails before anything is written
    with pytest.raises(TypeError):
        atomic_write_text(target, None)  # fails while writing the temporary file
    assert target.read_text() == "old" and [p.name for p in target.parent.iterdir()] == ["out.json"]
