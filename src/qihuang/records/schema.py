"""The dataset record as data: its fields, kinds, the ShareGPT role table and the column maps.

One record of a qihuang dataset is an alpaca example plus knowledge tuning and provenance::

    {"instruction": str, "input": str, "output": str, "history": [[q, a], ...],
     "knowledge": [[subject, relation, object], ...], "entity": str, "attribute": str,
     "kind": "single" | "scenario" | "dialogue" | "knowledge", "pattern": int | None, "id": str}

plus optional ``system``, ``source`` (``synth`` for LLM-written answers) and ``provenance``.
``pattern`` says how the answer was made: the phrasebook answer-pattern index (the ``variant`` of
:func:`qihuang.datagen.phrasings.render_answer`) for a single-attribute answer, ``None`` for an
answer no single pattern produced (scenarios, dialogues, LLM answers). Files written before the
field existed have no ``pattern`` key at all.
"""

from __future__ import annotations

from typing import TypedDict

IGNORE_INDEX = -100  # label of tokens the loss ignores (prompt tokens, padding)

KINDS = ("single", "scenario", "dialogue", "knowledge")
"""How a record was made: one attribute's question, a symptoms scenario, a multi-turn dialogue,
a knowledge-tuning example grounded from a question list."""

# the standard fields of a built record, in the order they are written
FIELDS = ("instruction", "input", "output", "history", "knowledge", "entity", "attribute", "kind", "pattern", "id")
PROVENANCE_FIELDS = ("entity", "attribute", "kind", "pattern", "id", "source")


class Record(TypedDict, total=False):
    """A dataset record (every key optional: readers accept partial alpaca records)."""

    instruction: str
    input: str
    output: str
    history: list[list[str]]
    system: str
    knowledge: list[list[str]]
    entity: str
    attribute: str
    kind: str
    pattern: int | None
    id: str
    source: str


def make_record(kind: str, instruction: str, output: str, *, knowledge: list, entity: str, attribute: str,
                id: str, history: list | None = None, pattern: int | None = None) -> dict:
    """A record with the standard :data:`FIELDS`, in their written order."""
    return {"instruction": instruction, "input": "", "output": output, "history": history or [],
            "knowledge": knowledge, "entity": entity, "attribute": attribute, "kind": kind, "pattern": pattern,
            "id": id}


def provenance_problems(record: dict) -> list[str]:
    """What is wrong with a record's provenance fields (``kind``, ``pattern``, ``entity`` …), as messages."""
    problems = []
    kind = record.get("kind")
    if kind is not None and kind not in KINDS:
        problems.append(f"unknown kind {kind!r}")
    for key in ("entity", "attribute", "id"):
        if key in record and not isinstance(record[key], (str, int)):
            problems.append(f"field {key!r} should be a string or a number")
    pattern = record.get("pattern")
    if pattern is not None and (not isinstance(pattern, int) or isinstance(pattern, bool) or pattern < 0):
        problems.append(f"field 'pattern' should be a non-negative integer or null, got {pattern!r}")
    return problems


# ---- roles ------------------------------------------------------------------------------------
USER, ASSISTANT, SYSTEM = "user", "assistant", "system"
ROLES = {
    "user": USER, "human": USER,
    "assistant": ASSISTANT, "gpt": ASSISTANT, "bot": ASSISTANT, "model": ASSISTANT,
    "system": SYSTEM,
}
"""ShareGPT / OpenAI / Gemini role names -> user | assistant | system (one table for every reader)."""


def role_of(raw: object) -> str | None:
    """The canonical role of a turn's ``from``/``role`` value (case-insensitive), None when unknown."""
    return ROLES.get(str(raw).strip().lower()) if raw is not None else None


def turn_parts(turn: dict) -> tuple[object, object]:
    """``(raw role, content)`` of a ShareGPT (``from``/``value``) or OpenAI (``role``/``content``) turn."""
    return turn.get("from", turn.get("role")), turn.get("value", turn.get("content"))


# ---- column maps ------------------------------------------------------------------------------
# LLaMA-Factory dataset_info.json ``columns`` of what qihuang writes (alpaca split files)
ALPACA_COLUMNS = {"prompt": "instruction", "query": "input", "response": "output", "history": "history",
                  "system": "system", "knowledge": "knowledge"}
SHAREGPT_COLUMNS = {"messages": "conversations", "system": "system", "knowledge": "knowledge"}
SHAREGPT_TAGS = {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt"}
RANKING_COLUMNS = {"prompt": "instruction", "query": "input", "chosen": "chosen", "rejected": "rejected",
                   "history": "history", "system": "system", "knowledge": "knowledge"}
# a dataset_info.json column name -> the record field readers use
COLUMN_FIELDS = {"prompt": "instruction", "query": "input", "response": "output", "history": "history",
                 "system": "system", "knowledge": "knowledge", "messages": "conversations",
                 "chosen": "chosen", "rejected": "rejected"}
# Med-ChatGLM's JSON lines: context (the question) / target (the answer)
FIELD_ALIASES = {"context": "instruction", "target": "output"}
# where a question / a reference answer may be, in order (alpaca, QA files, LLaMA-Factory predictions)
QUESTION_FIELDS = ("instruction", "question", "prompt", "query")
REFERENCE_FIELDS = ("output", "answer", "reference", "response", "label")


def remap_columns(record: dict, columns: dict[str, str] | None, tags: dict[str, str] | None = None,
                  formatting: str = "alpaca") -> dict:
    """``record`` with a ``dataset_info.json`` entry's ``columns`` renamed to the record fields and,
    for ShareGPT, its ``tags`` (role/content keys and role names) turned into role/content turns."""
    if not columns and not tags:
        return record
    out = dict(record)
    for canon, column in (columns or {}).items():
        target = COLUMN_FIELDS.get(canon)
        if target and column in record:
            out[target] = record[column]
    if formatting != "sharegpt" or not tags:
        return out
    role_tag, content_tag = tags.get("role_tag", "from"), tags.get("content_tag", "value")
    names = {tags.get("user_tag", "human"): USER, tags.get("assistant_tag", "gpt"): ASSISTANT,
             tags.get("system_tag", "system"): SYSTEM}
    if isinstance(out.get("conversations"), list):
        out["conversations"] = [{"role": names.get(t.get(role_tag), t.get(role_tag)), "content": t.get(content_tag)}
                                if isinstance(t, dict) else t for t in out["conversations"]]
    for key in ("chosen", "rejected"):  # ranking data: the answers as single turns
        turn = out.get(key)
        if isinstance(turn, dict) and role_tag in turn:
            out[key] = {"role": names.get(turn[role_tag], turn[role_tag]), "content": turn.get(content_tag)}
    return out
