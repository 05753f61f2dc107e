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
