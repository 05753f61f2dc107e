"""``build_dataset(knowledge="retrieved")``: knowledge blocks as retrieval produces them, plus distractors."""

from __future__ import annotations

import json

import pytest

from kb_fixture import make_tiny_kb
from qihuang.datagen import build_dataset
from qihuang.errors import ConfigError


def _records(out) -> list[dict]:
    return [json.loads(line) for split in ("train", "dev", "test") for line in (out / f"{split}.jsonl").open()]


def test_retrieved_blocks_hold_the_answer_facts_and_some_distractors(tmp_path):
    kb = make_tiny_kb(tmp_path / "kb.sqlite")
    try:
        build_dataset(kb, tmp_path / "a", kinds=["single"], seed=3, max_examples=150)
        build_dataset(kb, tmp_path / "r", kinds=["single"], seed=3, max_examples=150, knowledge="retrieved")
        plain, retrieved = _records(tmp_path / "a"), _records(tmp_path / "r")
        assert [r["instruction"] for r in plain] == [r["instruction"] for r in retrieved]
        assert [r["output"] for r in plain] == [r["output"] for r in retrieved]
        triples = {name: {tuple(f.triple()) for f in kb.show(name).facts} for name in {r["entity"] for r in plain}}
        with_distractor = 0
        for a, r in zip(plain, retrieved):
            got = [tuple(t) for t in r["knowledge"]]
            assert {tuple(t) for t in a["knowledge"]} <= set(got)  # the answer's facts are always there
            assert len(got) == len(set(got))
            for t in set(got) - {tuple(x) for x in a["knowledge"]}:
                assert t in triples[t[0]] or any(t in v for v in triples.values())  # only KB facts
            asked = {t[1] for t in a["knowledge"]}
            with_distractor += any(t[1] not in asked for t in got)
        assert 0.2 * len(plain) < with_distractor < 0.8 * len(plain)
        stats = json.loads((tmp_path / "r" / "stats.json").read_text(encoding="utf-8"))
        assert stats["options"]["knowledge"] == "retrieved"
        with pytest.raises(ConfigError, match="knowledge"):
            build_dataset(kb, tmp_path / "x", knowledge="nosuch")
    finally:
        kb.close()


def test_cli_knowledge_option_reaches_the_builder(tmp_path, capsys):
    from qihuang.cli import main

    db = tmp_path / "kb.sqlite"
    make_tiny_kb(db).close()
    assert main(["data", "build", "--db", str(db), "--out", str(tmp_path / "d"), "--kinds", "single",
                 "--max-examples", "40", "--knowledge", "retrieved", "--json"]) in (0, None)
    stats = json.loads((tmp_path / "d" / "stats.json").read_text(encoding="utf-8"))
    assert stats["options"]["knowledge"] == "retrieved"
    with pytest.raises(SystemExit):
        main(["data", "build", "--db", str(db), "--out", str(tmp_path / "e"), "--knowledge", "nosuch"])
