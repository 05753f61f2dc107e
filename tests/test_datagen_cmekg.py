"""Issue 3 done-when on the real default KB (CMeKG): >= 100k examples over >= 15 canonical attributes,
scenario and multi-turn present, provenance everywhere, entity-disjoint splits, the files validate."""

from __future__ import annotations

import json

import pytest

from qihuang.cli import main

pytestmark = pytest.mark.integration


def test_full_cmekg_build_meets_done_when(tmp_path, capsys):
    db, out = tmp_path / "kb.sqlite", tmp_path / "ds"
    assert main(["kb", "import", "--db", str(db), "--json"]) == 0
    capsys.readouterr()
    assert main(["data", "build", "--db", str(db), "--out", str(out), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["total"] >= 100_000
    assert stats["canonical_attributes"] >= 15
    assert stats["kinds"]["scenario"] > 1000 and stats["kinds"]["dialogue"] > 1000
    entities = {}
    for split in ("train", "dev", "test"):
        names = set()
        with open(out / f"{split}.jsonl", encoding="utf-8") as fh:
            for line in fh:
                r = json.loads(line)
                assert r["knowledge"] and r["entity"] and r["attribute"] and r["id"]
                names.add(r["entity"])
        entities[split] = names
    assert not entities["test"] & (entities["train"] | entities["dev"])
    assert not entities["dev"] & entities["train"]
    assert main(["data", "validate", str(out / "train.jsonl")]) == 0
