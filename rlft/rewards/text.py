"""Text-overlap rewards: sentence BLEU (sacrebleu) and exact match. Each reads the ``reference`` column,
a string or a list of strings (several references)."""

from __future__ import annotations

import re
import string

from .base import register


def _refs(ref) -> list[str]:
    return [ref] if isinstance(ref, str) else list(ref)


@register("bleu")
def bleu(prompts, completions, reference, **_):
    """sacrebleu.sentence_bleu(completion, refs).score / 100, with sacrebleu's defaults. Range [0, 1]."""
    import sacrebleu

    return [sacrebleu.sentence_bleu(c, _refs(r)).score / 100 for c, r in zip(completions, reference)]


def _normalise(s: str) -> str:
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


@register("exact_match")
def exact_match(prompts, completions, reference, normalize: bool = True, **_):
    """1.0 if the completion equals a reference (after SQuAD normalisation when ``normalize``), else 0.0."""
    norm = _normalise if normalize else (lambda s: s.strip())
    return [float(any(norm(c) == norm(x) for x in _refs(r))) for c, r in zip(completions, reference)]
