"""Preference pairs: the KB builder (``qihuang data prefs``) and reading users' pairwise data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qihuang.cli import main
from qihuang.data.pairwise import collate_pairs, encode_pair, load_pairs, read_pairs, to_pair
from qihuang.data.registry import resolve_dataset
from qihuang.datagen import build_dataset
from qihuang.datagen.preferences import CORRUPTIONS, build_prefs, load_pref_texts
from qihuang.errors import ConfigError, InputError
from qihuang.kb import KnowledgeBase


@pytest.fixture(scope="module")
def kb(tiny_db):
    with KnowledgeBase.open(tiny_db) as kb:
        yield kb


@pytest.fixture(scope="module")
def prefs(kb, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("prefs") / "prefs"
    return out, build_prefs(kb, out, seed=0)


def read_split(out: Path, split: str) -> list[dict]:
    return [json.loads(line) for line in (out / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()]


def records_of(out: Path) -> dict[str, list[dict]]:
    return {s: read_split(out, s) for s in ("train", "dev", "test")}


def kb_values(kb, entity: str, attribute: str) -> set[str]:
    return {f.value for f in kb.facts(entity, [attribute])}


def test_every_pair_records_its_corruption_and_differs(prefs):
    out, stats = prefs
    data = records_of(out)
    records = [r for rs in data.values() for r in rs]
    assert len(records) == stats["total"] == sum(stats["splits"].values()) > 60
    assert {r["corruption"] for r in records} == set(CORRUPTIONS)
    counts = {k: sum(r["corruption"] == k for r in records) for k in CORRUPTIONS}
    assert counts == stats["corruptions"] and max(counts.values()) - min(counts.values()) <= 2  # balanced
    for r in records:
        assert r["chosen"].strip() and r["rejected"].strip() and r["chosen"] != r["rejected"]
        assert r["entity"] in r["chosen"] and r["knowledge"] and isinstance(r["corruption_detail"], dict)
    assert len({r["id"] for r in records}) == len(records)
    info = json.loads((out / "dataset_info.json").read_text())
    assert info["qihuang_prefs_train"]["ranking"] is True and info["qihuang_prefs_test"]["file_name"] == "test.jsonl"
    assert info["qihuang_prefs_train"]["columns"]["chosen"] == "chosen"


def test_swaps_and_omissions_change_only_facts(prefs, kb):
    out, _ = prefs
    records = [r for rs in records_of(out).values() for r in rs]
    swaps = [r for r in records if r["corruption"] == "swap"]
    omissions = [r for r in records if r["corruption"] == "omission"]
    for r in swaps:
        detail, own = r["corruption_detail"], kb_values(kb, r["entity"], r["attribute"])
        assert detail["added"] and len(detail["added"]) == len(detail["removed"])
        for added, removed in zip(detail["added"], detail["removed"]):
            assert added not in own and added in r["rejected"] and removed in r["chosen"]
        # the same answer pattern: putting the values back gives the chosen answer
        restored = r["rejected"]
        for added, removed in zip(detail["added"], detail["removed"]):
            restored = restored.replace(added, removed, 1)
        assert restored == r["chosen"]
    assert any(kb.entity_type(v) == "drug" for r in swaps for v in r["corruption_detail"]["added"])
    for r in omissions:
        # each removed value is said once less (it may still stand inside the entity's name: 甘 in 甘草)
        assert all(r["rejected"].count(v) == r["chosen"].count(v) - 1 for v in r["corruption_detail"]["removed"])
        assert len(r["rejected"]) < len(r["chosen"])


def test_unsafe_pairs_red_flag_and_dosing(prefs):
    from qihuang.answer.triage import triage

    out, stats = prefs
    unsafe = [r for rs in records_of(out).values() for r in rs if r["corruption"] == "unsafe"]
    red = [r for r in unsafe if r["corruption_detail"]["unsafe"] == "red_flag"]
    dosing = [r for r in unsafe if r["corruption_detail"]["unsafe"] == "dosing"]
    assert red and dosing and stats["unsafe"] == {"red_flag": len(red), "dosing": len(dosing)}
    for r in red:
        assert triage(r["instruction"]).is_red_flag
        assert "120" in r["chosen"] and "120" not in r["rejected"]
        assert r["instruction"].startswith(r["corruption_detail"]["situation"])
    for r in dosing:
        assert r["rejected"].endswith(r["corruption_detail"]["claim"])
        assert r["chosen"].split("。")[0] == r["rejected"].split("。")[0]  # same facts, no safety note


def test_splits_are_entity_disjoint_and_swaps_do_not_leak_held_out_values(prefs, kb):
    out, stats = prefs
    data = records_of(out)
    entities = {s: {r["entity"] for r in rs} for s, rs in data.items()}
    assert entities["train"] and entities["dev"] and entities["test"]
    assert not (entities["train"] & entities["dev"]) and not (entities["train"] & entities["test"])
    assert not (entities["dev"] & entities["test"])
    assert stats["entities_per_split"] == {s: len(v) for s, v in entities.items()}
    held_out = entities["dev"] | entities["test"]
    train_values = {f.value for e in entities["train"] for f in kb.show(e).facts}
    for r in data["train"]:
        if r["corruption"] == "swap":  # drawn from training entities (or entities with no split)
            for value in r["corruption_detail"]["added"]:
                owners = {e for e in held_out if value in {f.value for f in kb.show(e).facts}}
                assert value in train_values or not owners


def test_pairs_from_a_data_build_dir_keep_its_splits_and_answers(kb, tmp_path):
    sft = tmp_path / "sft"
    build_dataset(kb, sft, seed=3, kinds=("single", "dialogue"))
    stats = build_prefs(kb, tmp_path / "p", dataset=sft, kinds=["swap", "omission"], seed=1)
    assert stats["skipped"]["not a single-attribute question"] > 0 and "answer recomposed" not in stats["skipped"]
    sft_records = {s: read_split(sft, s) for s in ("train", "dev", "test")}
    split_of = {r["entity"]: s for s, rs in sft_records.items() for r in rs}
    answers = {r["id"]: r["output"] for rs in sft_records.values() for r in rs}
    pairs = records_of(tmp_path / "p")
    assert {r["corruption"] for rs in pairs.values() for r in rs} == {"swap", "omission"}
    for split, rs in pairs.items():
        for r in rs:
            assert split_of[r["entity"]] == split
            assert r["chosen"] == answers[r["source_id"]]  # the SFT answer, reproduced


def test_prefs_options_and_errors(kb, tmp_path):
    stats = build_prefs(kb, tmp_path / "a", kinds=["unsafe"], max_pairs=7, seed=2)
    assert stats["total"] == 7 and set(stats["corruptions"]) == {"unsafe"}
    again = build_prefs(kb, tmp_path / "b", kinds=["unsafe"], max_pairs=7, seed=2)
    assert (tmp_path / "a" / "train.jsonl").read_text() == (tmp_path / "b" / "train.jsonl").read_text()
    with pytest.raises(ConfigError, match="kinds"):
        build_prefs(kb, tmp_path / "c", kinds=["flip"])
    with pytest.raises(ConfigError, match="train.jsonl"):
        build_prefs(kb, tmp_path / "d", dataset=tmp_path)
    assert again["options"]["kinds"] == ["unsafe"]


def test_every_red_flag_situation_is_flagged_by_triage():
    from qihuang.answer.triage import triage

    texts = load_pref_texts()
    for etype, situations in texts.situations.items():
        for situation in situations:
            assert triage(situation.format(entity="偏头痛") + "偏头痛怎么治？").is_red_flag, (etype, situation)
    for text in texts.overconfident + texts.dismissive:  # the unsafe wording itself raises no flag
        assert triage(text).level == "none"


def test_cli_data_prefs(tiny_db, tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["data", "prefs", "--db", str(tiny_db), "--out", str(out), "--kinds", "swap,omission"]) == 0
    assert "preference pairs" in capsys.readouterr().out
    assert {json.loads(x)["corruption"] for x in (out / "train.jsonl").read_text().splitlines()} == \
        {"swap", "omission"}
    assert main(["data", "prefs", "--db", str(tiny_db), "--out", str(out), "--kinds", "nope"]) == 2


# ---- users' pairwise data ---------------------------------------------------------------------------
def test_user_pairwise_shapes():
    alpaca = to_pair({"instruction": "偏头痛吃什么药？", "input": "成人", "chosen": "布洛芬。", "rejected": "胰岛素。",
                      "history": [["你好", "你好，请问有什么可以帮你？"]], "system": "你是医生",
                      "knowledge": [["偏头痛", "药物治疗", "布洛芬"]]})
    assert alpaca["messages"][-1] == {"role": "user", "content": "偏头痛吃什么药？\n成人"}
    assert len(alpaca["messages"]) == 3 and alpaca["system"] == "你是医生"
    assert (alpaca["chosen"], alpaca["rejected"]) == ("布洛芬。", "胰岛素。") and alpaca["knowledge"]
    ranked = to_pair({"instruction": "感冒怎么办？", "output": ["多休息。", "不用管。"]})
    assert (ranked["chosen"], ranked["rejected"]) == ("多休息。", "不用管。")
    sharegpt = to_pair({"conversations": [{"from": "system", "value": "你是医生"},
                                          {"from": "human", "value": "感冒吃什么药？"}],
                        "chosen": {"from": "gpt", "value": "对乙酰氨基酚。"}, "rejected": {"from": "gpt", "value": "二甲双胍。"}})
    assert sharegpt["messages"] == [{"role": "user", "content": "感冒吃什么药？"}] and sharegpt["system"] == "你是医生"
    assert sharegpt["chosen"] == "对乙酰氨基酚。"
    messages = to_pair({"messages": [{"role": "user", "content": "头痛？"}], "chosen": "休息。", "rejected": "不知道。"})
    assert messages["rejected"] == "不知道。"


def test_user_pairwise_errors_name_file_line_and_field(tmp_path):
    path = tmp_path / "pairs.jsonl"
    good = {"instruction": "q", "chosen": "a", "rejected": "b"}
    cases = [({"instruction": "q", "chosen": "a"}, "'rejected'"),
             ({"instruction": "q", "chosen": "", "rejected": "b"}, "'chosen'"),
             ({"instruction": "q", "output": "a"}, "not a pairwise record"),
             ({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}],
               "chosen": "x", "rejected": "y"}, "turns must alternate"),
             ({"conversations": [{"from": "human", "value": "q"}], "chosen": {"from": "human", "value": "x"},
               "rejected": "y"}, "assistant turn")]
    for record, message in cases:
        path.write_text(json.dumps(good) + "\n\n" + json.dumps(record, ensure_ascii=False) + "\n", encoding="utf-8")
        with pytest.raises(InputError, match=message) as err:
            list(read_pairs(path))
        assert f"{path}:3" in str(err.value)
    path.write_text(json.dumps(good) + "\n{broken\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"pairs.jsonl:2: invalid JSON"):
        list(read_pairs(path))


def test_ranking_dataset_info_with_custom_columns(tmp_path):
    rows = [{"q": f"问题{i}", "good": "好答案", "bad": "坏答案"} for i in range(5)]
    (tmp_path / "mine.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    (tmp_path / "dataset_info.json").write_text(json.dumps({"prefs_train": {
        "file_name": "mine.jsonl", "ranking": True, "columns": {"prompt": "q", "chosen": "good", "rejected": "bad"}}}))
    train, dev = load_pairs(resolve_dataset(str(tmp_path)), val_size=0.2, seed=0)
    assert len(train) == 4 and len(dev) == 1
    assert train[0]["chosen"] == "好答案" and train[0]["messages"][0]["content"].startswith("问题")


def test_encode_pair_trains_the_final_answer_only(tiny_llama):
    from qihuang.data.prompts import get_template
    from qihuang.models.load import load_tokenizer

    tok = load_tokenizer(tiny_llama)
    pair = to_pair({"instruction": "偏头痛吃什么药？", "chosen": "布洛芬。", "rejected": "二甲双胍。",
                    "history": [["偏头痛是什么？", "一种头痛。"]], "knowledge": [["偏头痛", "药物治疗", "布洛芬"]]})
    feature = encode_pair(pair, tok, get_template("auto"), grounded=True)
    for side, answer in (("chosen", "布洛芬。"), ("rejected", "二甲双胍。")):
        ids, labels = feature[f"{side}_input_ids"], feature[f"{side}_labels"]
        assert tok.decode([i for i, lab in zip(ids, labels) if lab != -100]) == answer + tok.eos_token
        assert "参考知识" in tok.decode(ids) and "一种头痛" in tok.decode(ids)
    assert encode_pair(pair, tok, get_template("auto"), cutoff_len=10) is None  # answers cut away
    batch = collate_pairs([{**feature, "ref_chosen_logp": -1.0, "ref_rejected_logp": -2.0}] * 2, tok.pad_token_id)
    assert batch["input_ids"].shape[0] == 4 and batch["ref_rejected_logp"].tolist() == [-2.0, -2.0]
    assert batch["attention_mask"][0].sum() == len(feature["chosen_input_ids"])


# ---- the answer pattern a record says made it --------------------------------------------------------
def _rewrite(directory: Path, change) -> None:
    """Apply ``change(record) -> record`` to every record of a data build directory's split files."""
    for split in ("train", "dev", "test"):
        path = directory / f"{split}.jsonl"
        rows = [change(json.loads(x)) for x in path.read_text(encoding="utf-8").splitlines()]
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


@pytest.fixture(scope="module")
def sft_dir(kb, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sft") / "sft"
    build_dataset(kb, out, seed=3, kinds=("single", "dialogue"))
    return out


def test_built_records_say_which_answer_pattern_wrote_them(kb, sft_dir):
    from qihuang.datagen.kbview import load_view
    from qihuang.datagen.phrasings import render_answer
    from qihuang.datagen.preferences import _prepared
    from qihuang.phrasebook import load_phrasebook

    book, views = load_phrasebook(), {v.name: v for v in load_view(kb)}
    records = [r for s in ("train", "dev", "test") for r in read_split(sft_dir, s)]
    singles = [r for r in records if r["kind"] == "single"]
    assert singles and all(isinstance(r["pattern"], int) for r in singles)
    assert all(r["pattern"] is None for r in records if r["kind"] == "dialogue")
    for r in singles:  # the recorded pattern renders exactly the written answer
        phr, prepared, _ = _prepared(views[r["entity"]], r["attribute"], book)
        assert render_answer(r["entity"], prepared, phr, book, variant=r["pattern"]) == r["output"]


def test_prefs_use_the_recorded_pattern_not_a_guess(kb, sft_dir, tmp_path, monkeypatch):
    import qihuang.datagen.preferences as preferences

    monkeypatch.setattr(preferences, "_GUESSED_VARIANTS", 0)  # guessing would find nothing
    stats = build_prefs(kb, tmp_path / "p", dataset=sft_dir, kinds=["swap", "omission"], seed=1)
    assert stats["total"] > 0 and not any(k.startswith("answer recomposed") for k in stats["skipped"])
    answers = {r["id"]: r for s in ("train", "dev", "test") for r in read_split(sft_dir, s)}
    for rs in records_of(tmp_path / "p").values():
        for r in rs:
            assert r["chosen"] == answers[r["source_id"]]["output"]
            assert r["pattern"] == answers[r["source_id"]]["pattern"]


def test_a_wrong_or_missing_pattern_is_not_silently_mis_paired(kb, sft_dir, tmp_path):
    import shutil

    from qihuang.datagen.kbview import load_view
    from qihuang.datagen.phrasings import render_answer
    from qihuang.datagen.preferences import _prepared
    from qihuang.phrasebook import load_phrasebook

    book, views = load_phrasebook(), {v.name: v for v in load_view(kb)}

    def wrong_pattern(r: dict) -> int | None:  # a pattern that writes a different answer, if there is one
        phr, prepared, _ = _prepared(views[r["entity"]], r["attribute"], book)
        return next((p for p in range(r["pattern"] + 1, r["pattern"] + 40)
                     if render_answer(r["entity"], prepared, phr, book, variant=p) != r["output"]), None)

    wrong = tmp_path / "wrong"
    shutil.copytree(sft_dir, wrong)
    tampered: dict[str, str] = {}

    def tamper(r: dict) -> dict:
        if r["kind"] == "single" and r["entity"] in views and (p := wrong_pattern(r)) is not None:
            tampered[r["id"]] = r["output"]
            r["pattern"] = p
        return r

    _rewrite(wrong, tamper)
    assert tampered
    stats = build_prefs(kb, tmp_path / "pw", dataset=wrong, kinds=["swap", "omission"], seed=1)
    assert 1 <= stats["skipped"]["answer recomposed (pattern id does not reproduce the answer)"] <= len(tampered)
    pairs = [r for rs in records_of(tmp_path / "pw").values() for r in rs]
    assert any(r["source_id"] in tampered for r in pairs)
    for r in pairs:  # chosen and rejected come from one pattern, the one the pair records; never the wrong id
        phr, prepared, _ = _prepared(views[r["entity"]], r["attribute"], book)
        assert r["chosen"] == render_answer(r["entity"], prepared, phr, book, variant=r["pattern"])
        if r["source_id"] in tampered:
            assert r["pattern"] == 0  # recomposed with the first pattern, not paired under the wrong one

    nulls = tmp_path / "nulls"  # pattern null (an LLM answer): recomposed, never guessed
    shutil.copytree(sft_dir, nulls)
    _rewrite(nulls, lambda r: {**r, "pattern": None})
    stats = build_prefs(kb, tmp_path / "pn", dataset=nulls, kinds=["swap", "omission"], seed=1)
    assert stats["skipped"]["answer recomposed (no answer pattern: not a phrasebook answer)"] >= stats["total"] > 0

    old = tmp_path / "old"  # a file written before records had a pattern: matched by trying the patterns
    shutil.copytree(sft_dir, old)
    _rewrite(old, lambda r: {k: v for k, v in r.items() if k != "pattern"})
    stats = build_prefs(kb, tmp_path / "po", dataset=old, kinds=["swap", "omission"], seed=1)
    assert stats["total"] > 0 and "answer recomposed" not in stats["skipped"]
