"""The real default KB (CMeKG from the PyCMeKG package): the foundation issue's done-when checks."""

from __future__ import annotations

import json

import pytest

from qihuang.cli import main

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cmekg_db(tmp_path_factory):
    db = tmp_path_factory.mktemp("cmekg") / "kb.sqlite"
    assert main(["kb", "import", "--db", str(db), "--json"]) == 0
    return str(db)


def test_cmekg_stats_show_link(cmekg_db, capsys):
    capsys.readouterr()
    assert main(["kb", "stats", "--db", cmekg_db, "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["entities"] >= 27000 and stats["triples"] > 900_000
    assert len([a for a in stats["attributes"] if a != "other"]) >= 25

    assert main(["kb", "show", "偏头痛", "--db", cmekg_db, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert "布洛芬" in shown["relations"]["药物治疗"]

    assert main(["kb", "link", "偏头痛吃什么药？", "--db", cmekg_db, "--json"]) == 0
    linked = json.loads(capsys.readouterr().out)
    assert linked["entities"][0]["name"] == "偏头痛"
    assert linked["attributes"][0] == "drugs"
    assert any(f["relation"] == "药物治疗" for f in linked["facts"])


def test_cmekg_reimport_adds_nothing(cmekg_db, capsys):
    capsys.readouterr()
    assert main(["kb", "import", "--db", cmekg_db, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)["report"]
    assert report["triples_added"] == 0 and report["nodes_added"] == 0


def test_cmekg_question_phrasings_retrieve_their_own_attribute(cmekg_db):
    """Each data-building phrasing, about real CMeKG entities that have the attribute, makes grounding
    retrieve that attribute (and no other) for nearly every entity: what remains are names the linker
    cannot find in the question."""
    import random
    from collections import defaultdict

    from qihuang.phrasebook import load_phrasebook
    from qihuang.kb import KnowledgeBase

    book = load_phrasebook()
    checked, wrong = 0, []
    with KnowledgeBase.open(cmekg_db) as kb:
        for attribute, phrasing in book.attributes.items():
            if not phrasing.qa:
                continue
            rows = kb.conn.execute("SELECT DISTINCT e.name, e.type FROM triples t JOIN entities e ON e.id = t.subject_id "
                                   "WHERE t.attribute = ? ORDER BY e.name LIMIT 3000", (attribute,)).fetchall()
            random.Random(0).shuffle(rows)
            by_type = defaultdict(list)
            for name, etype in rows:
                by_type[etype].append(name)
            for etype, names in by_type.items():
                for pattern in sorted(set(book.get(attribute, etype).patient) | set(book.get(attribute, etype).clinician)):
                    for name in names[:4]:
                        question = pattern.format(entity=name)
                        got = sorted({f.attribute for f in kb.link(question).facts if f.entity == name})
                        checked += 1
                        if got != [attribute]:
                            wrong.append((question, attribute, got))
    assert checked > 1500
    assert len(wrong) <= 0.01 * checked, wrong[:20]
