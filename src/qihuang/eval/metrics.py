"""Text metrics for evaluation: value matching, BLEU-4, ROUGE-1/2/L (jieba, :mod:`qihuang.segment`), length
statistics.

Scores that are rates are reported in percent (0-100), like BLEU.
"""

from __future__ import annotations

import re
import unicodedata
import statistics
from collections.abc import Iterable, Sequence
from functools import lru_cache

from qihuang.kb.normalize import normalize_loose
from qihuang.segment import segment

BLEU_TOKENIZERS = ("jieba", "zh")


def norm(text: str) -> str:
    """Text for value matching: full/half width folded (NFKC), simplified, lower case,
    punctuation, symbols and spaces removed."""
    return normalize_loose(text or "")


def hits(answer: str, values: Iterable[str]) -> list[bool]:
    """For each value, whether its normalized form occurs in the normalized answer."""
    a = norm(answer)
    return [bool(v) and v in a for v in (norm(x) for x in values)]


def mean(values: Iterable[float | int | bool | None]) -> float | None:
    """Arithmetic mean of the non-None values (None when there are none)."""
    xs = [float(v) for v in values if v is not None]
    return sum(xs) / len(xs) if xs else None


def pct(values: Iterable[float | int | bool | None]) -> float | None:
    """Mean as a percentage, rounded to 2 decimals."""
    m = mean(values)
    return None if m is None else round(100.0 * m, 2)


# ---------------------------------------------------------------- BLEU / ROUGE


@lru_cache(maxsize=2)
def _bleu(tokenize: str, sentence: bool):
    from sacrebleu.metrics import BLEU

    if tokenize not in BLEU_TOKENIZERS:
        raise ValueError(f"BLEU tokenizer must be one of {BLEU_TOKENIZERS}, got {tokenize!r}")
    return BLEU(tokenize="none" if tokenize == "jieba" else "zh", effective_order=sentence)


def _bleu_text(text: str, tokenize: str) -> str:
    return " ".join(segment(text)) if tokenize == "jieba" else (text or "").strip()


def sentence_scores(prediction: str, reference: str, tokenize: str = "jieba") -> dict[str, float]:
    """Sentence BLEU-4 and ROUGE-1/2/L F1 (all 0-100) of one prediction against one reference."""
    bleu = _bleu(tokenize, True).sentence_score(_bleu_text(prediction, tokenize),
                                                [_bleu_text(reference, tokenize)]).score
    out = {"bleu4": round(bleu, 4)}
    out.update(rouge(prediction, reference))
    return out


def rouge(prediction: str, reference: str) -> dict[str, float]:
    """ROUGE-1/2/L F1 (0-100) over jieba tokens, computed with ``rouge-chinese``."""
    from rouge_chinese import Rouge

    hyp, ref = segment(prediction), segment(reference)
    if not hyp or not ref:
        return {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    scores = Rouge().get_scores(" ".join(hyp), " ".join(ref))[0]
    return {"rouge1": round(100 * scores["rouge-1"]["f"], 4),
            "rouge2": round(100 * scores["rouge-2"]["f"], 4),
            "rougeL": round(100 * scores["rouge-l"]["f"], 4)}


def corpus_bleu(predictions: Sequence[str], references: Sequence[str], tokenize: str = "jieba") -> float:
    """Corpus BLEU-4 (0-100) with sacrebleu, on jieba tokens or sacrebleu's ``zh`` tokenizer."""
    if not predictions:
        return 0.0
    hyps = [_bleu_text(p, tokenize) for p in predictions]
    refs = [_bleu_text(r, tokenize) for r in references]
    return round(_bleu(tokenize, False).corpus_score(hyps, [refs]).score, 4)


def text_overlap_scores(rows: Sequence[dict], tokenize: str = "jieba") -> dict[str, float]:
    """Corpus BLEU-4 plus the means of the per-row sentence scores, for rows with a reference."""
    scored = [r for r in rows if r.get("reference")]
    if not scored:
        return {}
    from qihuang.eval.base import scored_text

    out = {"bleu4": corpus_bleu([scored_text(r) for r in scored], [r["reference"] for r in scored], tokenize)}
    for key in ("bleu4", "rouge1", "rouge2", "rougeL"):
        value = mean(r.get(key) for r in scored)
        if value is not None:
            out[key if key != "bleu4" else "bleu4_sentence"] = round(value, 4)
    return out


# ---------------------------------------------------------------- lengths


def length_stats(texts: Sequence[str], prefix: str) -> dict[str, float]:
    """Mean, median and max length (characters, whitespace excluded) of ``texts``."""
    lengths = [len("".join((t or "").split())) for t in texts]
    if not lengths:
        return {}
    return {f"{prefix}_len_mean": round(statistics.fmean(lengths), 2),
            f"{prefix}_len_median": float(statistics.median(lengths)),
            f"{prefix}_len_max": float(max(lengths))}


# ---------------------------------------------------------------- answer letters

_OPEN, _CLOSE = r"[\(（【\[「]?", r"[\)）】\]」]?"


@lru_cache(maxsize=16)
def _choice_patterns(letters: str) -> list[re.Pattern]:
    one = f"[{letters}](?![A-Za-z])"
    many = f"{one}(?:\\s*[、,，和及与/]?\\s*{one})*"
    return [re.compile(p) for p in (
        # 答案是B / 正确答案为：C / 答案应选 D / 最佳答案（B）
        rf"(?:答案|选项|答)\s*(?:应该|应当|应|就|即)?\s*(?:是|为|选|选择)?\s*[:：]?\s*{_OPEN}\s*({many})",
        # 选B / 故选C / 应选择 D
        rf"(?:选择|应选|故选|可选|选)\s*[:：]?\s*{_OPEN}\s*({many})",
        # B选项正确 / B是正确的 / B项符合
        rf"(?<![A-Za-z])({one})\s*{_CLOSE}\s*(?:选项|项)?\s*(?:是|为)?\s*(?:正确|对|符合|最佳|最合适)",
        # the reply starts with the letter: "B", "B. xxx", "(B) xxx"
        rf"^\s*{_OPEN}\s*({many})\s*{_CLOSE}(?:\s|[.、:：．。，,]|$)",
        # a bracketed letter anywhere: "(B)" / "【C】"
        rf"[\(（【\[「]\s*({one})\s*[\)）】\]」]",
    )]


def extract_choice(text: str, options: dict[str, str]) -> str | None:
    """The option letter(s) a free-text answer picks, or None when it cannot be told.

    Tries explicit phrasings first (答案是B, 正确答案为：C, 故选D, B选项正确, a leading letter,
    a bracketed letter), then an answer that quotes exactly one option's text, then a single
    distinct stand-alone letter. Several letters (答案：AC) come back sorted ("AC").
    """
    letters = "".join(options)
    t = unicodedata.normalize("NFKC", text or "").upper()
    for pattern in _choice_patterns(letters):
        m = pattern.search(t)
        if m:
            picked = sorted(set(re.findall(f"[{letters}]", m.group(1))))
            return "".join(picked)
    nt = norm(text)
    quoted = [k for k, v in options.items() if norm(v) and norm(v) in nt]
    if len(quoted) == 1 and not any(norm(options[quoted[0]]) in norm(v) for k, v in options.items() if k != quoted[0]):
        return quoted[0]
    standalone = set(re.findall(f"(?<![A-Za-z])([{letters}])(?![A-Za-z])", t))
    return standalone.pop() if len(standalone) == 1 else None
