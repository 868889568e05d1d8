"""Text-overlap rewards and corpus metrics: BLEU / chrF / TER (sacrebleu), ROUGE (rouge-score), exact match and
SQuAD token F1.

Every reward reads the ``reference`` column: per row a string or a list of strings (several references). A row
whose reference is ``None``, an empty list or a list of only ``None`` is an error naming the row (or, with
``on_missing: none``, a ``None`` reward: "does not apply"). An empty string is a legal reference, scored exactly as
sacrebleu / rouge-score score it (usually 0). ``None`` entries inside a list are dropped, as sacrebleu does.

The sentence rewards equal the reference implementations called directly, e.g.
``bleu == sacrebleu.sentence_bleu(completion, refs, **same_options).score / 100``; the metric objects are built
once per option set and reused (building ``BLEU(...)`` per call costs more than scoring a sentence).

The ``corpus_*`` functions are for evaluation: ``(hypotheses, references) -> float`` on the same scale as the
sentence reward of the same name (corpus BLEU is computed from corpus-level n-gram statistics, not as a mean of
sentence BLEUs).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence
from functools import lru_cache

from .base import register

ROUGE_KINDS = ("rouge1", "rouge2", "rougeL", "rougeLsum")


# ---------------------------------------------------------------------------------------------- references

def _refs(ref, row: int, reward: str) -> list[str] | None:
    """One row's references as a list of strings; ``None`` if the row has none."""
    if isinstance(ref, str):
        return [ref]
    if ref is None:
        return None
    try:
        items = list(ref)
    except TypeError:
        raise ValueError(f"reward {reward!r}: reference of row {row} is a {type(ref).__name__}; "
                         f"expected a string or a list of strings") from None
    out = []
    for x in items:
        if x is None:
            continue
        if not isinstance(x, str):
            raise ValueError(f"reward {reward!r}: reference of row {row} holds a {type(x).__name__}; "
                             f"expected strings")
        out.append(x)
    return out or None


def _rows(reward: str, completions: Sequence[str], reference, on_missing: str):
    """Yield (row, completion, refs or None), checking lengths and missing references once for all rewards."""
    if on_missing not in ("raise", "none"):
        raise ValueError(f"reward {reward!r}: on_missing must be 'raise' or 'none', got {on_missing!r}")
    if isinstance(reference, str) or len(reference) != len(completions):
        got = "a string" if isinstance(reference, str) else f"{len(reference)} values"
        raise ValueError(f"reward {reward!r}: the reference column has {got} for {len(completions)} completions")
    for i, (c, r) in enumerate(zip(completions, reference)):
        refs = _refs(r, i, reward)
        if refs is None and on_missing == "raise":
            raise ValueError(f"reward {reward!r}: row {i} has no reference ({r!r}). Fill it, or set "
                             f"on_missing: none to give such rows no {reward} reward")
        yield i, c, refs


def _streams(hypotheses: Sequence[str], references: Sequence, metric: str) -> list[list[str | None]]:
    """sacrebleu's reference *streams* from per-row references. Rows with fewer references are padded with
    ``None``, which sacrebleu drops row by row (an empty string would count as a reference)."""
    if len(hypotheses) == 0:
        raise ValueError(f"{metric}: empty corpus")
    if len(references) != len(hypotheses):
        raise ValueError(f"{metric}: {len(references)} references for {len(hypotheses)} hypotheses")
    rows = []
    for i, r in enumerate(references):
        refs = _refs(r, i, metric)
        if refs is None:
            raise ValueError(f"{metric}: row {i} has no reference ({r!r})")
        rows.append(refs)
    k = max(map(len, rows))
    return [[row[j] if j < len(row) else None for row in rows] for j in range(k)]


def _check_hyps(hypotheses: Sequence[str], metric: str) -> list[str]:
    for i, h in enumerate(hypotheses):
        if not isinstance(h, str):
            raise ValueError(f"{metric}: hypothesis {i} is a {type(h).__name__}, not a string")
    return list(hypotheses)


# ---------------------------------------------------------------------------------------------- sacrebleu

@lru_cache(maxsize=64)
def _bleu_metric(smooth_method: str, smooth_value, lowercase: bool, tokenize: str, effective_order: bool):
    from sacrebleu.metrics import BLEU

    if smooth_method not in BLEU.SMOOTH_DEFAULTS:
        raise ValueError(f"bleu: smooth_method must be one of {sorted(BLEU.SMOOTH_DEFAULTS)}, got {smooth_method!r}")
    if tokenize not in BLEU.TOKENIZERS:
        raise ValueError(f"bleu: tokenize must be one of {sorted(BLEU.TOKENIZERS)}, got {tokenize!r}")
    try:
        return BLEU(lowercase=lowercase, force=False, tokenize=tokenize, smooth_method=smooth_method,
                    smooth_value=smooth_value, effective_order=effective_order)
    except (ImportError, RuntimeError) as e:  # ja-mecab / ko-mecab / spm need extra packages
        raise ValueError(f"bleu: tokenizer {tokenize!r} is not usable here ({e}); for ja-mecab install "
                         f"'sacrebleu[ja]', for ko-mecab 'sacrebleu[ko]'") from e


@lru_cache(maxsize=64)
def _chrf_metric(char_order: int, word_order: int, beta: int, lowercase: bool, whitespace: bool,
                 eps_smoothing: bool):
    from sacrebleu.metrics import CHRF

    return CHRF(char_order=char_order, word_order=word_order, beta=beta, lowercase=lowercase,
                whitespace=whitespace, eps_smoothing=eps_smoothing)


@lru_cache(maxsize=64)
def _ter_metric(normalized: bool, no_punct: bool, asian_support: bool, case_sensitive: bool):
    from sacrebleu.metrics import TER

    return TER(normalized=normalized, no_punct=no_punct, asian_support=asian_support, case_sensitive=case_sensitive)


@register("bleu", strict_args=True)
def bleu(prompts, completions, reference, *, smooth_method: str = "exp", smooth_value: float | None = None,
         tokenize: str = "13a", lowercase: bool = False, effective_order: bool = True, on_missing: str = "raise",
         **_):
    """Sentence BLEU: ``sacrebleu.sentence_bleu(completion, refs, ...).score / 100``. Range [0, 1].

    ``tokenize``: ``13a`` (default), ``intl``, ``zh``, ``char``, ``none``, ``ja-mecab`` / ``ko-mecab`` (extra
    packages). ``smooth_method``: ``exp`` (default), ``floor``, ``add-k``, ``none``; ``smooth_value`` for the
    latter two. ``effective_order`` is on, as in ``sentence_bleu``.
    """
    m = _bleu_metric(smooth_method, smooth_value, lowercase, tokenize, effective_order)
    return [None if refs is None else m.sentence_score(c, refs).score / 100
            for _i, c, refs in _rows("bleu", completions, reference, on_missing)]


@register("chrf", strict_args=True)
def chrf(prompts, completions, reference, *, char_order: int = 6, word_order: int = 0, beta: int = 2,
         lowercase: bool = False, whitespace: bool = False, eps_smoothing: bool = False, on_missing: str = "raise",
         **_):
    """Sentence chrF: ``sacrebleu.sentence_chrf(completion, refs, ...).score / 100``; ``word_order: 2`` is chrF++.
    Range [0, 1]. ``whitespace: true`` keeps spaces in character n-grams (= ``remove_whitespace=False``)."""
    m = _chrf_metric(char_order, word_order, beta, lowercase, whitespace, eps_smoothing)
    return [None if refs is None else m.sentence_score(c, refs).score / 100
            for _i, c, refs in _rows("chrf", completions, reference, on_missing)]


@register("ter", strict_args=True)
def ter(prompts, completions, reference, *, normalized: bool = False, no_punct: bool = False,
        asian_support: bool = False, case_sensitive: bool = False, on_missing: str = "raise", **_):
    """``1 - sacrebleu.sentence_ter(completion, refs, ...).score / 100``: 1 for a perfect match, falling by
    1 / len(reference) per edit; unbounded below (a long completion against a short reference goes below 0).
    An empty reference with a non-empty completion scores 0 (sacrebleu's TER is then 100)."""
    m = _ter_metric(normalized, no_punct, asian_support, case_sensitive)
    return [None if refs is None else 1 - m.sentence_score(c, refs).score / 100
            for _i, c, refs in _rows("ter", completions, reference, on_missing)]


# ---------------------------------------------------------------------------------------------- rouge

@lru_cache(maxsize=16)
def _rouge_scorer(kind: str, use_stemmer: bool):
    from rouge_score.rouge_scorer import RougeScorer

    if kind not in ROUGE_KINDS:
        raise ValueError(f"rouge: kind must be one of {', '.join(ROUGE_KINDS)}, got {kind!r}")
    return RougeScorer([kind], use_stemmer=use_stemmer)


def _rouge_f(scorer, kind: str, completion: str, refs: list[str]) -> float:
    # rouge-score's score(target, prediction); several references: the best F (as RougeScorer.score_multi)
    return max(scorer.score(r, completion)[kind].fmeasure for r in refs)


@register("rouge", strict_args=True)
def rouge(prompts, completions, reference, *, kind: str = "rougeL", use_stemmer: bool = False,
          on_missing: str = "raise", **_):
    """ROUGE F-measure from ``rouge_score.rouge_scorer.RougeScorer([kind], use_stemmer=...)``; with several
    references the best. ``kind``: ``rouge1``, ``rouge2``, ``rougeL``, ``rougeLsum`` (sentences split on
    newlines). Range [0, 1]. rouge-score's tokenizer keeps only ASCII letters and digits: text in other scripts
    scores 0 -- use chrf or bleu (``tokenize: zh``) there."""
    scorer = _rouge_scorer(kind, bool(use_stemmer))
    return [None if refs is None else _rouge_f(scorer, kind, c, refs)
            for _i, c, refs in _rows("rouge", completions, reference, on_missing)]


# ---------------------------------------------------------------------------------------------- exact match, F1

_PUNCT = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.IGNORECASE)


def normalize_answer(s: str, lowercase: bool = True, punctuation: bool = True, articles: bool = True,
                     whitespace: bool = True) -> str:
    """SQuAD's answer normalisation, step by step: lower-case, drop ASCII punctuation, drop the articles
    a/an/the, collapse whitespace. With everything off it only strips the ends."""
    if lowercase:
        s = s.lower()
    if punctuation:
        s = "".join(ch for ch in s if ch not in _PUNCT)
    if articles:
        s = _ARTICLES.sub(" ", s)
    return " ".join(s.split()) if whitespace else s.strip()


def _norm_options(normalize: bool, lowercase, punctuation, articles, whitespace) -> dict:
    pick = lambda v: normalize if v is None else bool(v)  # noqa: E731
    return dict(lowercase=pick(lowercase), punctuation=pick(punctuation), articles=pick(articles),
                whitespace=pick(whitespace))


@register("exact_match", strict_args=True)
def exact_match(prompts, completions, reference, normalize: bool = True, *, lowercase: bool | None = None,
                punctuation: bool | None = None, articles: bool | None = None, whitespace: bool | None = None,
                on_missing: str = "raise", **_):
    """1.0 if the completion equals a reference after normalisation, else 0.0.

    ``normalize: true`` (default) is SQuAD's normalisation; each step can be set on its own (``lowercase``,
    ``punctuation``, ``articles``, ``whitespace``), the rest follow ``normalize``. Ends are always stripped.
    """
    opts = _norm_options(normalize, lowercase, punctuation, articles, whitespace)
    return [None if refs is None else float(any(normalize_answer(c, **opts) == normalize_answer(r, **opts)
                                                for r in refs))
            for _i, c, refs in _rows("exact_match", completions, reference, on_missing)]


def _f1(pred: list[str], gold: list[str]) -> float:
    if not pred or not gold:  # SQuAD v2: two empty answers agree
        return float(pred == gold)
    same = sum((Counter(pred) & Counter(gold)).values())
    if same == 0:
        return 0.0
    p, r = same / len(pred), same / len(gold)
    return 2 * p * r / (p + r)


@register("token_f1", strict_args=True)
def token_f1(prompts, completions, reference, normalize: bool = True, *, lowercase: bool | None = None,
             punctuation: bool | None = None, articles: bool | None = None, whitespace: bool | None = None,
             on_missing: str = "raise", **_):
    """SQuAD token F1 between the normalised completion and reference (split on whitespace), the best over
    references. Both empty: 1; one empty: 0 (SQuAD v2). Range [0, 1]."""
    opts = _norm_options(normalize, lowercase, punctuation, articles, whitespace)
    out = []
    for _i, c, refs in _rows("token_f1", completions, reference, on_missing):
        pred = normalize_answer(c, **opts).split()
        out.append(None if refs is None else max(_f1(pred, normalize_answer(r, **opts).split()) for r in refs))
    return out


# ---------------------------------------------------------------------------------------------- corpus metrics

def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str | Sequence[str]], *, smooth_method: str = "exp",
                smooth_value: float | None = None, tokenize: str = "13a", lowercase: bool = False,
                effective_order: bool = False) -> float:
    """``sacrebleu.corpus_bleu(hypotheses, streams, ...).score / 100``: n-gram statistics summed over the corpus,
    then one BLEU. ``references[i]`` is row i's reference or list of references (any number per row)."""
    streams = _streams(hypotheses, references, "corpus_bleu")
    m = _bleu_metric(smooth_method, smooth_value, lowercase, tokenize, effective_order)
    return m.corpus_score(_check_hyps(hypotheses, "corpus_bleu"), streams).score / 100


def corpus_chrf(hypotheses: Sequence[str], references: Sequence[str | Sequence[str]], *, char_order: int = 6,
                word_order: int = 0, beta: int = 2, lowercase: bool = False, whitespace: bool = False,
                eps_smoothing: bool = False) -> float:
    """``sacrebleu.corpus_chrf(hypotheses, streams, ...).score / 100`` (character statistics summed over the
    corpus); ``word_order=2`` is chrF++."""
    streams = _streams(hypotheses, references, "corpus_chrf")
    m = _chrf_metric(char_order, word_order, beta, lowercase, whitespace, eps_smoothing)
    return m.corpus_score(_check_hyps(hypotheses, "corpus_chrf"), streams).score / 100


def corpus_ter(hypotheses: Sequence[str], references: Sequence[str | Sequence[str]], *, normalized: bool = False,
               no_punct: bool = False, asian_support: bool = False, case_sensitive: bool = False) -> float:
    """``1 - sacrebleu.corpus_ter(hypotheses, streams, ...).score / 100`` -- the same scale as the ``ter``
    reward (higher is better); corpus TER itself is ``100 * (1 - value)``: total edits / total reference words."""
    streams = _streams(hypotheses, references, "corpus_ter")
    m = _ter_metric(normalized, no_punct, asian_support, case_sensitive)
    return 1 - m.corpus_score(_check_hyps(hypotheses, "corpus_ter"), streams).score / 100


def corpus_rouge(hypotheses: Sequence[str], references: Sequence[str | Sequence[str]], *, kind: str = "rougeL",
                 use_stemmer: bool = False) -> float:
    """Mean over the corpus of rouge-score's F-measure (the best reference per row), as ROUGE is usually
    reported. rouge-score's ``BootstrapAggregator`` mid value is a resampled estimate of this same mean."""
    streams = _streams(hypotheses, references, "corpus_rouge")  # validates; rows rebuilt below
    scorer = _rouge_scorer(kind, bool(use_stemmer))
    hyps = _check_hyps(hypotheses, "corpus_rouge")
    rows = [[s[i] for s in streams if s[i] is not None] for i in range(len(hyps))]
    return sum(_rouge_f(scorer, kind, h, refs) for h, refs in zip(hyps, rows)) / len(hyps)
