"""The medical knowledge base: SQLite store, importers, entity and attribute linking.

Everything downstream asks the KB through this small API::

    kb = KnowledgeBase.open()          # $QIHUANG_HOME/kb.sqlite
    kb.show("偏头痛"); kb.facts("偏头痛", ["drugs"]); kb.link("偏头痛吃什么药？")
"""

from qihuang.kb.schema import ATTRIBUTES
from qihuang.kb.store import KnowledgeBase
from qihuang.kb.types import Entity, Fact, LinkResult, Mention

__all__ = ["ATTRIBUTES", "Entity", "Fact", "KnowledgeBase", "LinkResult", "Mention"]
