"""Reading training records and normalising them to one conversation shape.

``Conversation = {"system": str | None, "messages": [{"role": "user"|"assistant",
"content": str}, ...], "knowledge": list[list[str]]}``.

Accepted record shapes:

* alpaca (+ knowledge tuning): ``instruction``, ``input``, ``output``, ``history`` ([[q, a], ...]),
  ``system``, ``knowledge``; an ``instruction`` holding a flattened dialogue
  (``<user>: … <bot>: … <user>: …``) is split into turns.
* ShareGPT: ``conversations`` (or ``messages``) as ``{"from": human|gpt|system, "value": …}``
  or ``{"role": user|assistant|system, "content": …}``.
* Med-ChatGLM: ``context`` (the question) and ``target`` (the answer), read as alpaca
  ``instruction`` / ``output`` (see :func:`canonical_fields`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple, TypedDict

from qihuang.errors import InputError


class Message(TypedDict):
    role: str
    content: str


class Conversation(TypedDict):
    system: str | None
    messages: list[Message]
    knowledge: list[list[str]]


_ROLE_ALIASES = {
    "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "bot": "assistant",
    "model": "assistant", "system": "system",
}
_FLAT_TURN = re.compile(r"<(user|bot)>[:：]")


# ---- reading ----------------------------------------------------------------------------------
class Numbered(NamedTuple):
    """One record of a data file: ``number`` counts records from 1 (the key for numbering output
    rows and resuming), ``line`` is the physical line the record starts on (for messages). In a
    JSON array written on one line (HuaTuo's literature data) every record has ``line`` 1."""

    number: int
    line: int
    record: dict


def read_numbered(path: str | Path) -> Iterator[Numbered]:
    """Every record of ``path`` with its record number and true line (see :func:`read_records`)."""
    for number, (line, record) in enumerate(read_records(path), start=1):
        yield Numbered(number, line, record)


def read_records(path: str | Path) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, record)`` from a ``.jsonl`` file or a ``.json`` file holding JSON
    lines or a JSON array. Raises :class:`InputError` naming the file and line. Line numbers
    are physical lines, so records of a one-line JSON array share one: number output by
    :func:`read_numbered` instead."""
    path = Path(path)
    if not path.is_file():
        raise InputError("file not found", path=str(path))
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix == ".json" and text.lstrip().startswith("["):
        yield from _read_array(text, path)
        return
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"invalid JSON ({exc.msg}, column {exc.colno})", path=str(path), line=number) from exc
        if not isinstance(record, dict):
            raise InputError(f"expected a JSON object, got {type(record).__name__}", path=str(path), line=number)
        yield number, record


def _read_array(text: str, path: Path) -> Iterator[tuple[int, dict]]:
    decoder = json.JSONDecoder()
    pos = text.index("[") + 1
    while True:
        pos = _skip(text, pos, " \t\r\n")
        if pos < len(text) and text[pos] == "]":
            return
        line = text.count("\n", 0, pos) + 1
        try:
            record, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise InputError(f"invalid JSON ({exc.msg})", path=str(path), line=exc.lineno) from exc
        if not isinstance(record, dict):
            raise InputError(f"expected a JSON object, got {type(record).__name__}", path=str(path), line=line)
        yield line, record
        pos = _skip(text, pos, " \t\r\n")
        if pos < len(text) and text[pos] == ",":
            pos += 1
        elif pos >= len(text) or text[pos] != "]":
            raise InputError("expected ',' or ']' in JSON array", path=str(path), line=text.count("\n", 0, pos) + 1)


def _skip(text: str, pos: int, chars: str) -> int:
    while pos < len(text) and text[pos] in chars:
        pos += 1
    return pos


def read_texts(path: str | Path, column: str = "text") -> Iterator[tuple[int, str]]:
    """Plain-text documents for continued pretraining, as ``(line_number, text)``.

    ``.txt``: one document per non-empty line (as LLaMA-Factory reads text files); ``.md``:
    paragraphs separated by blank lines; ``.jsonl``/``.json``: the ``column`` field of every record
    (``text`` unless a ``dataset_info.json`` entry maps ``columns.prompt``)."""
    path = Path(path)
    if path.suffix in (".jsonl", ".json"):
        for number, record in read_records(path):
            text = record.get(column)
            if not isinstance(text, str):
                hint = "" if column in record else \
                    f" (no {column!r} field; map yours with dataset_info.json columns.prompt)"
                raise InputError("expected a string" + hint, path=str(path), line=number, field=column)
            if text.strip():
                yield number, text
        return
    if not path.is_file():
        raise InputError("file not found", path=str(path))
    lines = path.read_text(encoding="utf-8-sig").splitlines()
    if path.suffix != ".md":
        yield from ((n, line) for n, line in enumerate(lines, start=1) if line.strip())
        return
    start, para = 1, []
    for number, line in enumerate(lines, start=1):
        if line.strip():
            if not para:
                start = number
            para.append(line)
        elif para:
            yield start, "\n".join(para)
            para = []
    if para:
        yield start, "\n".join(para)


# ---- normalising ------------------------------------------------------------------------------
_FIELD_ALIASES = {"context": "instruction", "target": "output"}  # Med-ChatGLM's JSON lines


def canonical_fields(record: dict) -> dict:
    """``record`` with Med-ChatGLM's ``context``/``target`` read as ``instruction``/``output``
    (only where the alpaca field is absent, and never for ShareGPT records)."""
    if not isinstance(record, dict) or "conversations" in record or "messages" in record:
        return record
    if not any(k in record and v not in record for k, v in _FIELD_ALIASES.items()):
        return record
    out = dict(record)
    for alias, name in _FIELD_ALIASES.items():
        if alias in out and name not in out:
            out[name] = out.pop(alias)
    return out


def to_conversation(record: dict, path: str | Path | None = None, line: int | None = None) -> Conversation:
    """Normalise an alpaca, ShareGPT or Med-ChatGLM record; errors name ``path``/``line`` and the field."""
    where = {"path": str(path) if path is not None else None, "line": line}
    if not isinstance(record, dict):
        raise InputError(f"expected a JSON object, got {type(record).__name__}", **where)
    record = canonical_fields(record)
    if "conversations" in record or "messages" in record:
        key = "conversations" if "conversations" in record else "messages"
        system, messages = _sharegpt(record[key], key, where)
        system = _opt_str(record, "system", where) or system
    elif "instruction" in record or "output" in record:
        system, messages = _opt_str(record, "system", where), _alpaca(record, where)
    else:
        raise InputError("unrecognised record: expected alpaca fields (instruction/output), "
                         f"ShareGPT 'conversations' or Med-ChatGLM context/target; got keys {sorted(record)}",
                         **where)
    _check_turns(messages, where)
    return {"system": system or None, "messages": messages, "knowledge": _knowledge(record, where)}


def _opt_str(record: dict, key: str, where: dict) -> str:
    value = record.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InputError(f"expected a string, got {type(value).__name__}", field=key, **where)
    return value


def _alpaca(record: dict, where: dict) -> list[Message]:
    instruction = _opt_str(record, "instruction", where)
    query = _opt_str(record, "input", where)
    output = record.get("output")
    if isinstance(output, list) and output and all(isinstance(o, str) for o in output):
        output = output[0]  # ranked outputs (pairwise data): the preferred one
    if not isinstance(output, str) or not output.strip():
        raise InputError("expected a non-empty string", field="output", **where)
    messages: list[Message] = []
    history = record.get("history") or []
    if not isinstance(history, list):
        raise InputError("expected a list of [question, answer] pairs", field="history", **where)
    for i, pair in enumerate(history):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise InputError(f"item {i} must be a [question, answer] pair of strings", field="history", **where)
        messages += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    prompt = "\n".join(part for part in (instruction, query) if part.strip())
    if has_flat_dialogue(prompt):
        messages += _split_flat(prompt, output, where)
    else:
        messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": output}]
    return messages


def has_flat_dialogue(text: str) -> bool:
    """Whether ``text`` holds a flattened dialogue (``<user>: … <bot>: …``, HuaTuo's literature shape)."""
    return bool(_FLAT_TURN.search(text or ""))


def split_flat_dialogue(text: str, where: dict | None = None) -> list[Message]:
    """``<user>: q1 <bot>: a1 <user>: q2 [<bot>:]`` -> alternating turns ending with the last user turn.

    The one reader of this shape: training records, batch inference, evaluation tasks and chat
    input all split it here. Raises :class:`InputError` (naming ``where``'s path/line) for text
    before the first marker or turns that do not alternate."""
    where = where or {}
    parts = _FLAT_TURN.split(text)
    if parts[0].strip():
        raise InputError("text before the first <user>: marker", field="instruction", **where)
    turns: list[Message] = [{"role": "user" if tag == "user" else "assistant", "content": body.strip()}
                            for tag, body in zip(parts[1::2], parts[2::2])]
    if turns and turns[-1]["role"] == "assistant" and not turns[-1]["content"]:
        turns.pop()
    if not turns or turns[-1]["role"] != "user":
        raise InputError("a flattened dialogue must end with a <user>: turn", field="instruction", **where)
    return turns


def flat_question(text: str) -> tuple[str, list[list[str]]]:
    """``(question, [[q, a], ...])`` of a flattened dialogue; plain text is its own question."""
    if not has_flat_dialogue(text):
        return text, []
    turns = split_flat_dialogue(text)
    _check_turns(turns + [{"role": "assistant", "content": "-"}], {})
    return turns[-1]["content"], [[turns[i]["content"], turns[i + 1]["content"]] for i in range(0, len(turns) - 1, 2)]


def with_flat_turns(question: str, history: list | None) -> tuple[str, list | None]:
    """``(question, history)`` with a flattened dialogue in ``question`` moved into ``history``
    (after the turns already there, in the same form: ``[q, a]`` pairs or role/content dicts).
    Text that only mentions a marker but does not parse as a dialogue stays as it is."""
    try:
        question, earlier = flat_question(question)
    except InputError:
        return question, history
    if not earlier:
        return question, history
    if history and isinstance(history[0], dict):
        turns = [{"role": r, "content": t} for q, a in earlier for r, t in (("user", q), ("assistant", a))]
        return question, list(history) + turns
    return question, list(history or []) + earlier


def _split_flat(prompt: str, output: str, where: dict) -> list[Message]:
    """``<user>: q1 <bot>: a1 <user>: q2 <bot>:`` + output -> alternating turns."""
    return split_flat_dialogue(prompt, where) + [{"role": "assistant", "content": output}]


def _sharegpt(turns: Any, key: str, where: dict) -> tuple[str, list[Message]]:
    if not isinstance(turns, list) or not turns:
        raise InputError("expected a non-empty list of turns", field=key, **where)
    system, messages = "", []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise InputError(f"turn {i} must be an object", field=key, **where)
        raw_role = turn.get("from", turn.get("role"))
        content = turn.get("value", turn.get("content"))
        role = _ROLE_ALIASES.get(str(raw_role).lower())
        if role is None or not isinstance(content, str):
            raise InputError(f"turn {i} needs from/role (human|gpt|user|assistant|system) and string "
                             f"value/content, got {turn!r}", field=key, **where)
        if role == "system":
            if i != 0:
                raise InputError(f"turn {i}: a system turn must come first", field=key, **where)
            system = content
        else:
            messages.append({"role": role, "content": content})
    return system, messages


def _check_turns(messages: list[Message], where: dict) -> None:
    if not messages:
        raise InputError("conversation has no turns", **where)
    for i, msg in enumerate(messages):
        expected = "user" if i % 2 == 0 else "assistant"
        if msg["role"] != expected:
            raise InputError(f"turn {i} should be {expected} (turns must alternate, starting with user)", **where)
    if messages[-1]["role"] != "assistant" or not messages[-1]["content"].strip():
        raise InputError("the last turn must be a non-empty assistant answer", **where)


def _knowledge(record: dict, where: dict) -> list[list[str]]:
    knowledge = record.get("knowledge") or []
    if not isinstance(knowledge, list):
        raise InputError("expected a list of [subject, relation, object] triples", field="knowledge", **where)
    out = []
    for i, triple in enumerate(knowledge):
        if not (isinstance(triple, (list, tuple)) and len(triple) == 3 and all(isinstance(x, str) for x in triple)):
            raise InputError(f"item {i} must be a [subject, relation, object] triple of strings",
                             field="knowledge", **where)
        out.append(list(triple))
    return out
