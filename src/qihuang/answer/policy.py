"""What the Answerer does with what verification found, and when the KB has nothing.

* ``--on-unsupported``: ``flag`` keeps the text and marks the spans; ``drop`` removes the
  sentences or list items that carry a wrong_attribute or unsupported claim (an enumerated item
  alone when the sentence keeps a supported claim); ``regenerate`` asks the model once more with
  a constraining instruction, then drops what is still unsupported. Default: ``drop`` — a
  medical answer should not show a claim its own citations contradict (an adverse reaction
  offered as an indication), and a highlighted warning is easy to miss; ``regenerate`` costs a
  second generation and ends in ``drop`` anyway.
* ``--ungrounded``: when grounding found no facts, ``abstain`` answers with a short message
  (what the KB does not cover, when to see a doctor) without calling the model; ``answer``
  calls the model and puts a notice in front of its text (its KB names are marked unsupported
  but not dropped: the notice already says nothing backs them). Default: ``abstain`` with the
  embedded 135M model (it has no medical knowledge of its own), ``answer`` with any other.
* In an emergency, drug and dosage facts are not put in the prompt and sentences naming a drug
  are dropped (no self-treatment list in front of "call 120").
"""

from __future__ import annotations

import re
from pathlib import Path

from qihuang.answer.verify import BAD, Claim, Unit, VerifyConfig, has_text, load_config, split_units

POLICIES = ("flag", "drop", "regenerate")
DEFAULT_POLICY = "drop"
UNGROUNDED = ("answer", "abstain")
_ITEM_SEP = "、，,"
_ITEM_JOIN = ("和", "及", "或", "与", "以及")


def check_choice(value: str, choices: tuple[str, ...], what: str) -> str:
    from qihuang.errors import ConfigError

    if value not in choices:
        raise ConfigError(f"{what} must be one of {', '.join(choices)}, got {value!r}")
    return value


def is_embedded_default(model_name: str | None) -> bool:
    """Whether an engine's model is the embedded SmolLM2-135M (directly or as an adapter's base)."""
    from qihuang.models.load import DEFAULT_MODEL, DEFAULT_MODEL_DIRNAME, is_adapter_dir, read_meta

    name = str(model_name or DEFAULT_MODEL)
    if is_adapter_dir(name):
        name = str(read_meta(name).get("base_model", DEFAULT_MODEL))
    return name == DEFAULT_MODEL or Path(name).name == DEFAULT_MODEL_DIRNAME or DEFAULT_MODEL_DIRNAME in name


def default_ungrounded(engine) -> str:
    """``abstain`` for the embedded default model, ``answer`` for a user's model."""
    return "abstain" if is_embedded_default(engine.model_name) else "answer"


def abstain_message(names: list[str], config: VerifyConfig | None = None) -> str:
    """The abstention text; ``names`` are KB entities the question named (possibly none)."""
    m = (config or load_config()).messages
    what = m["abstain_what_entities"].format(names="、".join(names[:3])) if names else m["abstain_what_unknown"]
    return m["abstain"].format(what=what)


def _item_span(text: str, claim: Claim, unit: Unit) -> tuple[int, int]:
    """The enumerated item of ``claim`` with one separator next to it."""
    s, e = claim.start, claim.end
    if text.startswith("等", e):
        e += 1
    if e < unit.end and text[e] in _ITEM_SEP:
        return s, e + 1
    head = text[unit.start:s]
    for join in (*_ITEM_JOIN, *_ITEM_SEP):
        if head.endswith(join):
            return s - len(join), e
    return s, e


def drop_claims(text: str, bad: list[Claim], claims: list[Claim], config: VerifyConfig | None = None,
                whole_units: bool = False, tidy: bool = True) -> tuple[str, list[str]]:
    """``text`` without the sentences/list items (or enumerated items) carrying ``bad`` claims.

    An item alone is cut when its sentence keeps a claim that is not bad (and ``whole_units`` is
    off); a lead-in line whose items all went goes too. Returns the new text (``tidy``: runs of blank
    lines the cuts left closed up and the ends stripped; else the text around the cuts as it was)
    and what was cut."""
    if not bad:
        return text, []
    units = split_units(text, config)
    bad_keys = {(c.start, c.end) for c in bad}
    cuts: list[tuple[int, int]] = []
    gone_units: set[int] = set()
    for i, u in enumerate(units):
        inside = [c for c in claims if u.start <= c.start < u.end]
        worse = [c for c in inside if (c.start, c.end) in bad_keys]
        if not worse:
            continue
        keeps = [c for c in inside if (c.start, c.end) not in bad_keys and c.status not in BAD]
        if keeps and not whole_units:
            cuts += [_item_span(text, c, u) for c in worse]
        else:
            cuts.append((u.start, u.end))
            gone_units.add(i)
    for i, u in enumerate(units):  # a lead-in whose items were all cut
        items = [j for j, v in enumerate(units) if v.item and v.lead == i]
        if items and all(j in gone_units for j in items):
            cuts.append((u.start, u.end))
    return _apply_cuts(text, cuts, tidy)


def _apply_cuts(text: str, cuts: list[tuple[int, int]], tidy: bool = True) -> tuple[str, list[str]]:
    merged: list[list[int]] = []
    for s, e in sorted(cuts):
        if merged and s <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], e)
        else:
            merged.append([s, e])
    out, removed, pos = [], [], 0
    for s, e in merged:
        out.append(text[pos:s])
        removed.append(text[s:e].strip())
        pos = e
    out.append(text[pos:])
    new = re.sub(r"\n{3,}", "\n\n", "".join(out)).strip() if tidy else "".join(out)
    return new, [r for r in removed if r]


def withheld_claims(kb, text: str, claims: list[Claim], exclude: set[str],
                    config: VerifyConfig | None = None) -> list[Claim]:
    """What an emergency answer must not say: drugs (any drug-type mention not named by the question,
    rare or not) and values cited as drugs or dosages (self-treatment)."""
    config = config or load_config()
    out = [c for c in claims if c.status != "negated" and any(a in config.emergency_withheld for a in c.cited)]
    for m in kb.find_entities(text) if kb is not None else []:
        if m.type in config.emergency_withheld_types and m.name not in exclude:
            out.append(Claim(m.surface, m.name, m.start, m.end, "withheld", type=m.type))
    return out


def fallback_if_empty(text: str, config: VerifyConfig | None = None) -> str:
    """The text, or the all-dropped message when nothing is left of it."""
    return text if has_text(text) else (config or load_config()).messages["all_dropped"]
