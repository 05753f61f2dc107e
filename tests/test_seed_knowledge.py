"""`qihuang data knowledge`: HuaTuo-style knowledge tuning from a question list (link -> facts -> answer),
with provenance, and `--phrasings FILE` for a user's own wording."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from kb_fixture import make_tiny_kb

from qihuang.cli import main
from qihuang.datagen.knowledge import read_questions
from qihuang.datagen.validate import validate_path
from qihuang.paths import resource

SEEDS = Path(__file__).parent / "fixtures" / "seeds"
QUESTIONS = SEEDS / "huatuo" / "data" / "knowledge_tuning_questions.txt"


@pytest.fixture()
def db(tmp_path):
    path = tmp_path / "kb.sqlite"
    make_tiny_kb(path).close()
    return path


def _records(out):
    return [json.loads(x) for split in ("train", "dev", "test")
            for x in (out / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()]


def test_question_files():
    assert [q for _, q in read_questions(QUESTIONS)][0] == "医生你好，我老是偏头痛，一般吃什么药？"  # header skipped
    assert len(list(read_questions(SEEDS / "qizhen" / "questions.json"))) == 3


def test_knowledge_examples_from_huatuo_question_list(db, tmp_path, capsys):
    out = tmp_path / "kt"
    assert main(["data", "knowledge", "--questions", str(QUESTIONS), "--db", str(db), "--out", str(out)]) == 0
    assert "4 knowledge-tuning examples" in capsys.readouterr().out
    records = {r["instruction"]: r for r in _records(out)}
    migraine = records["医生你好，我老是偏头痛，一般吃什么药？"]
    assert ["偏头痛", "药物治疗", "布洛芬"] in migraine["knowledge"] and "布洛芬" in migraine["output"]
    assert migraine["provenance"]["line"] == 2 and migraine["provenance"]["entities"] == ["偏头痛"]
    assert migraine["kind"] == "knowledge" and migraine["id"].startswith("k-")
    assert "神经内科" not in migraine["output"]  # the answer states the facts asked about, not every fact
    assert "呼吸内科" in records["感冒了应该去哪个科看？"]["output"]
    unlinked = [json.loads(x) for x in (out / "unlinked.jsonl").read_text(encoding="utf-8").splitlines()]
    assert unlinked == [{"line": 6, "question": "今天晚饭吃什么好呢？"}]
    stats = json.loads((out / "stats.json").read_text(encoding="utf-8"))
    assert (stats["written"], stats["unlinked"], stats["duplicates"]) == (4, 1, 1)
    assert all(r.ok and not r.warnings for r in validate_path(out))


def test_own_phrasings_file_changes_the_answer_wording(db, tmp_path):
    book = yaml.safe_load(resource("phrasings.yaml").read_text(encoding="utf-8"))
    book["attributes"]["drugs"]["answer"] = ["按照知识库记载，{entity}常用{values}，请遵医嘱。"]
    book["attributes"]["drugs"].pop("answer_one", None)
    own = tmp_path / "my_phrasings.yaml"
    own.write_text(yaml.safe_dump(book, allow_unicode=True), encoding="utf-8")
    out = tmp_path / "qz"
    assert main(["data", "knowledge", "--questions", str(SEEDS / "qizhen" / "questions.json"), "--db", str(db),
                 "--out", str(out), "--phrasings", str(own)]) == 0
    outputs = [r["output"] for r in _records(out)]
    assert any(o.startswith("按照知识库记载，高血压常用") for o in outputs), outputs
    built = tmp_path / "built"
    assert main(["data", "build", "--db", str(db), "--out", str(built), "--phrasings", str(own),
                 "--attributes", "drugs", "--kinds", "single", "--json"]) == 0
    assert any("按照知识库记载" in r["output"] for r in _records(built))
