"""Reading a record's shape: alpaca (+ knowledge), ShareGPT, Med-ChatGLM and flattened dialogues.

Two views of one record, used by every stage:

* :func:`to_conversation` -> ``{"system", "messages": [{"role", "content"}, ...], "knowledge"}``, the
  training view (turns alternate user/assistant and end with a non-empty answer);
* :func:`to_prompt` -> :class:`Prompt` ``(question, history, system, reference)``, what is asked of a
  model (batch inference, evaluation): the last user turn, the pairs before it, the reference after it.

Accepted shapes: alpaca ``instruction``/``input``/``output``/``history``/``system``/``knowledge`` (an
``instruction`` holding ``<user>: … <bot>: …`` is split into turns); ShareGPT ``conversations`` (or
``messages``) with roles of :data:`~qihuang.records.schema.ROLES`; Med-ChatGLM ``context``/``target``.
:func:`to_prompt` also reads question/answer files (``question``/``prompt``/``query``,
``answer``/``reference``/``response``/``label``). Errors are :class:`InputError` naming path, line, field.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple, TypedDict

from qihuang.errors import InputError
from qihuang.records.schema import (ASSISTANT, FIELD_ALIASES, QUESTION_FIELDS, REFERENCE_FIELDS, ROLES, SYSTEM, USER,
                                    role_of, turn_parts)


class Message(TypedDict):
    role: str
    content: str


class Conversation(TypedDict):
    system: str | None
    messages: list[Message]
    knowledge: list[list[str]]


class Prompt(NamedTuple):
    """What a record asks: the question, the ``[q, a]`` pairs before it, the system text, the reference."""

    question: str
    history: list[list[str]]
    system: str | None
    reference: str | None


_FLAT_TURN = re.compile(r"<(user|bot)>[:：]")
_ROLE_NAMES = "|".join(sorted(ROLES))


def _where(path, line) -> dict:
    return {"path": str(path) if path is not None else None, "line": line}


# ---- flattened dialogues (<user>: … <bot>: …) -------------------------------------------------
def has_flat_dialogue(text: str) -> bool:
    """Whether ``text`` holds a flattened dialogue (``<user>: … <bot>: …``, HuaTuo's literature shape)."""
    return bool(_FLAT_TURN.search(text or ""))


def split_flat_dialogue(text: str, where: dict | None = None) -> list[Message]:
    """``<user>: q1 <bot>: a1 <user>: q2 [<bot>:]`` -> alternating turns ending with the last user turn.

    The one reader of this shape (training records, batch inference, evaluation and chat input).
    Raises :class:`InputError` (naming ``where``'s path/line) for text before the first marker or
    a dialogue that does not end with a user turn."""
    where = where or {}
    parts = _FLAT_TURN.split(text)
    if parts[0].strip():
        raise InputError("text before the first <user>: marker", field="instruction", **where)
    turns: list[Message] = [{"role": USER if tag == "user" else ASSISTANT, "content": body.strip()}
                            for tag, body in zip(parts[1::2], parts[2::2])]
    if turns and turns[-1]["role"] == ASSISTANT and not turns[-1]["content"]:
        turns.pop()
    if not turns or turns[-1]["role"] != USER:
        raise InputError("a flattened dialogue must end with a <user>: turn", field="instruction", **where)
    return turns


def flat_question(text: str, where: dict | None = None) -> tuple[str, list[list[str]]]:
    """``(question, [[q, a], ...])`` of a flattened dialogue; plain text is its own question."""
    if not has_flat_dialogue(text):
        return text, []
    turns = split_flat_dialogue(text, where)
    check_turns(turns + [{"role": ASSISTANT, "content": "-"}], where or {})
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
        turns = [{"role": r, "content": t} for q, a in earlier for r, t in ((USER, q), (ASSISTANT, a))]
        return question, list(history) + turns
    return question, list(history or []) + earlier


# ---- the training view ------------------------------------------------------------------------
def canonical_fields(record: dict) -> dict:
    """``record`` with Med-ChatGLM's ``context``/``target`` read as ``instruction``/``output``
    (only where the alpaca field is absent, and never for ShareGPT records)."""
    if not isinstance(record, dict) or "conversations" in record or "messages" in record:
        return record
    if not any(k in record and v not in record for k, v in FIELD_ALIASES.items()):
        return record
    out = dict(record)
    for alias, name in FIELD_ALIASES.items():
        if alias in out and name not in out:
            out[name] = out.pop(alias)
    return out


def _turns_key(record: dict) -> str | None:
    return "conversations" if "conversations" in record else "messages" if "messages" in record else None


def _opened(record, path, line):
    """``(record with canonical fields, where, turns key or None, (system, messages) or None)``;
    a record that is not a JSON object raises naming ``path``/``line``."""
    where = _where(path, line)
    if not isinstance(record, dict):
        raise InputError(f"expected a JSON object, got {type(record).__name__}", **where)
    record = canonical_fields(record)
    key = _turns_key(record)
    return record, where, key, (sharegpt_turns(record[key], key, where) if key is not None else None)


def to_conversation(record: dict, path=None, line: int | None = None) -> Conversation:
    """Normalise an alpaca, ShareGPT or Med-ChatGLM record; errors name ``path``/``line`` and the field."""
    record, where, key, turns = _opened(record, path, line)
    if turns is not None:
        system, messages = turns
        system = _opt_str(record, "system", where) or system
    elif "instruction" in record or "output" in record:
        system, messages = _opt_str(record, "system", where), _alpaca(record, where)
    else:
        raise InputError("unrecognised record: expected alpaca fields (instruction/output), "
                         f"ShareGPT 'conversations' or Med-ChatGLM context/target; got keys {sorted(record)}",
                         **where)
    check_turns(messages, where)
    if messages[-1]["role"] != ASSISTANT or not messages[-1]["content"].strip():
        raise InputError("the last turn must be a non-empty assistant answer", **where)
    return {"system": system or None, "messages": messages, "knowledge": knowledge_of(record, where)}


def _opt_str(record: dict, key: str, where: dict) -> str:
    value = record.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InputError(f"expected a string, got {type(value).__name__}", field=key, **where)
    return value


def history_of(record: dict, where: dict) -> list[list[str]]:
    """The ``history`` field as ``[q, a]`` pairs of strings (InputError naming the field otherwise)."""
    history = record.get("history") or []
    if not isinstance(history, list):
        raise InputError("expected a list of [question, answer] pairs", field="history", **where)
    for i, pair in enumerate(history):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise InputError(f"item {i} must be a [question, answer] pair of strings", field="history", **where)
    return [list(pair) for pair in history]


def _alpaca(record: dict, where: dict) -> list[Message]:
    output = record.get("output")
    if isinstance(output, list) and output and all(isinstance(o, str) for o in output):
        output = output[0]  # ranked outputs (pairwise data): the preferred one
    if not isinstance(output, str) or not output.strip():
        raise InputError("expected a non-empty string", field="output", **where)
    messages: list[Message] = [m for q, a in history_of(record, where)
                               for m in ({"role": USER, "content": q}, {"role": ASSISTANT, "content": a})]
    prompt = _alpaca_prompt(record, where)
    if has_flat_dialogue(prompt):
        messages += split_flat_dialogue(prompt, where)
    else:
        messages.append({"role": USER, "content": prompt})
    return messages + [{"role": ASSISTANT, "content": output}]


def _alpaca_prompt(record: dict, where: dict) -> str:
    parts = (_opt_str(record, "instruction", where), _opt_str(record, "input", where))
    return "\n".join(part for part in parts if part.strip())


def sharegpt_turns(turns: Any, key: str, where: dict) -> tuple[str, list[Message]]:
    """``(system, messages)`` of a ShareGPT turn list (roles through :data:`ROLES`; system first only)."""
    if not isinstance(turns, list) or not turns:
        raise InputError("expected a non-empty list of turns", field=key, **where)
    system, messages = "", []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise InputError(f"turn {i} must be an object", field=key, **where)
        raw_role, content = turn_parts(turn)
        role = role_of(raw_role)
        if role is None or not isinstance(content, str):
            raise InputError(f"turn {i} needs from/role ({_ROLE_NAMES}) and string value/content, got {turn!r}",
                             field=key, **where)
        if role == SYSTEM:
            if i != 0:
                raise InputError(f"turn {i}: a system turn must come first", field=key, **where)
            system = content
        else:
            messages.append({"role": role, "content": content})
    return system, messages


def check_turns(messages: list[Message], where: dict) -> None:
    """Turns must alternate, starting with the user (InputError otherwise)."""
    if not messages:
        raise InputError("conversation has no turns", **where)
    for i, msg in enumerate(messages):
        expected = USER if i % 2 == 0 else ASSISTANT
        if msg["role"] != expected:
            raise InputError(f"turn {i} should be {expected} (turns must alternate, starting with user)", **where)


def knowledge_of(record: dict, where: dict) -> list[list[str]]:
    """The ``knowledge`` field as ``[subject, relation, object]`` triples of strings."""
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


# ---- the prompt view --------------------------------------------------------------------------
def to_prompt(record: dict, path=None, line: int | None = None, *, allow_empty: bool = False) -> Prompt:
    """What ``record`` asks (any accepted shape); a reference answer is optional.

    ShareGPT: the last user turn is the question, the assistant turn after it (if any) the reference,
    the alternating turns before it the history. Alpaca and question/answer records: the first of
    ``instruction``/``question``/``prompt``/``query`` (+ ``input``), the first of ``output``/``answer``/
    ``reference``/``response``/``label``; a flattened dialogue in the question goes into the history.
    An empty question raises unless ``allow_empty``."""
    record, where, key, turns = _opened(record, path, line)
    if turns is not None:
        system, messages = turns
        last_user = max((i for i, m in enumerate(messages) if m["role"] == USER), default=None)
        if last_user is None:
            raise InputError("no user turn", field=key, **where)
        check_turns(messages[: last_user + 1] + [{"role": ASSISTANT, "content": ""}], where)
        reference = messages[last_user + 1]["content"] if last_user + 1 < len(messages) else None
        history = [[messages[i]["content"], messages[i + 1]["content"]] for i in range(0, last_user, 2)]
        question = messages[last_user]["content"]
        system = _opt_str(record, "system", where) or system
    else:
        if not any(k in record for k in QUESTION_FIELDS + REFERENCE_FIELDS + ("input",)):
            raise InputError("unrecognised record: expected alpaca fields (instruction/output), ShareGPT "
                             f"'conversations', Med-ChatGLM context/target or question/answer; got keys "
                             f"{sorted(record)}", **where)
        system, history = _opt_str(record, "system", where), history_of(record, where)
        question, earlier = flat_question(_question_text(record, where), where)
        history += earlier
        reference = _reference(record)
    if not question.strip() and not allow_empty:
        raise InputError("missing or empty question", field="instruction", **where)
    return Prompt(question, history, system or None, reference)


def _question_text(record: dict, where: dict) -> str:
    if "instruction" in record:
        return _alpaca_prompt(record, where).strip()
    field = next((k for k in QUESTION_FIELDS if record.get(k) not in (None, "")), None)
    if field is None:
        return _opt_str(record, "input", where).strip()
    return _opt_str(record, field, where).strip()


def _reference(record: dict) -> str | None:
    for key in REFERENCE_FIELDS:
        value = record.get(key)
        if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            value = value[0]
        if value is not None and value != "" and (not isinstance(value, str) or value.strip()):
            return str(value)
    return None


def question_of(record: dict, path=None, line: int | None = None) -> dict:
    """``{"question", "history", "system", "reference", "instruction", "input"}`` of a record, read by
    :func:`to_prompt` (as evaluation reads it), for batch inference and its validation; errors name
    path, line and field."""
    prompt = to_prompt(record, path, line)
    record = canonical_fields(record)  # Med-ChatGLM context/target
    return {"question": prompt.question, "history": prompt.history, "system": prompt.system,
            "reference": prompt.reference, "instruction": record.get("instruction", prompt.question),
            "input": record.get("input", "")}
