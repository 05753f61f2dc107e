"""Prompt templates: one template renders both training examples and inference prompts.

Templates are data (``resources/templates.yaml``); ``get_template(name)`` returns a
:class:`Template`. A template is saved next to every training output
(``qihuang_template.json``) and picked up again when that output is loaded, so training and
inference always format prompts the same way.

Rendered prompts are meant to be tokenized with the tokenizer's defaults
(``tokenizer(text)``): a chat template's leading BOS text is dropped when the tokenizer adds
BOS by itself.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from qihuang.errors import ConfigError, InputError
from qihuang.paths import resource
from qihuang.records import IGNORE_INDEX

TEMPLATE_FILE = "qihuang_template.json"
KNOWLEDGE_HEADER = "参考知识："
_KINDS = ("chat", "text")

Message = dict[str, str]
Span = tuple[int, int]


@dataclass
class Template:
    """A prompt format. See ``resources/templates.yaml`` for the meaning of each field."""

    name: str
    kind: str = "text"
    description: str = ""
    system: str = ""
    format_system: str = "{system}\n"
    format_user: str = "{content}\n"
    format_assistant: str = "{content}{eos}"
    separator: str = "\n"
    stop: list[str] = field(default_factory=list)
    fallback: str | None = None
    prompt_no_input: str | None = None
    prompt_input: str | None = None
    response_split: str | None = None
    dialogue: str = "flat"

    def __post_init__(self) -> None:
        where = f"template {self.name!r}"
        if self.kind not in _KINDS:
            raise ConfigError(f"{where}: field 'kind' must be one of {_KINDS}, got {self.kind!r}")
        if self.prompt_input is not None and self.prompt_no_input is None:
            raise ConfigError(f"{where}: field 'prompt_no_input' is required when 'prompt_input' is given")
        if self.prompt_no_input is not None:
            _check_prompt_style(self, where)
        elif self.kind == "text":
            for name, slot in (("format_user", "{content}"), ("format_assistant", "{content}"),
                               ("format_system", "{system}")):
                if slot not in getattr(self, name):
                    raise ConfigError(f"{where}: field {name!r} must contain {slot}")
        if not isinstance(self.stop, list) or not all(isinstance(s, str) for s in self.stop):
            raise ConfigError(f"{where}: field 'stop' must be a list of strings")

    # ---- public API ---------------------------------------------------------------------
    def render(self, tokenizer, messages: list[Message], system: str | None = None,
               knowledge: Any = None, add_generation_prompt: bool = True) -> str:
        """The prompt text for ``messages`` (ending with a user turn) ready for generation."""
        text, _ = self.render_with_spans(tokenizer, messages, system, knowledge, add_generation_prompt)
        return text

    def encode_supervised(self, tokenizer, messages: list[Message], system: str | None = None,
                          knowledge: Any = None, cutoff_len: int = 1024) -> tuple[list[int], list[int]]:
        """Token ids and labels of a conversation: labels are ``-100`` everywhere except the
        tokens of every assistant answer and the EOS that ends it (trained even when the pad
        id equals the EOS id). Both lists are cut to ``cutoff_len``."""
        text, spans = self.render_with_spans(tokenizer, messages, system, knowledge, False)
        ids, labels = _tokenize_with_labels(tokenizer, text, spans)
        return ids[:cutoff_len], labels[:cutoff_len]

    def for_tokenizer(self, tokenizer) -> Template:
        """The template actually used with ``tokenizer``: a ``chat`` template whose tokenizer
        has no chat template resolves to its ``fallback`` (e.g. for its ``stop`` strings)."""
        if self.kind == "chat" and not getattr(tokenizer, "chat_template", None):
            return get_template(self.fallback or "alpaca")
        return self

    def render_with_spans(self, tokenizer, messages: list[Message], system: str | None = None,
                          knowledge: Any = None, add_generation_prompt: bool = True) -> tuple[str, list[Span]]:
        """The rendered text and the character spans of the trained parts (answers + EOS)."""
        _check_messages(messages)
        if self.for_tokenizer(tokenizer) is not self:
            return self.for_tokenizer(tokenizer).render_with_spans(
                tokenizer, messages, system, knowledge, add_generation_prompt)
        if self.kind == "chat":
            return _render_chat(tokenizer, messages, _system_text(system, knowledge), add_generation_prompt)
        if self.prompt_no_input is not None:
            return self._render_prompt(tokenizer, messages, system, knowledge)
        return self._render_text(tokenizer, messages, system, knowledge)

    def to_dict(self) -> dict:
        """A JSON-ready description (what ``save_template`` writes)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict, name: str | None = None) -> Template:
        """Build a template from a mapping, naming unknown fields in the error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        label = name or data.get("name", "?")
        if unknown:
            raise ConfigError(f"template {label!r}: unknown field(s) {unknown}; known: {sorted(known)}")
        return cls(**{**data, "name": name or data.get("name", "custom")})

    # ---- HuaTuo-style prompt templates ----------------------------------------------------
    def _render_prompt(self, tokenizer, messages, system, knowledge) -> tuple[str, list[Span]]:
        """One prompt string with an ``{instruction}`` slot (HuaTuo's ``prompt_no_input``).

        Earlier turns go into the slot flattened as `` <user>: q <bot>: a <user>: q`` (the shape of
        HuaTuo's literature data); only the last answer (+ EOS) is trained. A system text or
        knowledge block, when given, is put in the slot before the question."""
        eos = getattr(tokenizer, "eos_token", None) or ""
        answer = messages[-1]["content"] if messages[-1]["role"] == "assistant" else None
        asked = messages[:-1] if answer is not None else messages
        instruction = flatten_dialogue(asked, marked=self.dialogue == "marked")
        prefix = _system_text(self.system if system is None else system, knowledge)
        if prefix:
            instruction = prefix + "\n" + instruction
        text = self.prompt_no_input.replace("{instruction}", instruction)
        if answer is None:
            return text, []
        start = len(text)
        text += answer + eos
        return text, [(start, len(text.rstrip()))]

    # ---- text templates -------------------------------------------------------------------
    def _render_text(self, tokenizer, messages, system, knowledge) -> tuple[str, list[Span]]:
        eos = getattr(tokenizer, "eos_token", None) or ""
        sys_text = _system_text(self.system if system is None else system, knowledge)
        text = self.format_system.replace("{system}", sys_text) if sys_text else ""
        spans: list[Span] = []
        before, _, after = self.format_assistant.partition("{content}")
        before, after = before.replace("{eos}", eos), after.replace("{eos}", eos)
        for i, msg in enumerate(messages):
            if msg["role"] == "user":
                if i > 0:
                    text += self.separator
                text += self.format_user.replace("{content}", msg["content"])
            else:
                text += before
                start = len(text)
                text += msg["content"] + after
                spans.append((start, len(text.rstrip())))
        return text, spans


_DIALOGUES = ("flat", "marked")


def _check_prompt_style(template: Template, where: str) -> None:
    if template.kind != "text":
        raise ConfigError(f"{where}: field 'prompt_no_input' needs kind 'text'")
    for name in ("prompt_no_input", "prompt_input"):
        value = getattr(template, name)
        if value is not None and (not isinstance(value, str) or "{instruction}" not in value):
            raise ConfigError(f"{where}: field {name!r} must be a string containing {{instruction}}")
    if template.dialogue not in _DIALOGUES:
        raise ConfigError(f"{where}: field 'dialogue' must be one of {_DIALOGUES}, got {template.dialogue!r}")


def flatten_dialogue(messages: list[Message], marked: bool = False) -> str:
    """Turns as one string `` <user>: q1 <bot>: a1 <user>: q2`` (HuaTuo's literature shape).

    A single question stays as it is unless ``marked`` (then it gets its ``<user>:`` marker too)."""
    if len(messages) == 1 and not marked:
        return messages[0]["content"]
    tags = {"user": "user", "assistant": "bot"}
    return "".join(f" <{tags[m['role']]}>: {m['content']}" for m in messages)


# ---- knowledge block ------------------------------------------------------------------------
def format_knowledge(facts: Any) -> str:
    """The one knowledge-block format used for training and inference.

    ``facts`` is a list of :class:`qihuang.kb.Fact` or of ``[subject, relation, object]``
    triples. Values sharing a subject and relation are grouped on one line, in first-seen
    order; duplicates are dropped. Facts that retrieval reached indirectly (``Fact.via``) carry
    their note: reverse-lookup facts share one line per named value and relation, its subjects
    first (``- 偏头痛、腹痛 药物治疗：布洛芬（反查：布洛芬 ← 药物治疗）``); candidate diseases of
    described symptoms are marked 候选疾病，可能相关，非诊断. Returns ``""`` for no facts.
    """
    from qihuang.kb.types import via_note

    grouped: dict[tuple[str, str, str], list[str]] = {}
    for i, fact in enumerate(facts or []):
        triple = fact.triple() if hasattr(fact, "triple") else fact
        if not isinstance(triple, (list, tuple)) or len(triple) != 3 or not all(isinstance(x, str) for x in triple):
            raise InputError(f"item {i} must be a [subject, relation, object] triple of strings, got {fact!r}",
                             field="knowledge")
        subject, relation, value = (x.strip() for x in triple)
        via, anchor = getattr(fact, "via", "direct"), getattr(fact, "anchor", "")
        note = via_note(via, anchor, relation)
        if via == "reverse":  # one line per (value, relation): the subjects that list it
            subject, value = value, subject
        values = grouped.setdefault((subject, relation, note, via), [])
        if value not in values:
            values.append(value)
    if not grouped:
        return ""
    lines = []
    for (s, r, note, via), v in grouped.items():
        tail = f"（{note}）" if note else ""
        lines.append(f"- {'、'.join(v)} {r}：{s}{tail}" if via == "reverse" else f"- {s} {r}：{'、'.join(v)}{tail}")
    return KNOWLEDGE_HEADER + "\n" + "\n".join(lines)


def _system_text(system: str | None, knowledge: Any) -> str:
    block = format_knowledge(knowledge) if knowledge else ""
    return "\n\n".join(part for part in (system or "", block) if part)


# ---- chat templates -------------------------------------------------------------------------
def _apply(tokenizer, msgs: list[Message], add_generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=add_generation_prompt)


def _with_system(tokenizer, messages: list[Message], sys_text: str) -> list[Message]:
    if not sys_text:
        return list(messages)
    msgs = [{"role": "system", "content": sys_text}] + list(messages)
    try:
        _apply(tokenizer, msgs[:2], False)
        return msgs
    except Exception:  # template without a system role: fold it into the first user turn
        first = dict(messages[0], content=sys_text + "\n\n" + messages[0]["content"])
        return [first] + list(messages[1:])


def _render_chat(tokenizer, messages, sys_text, add_generation_prompt) -> tuple[str, list[Span]]:
    msgs = _with_system(tokenizer, messages, sys_text)
    full = _apply(tokenizer, msgs, add_generation_prompt)
    spans = []
    for i, msg in enumerate(msgs):
        if msg["role"] != "assistant":
            continue
        prefix, upto = _apply(tokenizer, msgs[:i], True), _apply(tokenizer, msgs[: i + 1], False)
        if not (upto.startswith(prefix) and full.startswith(upto)):
            return _render_chat_by_search(tokenizer, msgs, full)
        spans.append((len(prefix), len(upto.rstrip())))
    return _finish_chat(tokenizer, full, spans)


def _render_chat_by_search(tokenizer, msgs, full) -> tuple[str, list[Span]]:
    """Fallback for chat templates whose prefixes are not stable: find each turn in order."""
    cursor, spans = 0, []
    for msg in msgs:
        content = msg["content"].strip()
        pos = full.find(content, cursor)
        if pos < 0:
            raise ConfigError("the tokenizer's chat template rewrites message text; choose a text template "
                              "with --template (e.g. alpaca)", )
        cursor = pos + len(content)
        if msg["role"] == "assistant":
            end = cursor
            eos = getattr(tokenizer, "eos_token", None)
            if eos and full.startswith(eos, end):
                end += len(eos)
            spans.append((pos, end))
    return _finish_chat(tokenizer, full, spans)


def _finish_chat(tokenizer, text: str, spans: list[Span]) -> tuple[str, list[Span]]:
    """Append EOS to answers whose turn does not end with a special token, and drop a leading
    BOS text the tokenizer would add again."""
    specials = [t for t in getattr(tokenizer, "all_special_tokens", []) if t]
    eos = getattr(tokenizer, "eos_token", None) or ""
    pieces, fixed, last = [], [], 0
    for start, end in spans:
        pieces.append(text[last:start])
        answer = text[start:end]
        if eos and not any(answer.endswith(s) for s in specials):
            answer += eos
        offset = sum(map(len, pieces))
        fixed.append((offset, offset + len(answer)))
        pieces.append(answer)
        last = end
    pieces.append(text[last:])
    out = "".join(pieces)
    bos = getattr(tokenizer, "bos_token", None)
    if bos and out.startswith(bos) and _adds_bos(tokenizer):
        out = out[len(bos):]
        fixed = [(s - len(bos), e - len(bos)) for s, e in fixed]
    return out, fixed


def _adds_bos(tokenizer) -> bool:
    bos_id = getattr(tokenizer, "bos_token_id", None)
    if bos_id is None:
        return False
    with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bool(with_special) and with_special[0] == bos_id and \
        with_special != tokenizer("a", add_special_tokens=False)["input_ids"]


# ---- tokenization ---------------------------------------------------------------------------
def _tokenize_with_labels(tokenizer, text: str, spans: list[Span]) -> tuple[list[int], list[int]]:
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text, add_special_tokens=True, return_offsets_mapping=True)
        ids = list(enc["input_ids"])
        labels = [IGNORE_INDEX] * len(ids)
        k = 0
        for j, (start, end) in enumerate(enc["offset_mapping"]):
            if end <= start:  # added special tokens have empty offsets
                continue
            while k < len(spans) and start >= spans[k][1]:
                k += 1
            if k < len(spans) and spans[k][0] <= start < spans[k][1]:
                labels[j] = ids[j]
        return ids, labels
    return _tokenize_pieces(tokenizer, text, spans)


def _tokenize_pieces(tokenizer, text: str, spans: list[Span]) -> tuple[list[int], list[int]]:
    """Slow-tokenizer path: tokenize prompt and answer pieces separately."""
    prefix = tokenizer("", add_special_tokens=True)["input_ids"]
    ids, labels, last = list(prefix), [IGNORE_INDEX] * len(prefix), 0
    for start, end in spans + [(len(text), len(text))]:
        for piece, train in ((text[last:start], False), (text[start:end], True)):
            if piece:
                piece_ids = tokenizer(piece, add_special_tokens=False)["input_ids"]
                ids += piece_ids
                labels += piece_ids if train else [IGNORE_INDEX] * len(piece_ids)
        last = end
    return ids, labels


def _check_messages(messages: list[Message]) -> None:
    if not messages:
        raise InputError("a conversation needs at least one message", field="messages")
    if messages[0].get("role") != "user":
        raise InputError("a conversation must start with a user message", field="messages")
    for i, msg in enumerate(messages):
        if msg.get("role") not in ("user", "assistant") or not isinstance(msg.get("content"), str):
            raise InputError(f"message {i} must have role user|assistant and string content, got {msg!r}",
                             field="messages")


# ---- registry and persistence ---------------------------------------------------------------
@lru_cache(maxsize=1)
def _registry() -> dict[str, dict]:
    path = resource("templates.yaml")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of template name -> fields")
    return data


def list_templates() -> list[str]:
    """Names of the registered templates."""
    return list(_registry())


def get_template(name: str) -> Template:
    """A registered template by name, or one read from a ``.json``/``.yaml`` file path."""
    registry = _registry()
    if name in registry:
        return Template.from_dict(dict(registry[name]), name=name)
    path = Path(name)
    if path.suffix in (".json", ".yaml", ".yml") and path.is_file():
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise InputError("a template file must hold a mapping of fields", path=str(path))
        return Template.from_dict(data, name=data.get("name", path.stem))
    raise ConfigError(f"unknown template {name!r}; choose one of {sorted(registry)} or a template file")


def save_template(template: Template, out_dir: str | Path) -> Path:
    """Write ``qihuang_template.json`` into ``out_dir`` (atomically); returns its path."""
    from qihuang.fileio import atomic_write_json

    return atomic_write_json(Path(out_dir) / TEMPLATE_FILE, template.to_dict())


def load_template(directory: str | Path) -> Template | None:
    """The template saved in ``directory``, or ``None`` if it has none."""
    path = Path(directory) / TEMPLATE_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InputError(f"invalid JSON: {exc}", path=str(path), line=exc.lineno) from exc
    if not isinstance(data, dict):
        raise InputError("expected a JSON object", path=str(path))
    return Template.from_dict(data)
