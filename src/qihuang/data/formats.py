"""Reading training data: the record shapes and plain-text documents for continued pretraining.

The record itself (fields, roles, the reader with true line numbers, :func:`to_conversation` and
:func:`to_prompt`) is defined once in :mod:`qihuang.records`; this module re-exports the names the
training side uses and adds :func:`read_texts` (``.txt``/``.md`` documents for ``--stage pt``).

``Conversation = {"system": str | None, "messages": [{"role": "user"|"assistant",
"content": str}, ...], "knowledge": list[list[str]]}``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from qihuang.errors import InputError
from qihuang.records import (Conversation, Message, Numbered, canonical_fields, flat_question, has_flat_dialogue,
                             read_numbered, read_records, split_flat_dialogue, to_conversation, with_flat_turns)

__all__ = ["Conversation", "Message", "Numbered", "canonical_fields", "flat_question", "has_flat_dialogue",
           "read_numbered", "read_records", "read_texts", "split_flat_dialogue", "to_conversation",
           "with_flat_turns"]


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
