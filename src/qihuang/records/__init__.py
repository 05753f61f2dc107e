"""The one dataset record: schema, kinds, roles, column maps, the reader and the two views of a record.

Every stage imports the record from here (datagen writes it, ``data`` trains on it, ``eval`` and
``infer`` ask it): :mod:`~qihuang.records.schema` (fields, :data:`KINDS`, :data:`ROLES`, column maps,
``IGNORE_INDEX``), :mod:`~qihuang.records.reader` (JSON lines / JSON arrays with true line numbers)
and :mod:`~qihuang.records.shapes` (:func:`to_conversation` for training, :func:`to_prompt` for asking,
:func:`question_of` for batch inference).
"""

from qihuang.records.reader import (Numbered, Scanned, is_array_text, read_items, read_numbered, read_records,
                                    record_key, scan_items, scan_records)
from qihuang.records.schema import (ALPACA_COLUMNS, ASSISTANT, COLUMN_FIELDS, FIELD_ALIASES, FIELDS, IGNORE_INDEX,
                                    KINDS, PROVENANCE_FIELDS, QUESTION_FIELDS, RANKING_COLUMNS, REFERENCE_FIELDS,
                                    ROLES, SHAREGPT_COLUMNS, SHAREGPT_TAGS, SYSTEM, USER, Record, make_record,
                                    provenance_problems, remap_columns, role_of, turn_parts)
from qihuang.records.shapes import (Conversation, Message, Prompt, canonical_fields, check_turns, flat_question,
                                    has_flat_dialogue, history_of, knowledge_of, question_of, sharegpt_turns,
                                    split_flat_dialogue, to_conversation, to_prompt, with_flat_turns)

__all__ = [
    "ALPACA_COLUMNS", "ASSISTANT", "COLUMN_FIELDS", "FIELD_ALIASES", "FIELDS", "IGNORE_INDEX", "KINDS",
    "PROVENANCE_FIELDS", "QUESTION_FIELDS", "RANKING_COLUMNS", "REFERENCE_FIELDS", "ROLES", "SHAREGPT_COLUMNS",
    "SHAREGPT_TAGS", "SYSTEM", "USER", "Conversation", "Message", "Numbered", "Prompt", "Record", "Scanned",
    "canonical_fields", "check_turns", "flat_question", "has_flat_dialogue", "history_of", "is_array_text",
    "knowledge_of", "make_record", "provenance_problems", "question_of", "read_items", "read_numbered", "read_records",
    "record_key", "remap_columns", "role_of", "scan_items", "scan_records", "sharegpt_turns",
    "split_flat_dialogue", "to_conversation", "to_prompt", "turn_parts", "with_flat_turns",
]
