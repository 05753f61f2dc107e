"""Template builder: answers from KB values, scenarios, dialogues, splits by entity, output files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qihuang.cli import main
from qihuang.datagen import build_dataset
from qihuang.datagen.splits import assign_splits, question_key
from qihuang.errors import ConfigError
from qihuang.kb import KnowledgeBase
from qihuang.records import FIELDS

REQUIRED = {"instruction": str, "input": str, "output": str, "history": list, "knowledge": list,
            "entity": str, "attribute": str, "kind": str, "id": str}


@pytest.fixture()
def kb(tiny_db):
    with KnowledgeBase.open(tiny_db) as kb:
        yield kb


def read_split(out: Path, split: str) -> list[dict]:
    return [json.loads(line) for line in (out / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()]


def read_all(out: Path) -> dict[str, list[dict]]:
    return {s: read_split(out, s) for s in ("train", "dev", "test")}


def test_build_writes_dataset_dir_with_provenance_on_every_example(kb, tmp_path):
    out = tmp_path / "ds"
    stats = build_dataset(kb, out, seed=0)
    data = read_all(out)
    records = [r for rs in data.values() for r in rs]
    assert len(records) == stats["total"] == sum(stats["splits"].values())
    assert {s: len(rs) for s, rs in data.items()} == stats["splits"]
    for r in records:
        for key, kind in REQUIRED.items():
            assert isinstance(r[key], kind), (key, r)
        assert r["kind"] in ("single", "scenario", "dialogue")
        assert tuple(r) == FIELDS  # the record schema of qihuang.records, every field, in order
        assert isinstance(r["pattern"], int) if r["kind"] == "single" else r["pattern"] is None
        assert r["knowledge"], r
        for triple in r["knowledge"]:  # every knowledge triple is a real fact of the KB
            assert any(f.relation == triple[1] and f.value == triple[2] for f in kb.facts(triple[0])), triple
        if r["kind"] != "scenario":
            assert r["entity"] in r["output"]  # answers name the entity
            assert all(t[0] == r["entity"] for t in r["knowledge"])
    assert len({r["id"] for r in records}) == len(records)
    assert {"single", "scenario", "dialogue"} <= set(stats["kinds"])
    info = json.loads((out / "dataset_info.json").read_text(encoding="utf-8"))
    assert info["qihuang_train"] == {"file_name": "train.jsonl", "formatting": "alpaca", "columns": {
        "prompt": "instruction", "query": "input", "response": "output", "history": "history", "system": "system",
        "knowledge": "knowledge"}}
    on_disk = json.loads((out / "stats.json").read_text(encoding="utf-8"))
    assert on_disk["total"] == stats["total"] and on_disk["turns"]["1"] > 0
    assert not list(out.glob(".*.tmp"))


def test_splits_are_entity_disjoint_and_scenarios_do_not_leak_held_out_diseases(kb, tmp_path):
    out = tmp_path / "ds"
    build_dataset(kb, out, seed=3, dev_ratio=0.15, test_ratio=0.2)
    data = read_all(out)
    entities = {s: {r["entity"] for r in rs} for s, rs in data.items()}
    assert entities["test"] and entities["dev"] and entities["train"]
    assert not entities["test"] & (entities["train"] | entities["dev"])
    assert not entities["dev"] & entities["train"]
    # no fact about a test entity in train/dev, none about a dev entity in train
    subjects = {s: {t[0] for r in rs for t in r["knowledge"]} for s, rs in data.items()}
    assert not subjects["train"] & (entities["dev"] | entities["test"])
    assert not subjects["dev"] & entities["test"]


def test_build_is_deterministic_per_seed_and_deduplicates_questions(kb, tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    build_dataset(kb, a, seed=7)
    build_dataset(kb, b, seed=7)
    build_dataset(kb, c, seed=8)
    assert (a / "train.jsonl").read_bytes() == (b / "train.jsonl").read_bytes()
    assert (a / "test.jsonl").read_bytes() != (c / "test.jsonl").read_bytes()
    keys = [question_key(r["instruction"], r["history"]) for rs in read_all(a).values() for r in rs]
    assert len(keys) == len(set(keys))


def test_scenario_names_overlapping_diseases_hedged_with_department(kb, tmp_path):
    out = tmp_path / "ds"
    build_dataset(kb, out, kinds=["scenario"], dev_ratio=0, test_ratio=0)
    records = read_split(out, "train")
    assert records and all(r["kind"] == "scenario" and r["attribute"] == "scenario" for r in records)
    for r in records:
        assert r["entity"] in r["output"]  # the source disease shares every described symptom
        described = [t[2] for t in r["knowledge"] if t[0] == r["entity"] and t[1] != "就诊科室"]
        assert described and all(s in r["instruction"] for s in described)
        assert any(w in r["output"] for w in ("可能", "推测", "无法确诊"))  # hedged
        assert "科" in r["output"]
    stroke = [r for r in records if r["entity"] == "心肌梗死"]
    assert stroke and "心血管内科" in stroke[0]["output"]


def test_dialogues_have_history_and_follow_a_flow(kb, tmp_path):
    out = tmp_path / "ds"
    build_dataset(kb, out, kinds=["dialogue"], dev_ratio=0, test_ratio=0)
    records = read_split(out, "train")
    assert records
    for r in records:
        assert 1 <= len(r["history"]) <= 3
        assert all(isinstance(p, list) and len(p) == 2 and all(p) for p in r["history"])
        attrs = r["attribute"].split(",")
        assert len(attrs) == len(r["history"]) + 1
        assert r["entity"] in r["history"][0][0]  # the first question names the entity
    flu = next(r for r in records if r["entity"] == "感冒")
    assert flu["attribute"].split(",")[0] in ("symptoms", "cause", "department", "drugs")


def test_balanced_subset_has_about_equal_attributes_and_qa_types(kb, tmp_path):
    out = tmp_path / "ds"
    stats = build_dataset(kb, out, max_examples=120, balanced=True, seed=1)
    assert 60 <= stats["total"] <= 120
    counts = stats["attributes"]
    assert "alias" not in counts and "code" not in counts  # not useful for QA
    assert "examination" not in stats["entity_types"]
    big = sorted(counts.values())
    assert big[-1] <= stats["options"]["max_examples"] // 4  # no attribute dominates


def test_options_max_per_entity_attributes_kinds_and_test_entities(kb, tmp_path):
    stats = build_dataset(kb, tmp_path / "m", max_examples=25)
    assert stats["total"] == 25
    out = tmp_path / "p"
    build_dataset(kb, out, per_entity=2, attributes=["drugs", "department"], kinds=["single"],
                  test_entities=["偏头痛", "伤风"])  # an alias resolves to 感冒
    data = read_all(out)
    per: dict[str, int] = {}
    for r in (r for rs in data.values() for r in rs):
        per[r["entity"]] = per.get(r["entity"], 0) + 1
        assert r["attribute"] in ("drugs", "department") and r["kind"] == "single"
    assert max(per.values()) <= 2
    assert {"偏头痛", "感冒"} <= {r["entity"] for r in data["test"]}
    with pytest.raises(ConfigError, match="attributes"):
        build_dataset(kb, tmp_path / "x", attributes=["no_such_attribute"])
    with pytest.raises(ConfigError, match="test_entities"):
        build_dataset(kb, tmp_path / "x", test_entities=["不存在的病"])
    with pytest.raises(ConfigError, match="kinds"):
        build_dataset(kb, tmp_path / "x", kinds=["poem"])


def test_failed_build_leaves_previous_output_untouched(kb, tmp_path, monkeypatch):
    out = tmp_path / "ds"
    build_dataset(kb, out, seed=0)
    before = (out / "train.jsonl").read_bytes()
    from qihuang.datagen import builder

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(builder, "_tally_stats", boom)
    with pytest.raises(RuntimeError):
        build_dataset(kb, out, seed=5)
    assert (out / "train.jsonl").read_bytes() == before
    assert not list(out.glob(".*.tmp"))


def test_sharegpt_output_mirrors_alpaca(kb, tmp_path):
    out = tmp_path / "ds"
    build_dataset(kb, out, sharegpt=True, kinds=["dialogue", "single"])
    alpaca = read_split(out, "train")
    share = [json.loads(x) for x in (out / "train_sharegpt.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(alpaca) == len(share)
    for a, s in zip(alpaca, share):
        conv = s["conversations"]
        assert len(conv) == 2 * (len(a["history"]) + 1)
        assert [m["from"] for m in conv[:2]] == ["human", "gpt"]
        assert conv[-2]["value"] == a["instruction"] and conv[-1]["value"] == a["output"]
        assert s["knowledge"] == a["knowledge"] and s["id"] == a["id"]
    info = json.loads((out / "dataset_info.json").read_text(encoding="utf-8"))
    assert info["qihuang_train_sharegpt"]["formatting"] == "sharegpt"


def test_assign_splits_ratios_minimums_and_forced_entities():
    names = [f"e{i}" for i in range(100)]
    split = assign_splits(names, seed=0, dev_ratio=0.1, test_ratio=0.2, test_entities=["e5"])
    counts = {s: sum(1 for v in split.values() if v == s) for s in ("train", "dev", "test")}
    assert counts == {"train": 70, "dev": 10, "test": 20} and split["e5"] == "test"
    assert assign_splits(reversed(names), seed=0, dev_ratio=0.1, test_ratio=0.2) == \
        assign_splits(names, seed=0, dev_ratio=0.1, test_ratio=0.2)
    small = assign_splits(["a", "b", "c"], seed=0)
    assert sorted(small.values()) == ["dev", "test", "train"]
    with pytest.raises(ConfigError):
        assign_splits(names, dev_ratio=0.6, test_ratio=0.5)


def test_cli_data_build(tiny_db, tmp_path, capsys):
    out = tmp_path / "cli"
    rc = main(["data", "build", "--db", str(tiny_db), "--out", str(out), "--max-examples", "40", "--balanced",
               "--seed", "2", "--json"])
    assert rc == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["total"] == sum(1 for s in ("train", "dev", "test")
                                 for _ in (out / f"{s}.jsonl").read_text(encoding="utf-8").splitlines())
    assert main(["data", "build", "--db", str(tiny_db), "--out", str(out), "--attributes", "nope"]) == 2


def test_fast_record_encoding_matches_json():
    from qihuang.datagen.io import encode_json, encode_record

    rec = {"instruction": '他说："头痛\n怎么办"？', "input": "", "output": "建议\t就医\\。", "history": [["问", "答"]],
           "knowledge": [["偏头痛", "药物治疗", "布洛芬"]], "entity": "偏头痛", "attribute": "drugs", "kind": "single",
           "pattern": 3, "id": "s-1"}
    line = encode_record(rec, encode_json(rec["knowledge"]))
    assert json.loads(line) == rec and line == encode_json(rec)
    unmade = {**rec, "kind": "dialogue", "pattern": None}
    assert encode_record(unmade, encode_json(rec["knowledge"])) == encode_json(unmade)
    assert json.loads(encode_record({**rec, "system": "你是医生"}, "[]"))["knowledge"] == rec["knowledge"]


def test_interleaved_order_spreads_held_out_entities_evenly():
    from qihuang.datagen.builder import interleave_splits
    from qihuang.datagen.kbview import EntityView

    views = [EntityView(f"e{i}", "disease", [], {}) for i in range(100)]
    split_of = assign_splits([v.name for v in views], seed=0, dev_ratio=0.1, test_ratio=0.2)
    order = interleave_splits(views, split_of, seed=0)
    assert sorted(v.name for v in order) == sorted(v.name for v in views)
    first = [split_of[v.name] for v in order[:20]]
    assert first.count("dev") == 2 and first.count("test") == 4
    assert [v.name for v in interleave_splits(views, split_of, seed=0)] == [v.name for v in order]
