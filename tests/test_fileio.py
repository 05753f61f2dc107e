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


def test_concurrent_writers_of_one_cache_file_never_share_a_temporary(tmp_path):
    """Two servers starting together build the same cache file: each write has its own temporary
    name, so neither finds its temporary moved away by the other (the old fixed ``.tmp`` name did)."""
    import threading

    from qihuang.fileio import atomic_write_bytes

    target = tmp_path / "cache" / "lexical-abc.pkl"
    payloads = [bytes([i]) * 200_000 for i in range(4)]
    errors: list[BaseException] = []

    def write(data: bytes) -> None:
        try:
            for _ in range(25):
                atomic_write_bytes(target, data)
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(p,)) for p in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert target.read_bytes() in payloads
    assert [p.name for p in target.parent.iterdir()] == [target.name]


def test_read_yaml_refuses_a_key_given_twice_and_names_its_line(tmp_path):
    from qihuang.errors import ConfigError
    from qihuang.fileio import read_yaml

    good = tmp_path / "good.yaml"
    good.write_text("colloquial:\n  头疼: 头痛\n  发烧: 发热\nother:\n  头疼: 另一处\n", encoding="utf-8")
    assert read_yaml(good, "a lexicon")["colloquial"] == {"头疼": "头痛", "发烧": "发热"}  # one key per mapping
    bad = tmp_path / "bad.yaml"
    bad.write_text("colloquial:\n  头疼: 头痛\n  发烧: 发热\n  头疼: 偏头痛\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"bad.yaml: line 4: cannot read a lexicon: key '头疼' given twice"):
        read_yaml(bad, "a lexicon")


def test_a_training_config_with_a_key_given_twice_names_its_line(tmp_path):
    from qihuang.config import read_yaml as read_config
    from qihuang.errors import ConfigError

    cfg = tmp_path / "sft.yaml"
    cfg.write_text("stage: sft\nlearning_rate: 1.0e-4\nlearning_rate: 2.0e-4\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"sft.yaml:3: invalid YAML: key 'learning_rate' given twice"):
        read_config(cfg)
