"""Text rewards against the reference implementations (sacrebleu, rouge-score) called directly, on a table of
awkward sentence pairs, plus hand-derived values for exact match and token F1."""

import random
import threading

import pytest
import sacrebleu
from rouge_score.rouge_scorer import RougeScorer
from sacrebleu.metrics import BLEU, CHRF

from rlft.rewards import text
from rlft.rewards.text import (
    bleu,
    chrf,
    corpus_bleu,
    corpus_chrf,
    corpus_rouge,
    corpus_ter,
    exact_match,
    rouge,
    ter,
    token_f1,
)

_rng = random.Random(0)
_WORDS = "the a cat dog sat on mat house big small red runs quickly slowly , . ! ? and of to in".split()
LONG_A = " ".join(_rng.choice(_WORDS) for _ in range(600))
LONG_B = " ".join(_rng.choice(_WORDS) for _ in range(550))

# (completion, reference or list of references)
CASES = [
    ("the cat sat on the mat", "the cat is on the mat"),
    ("", "the cat is on the mat"),                                   # empty completion
    ("the cat is on the mat", ""),                                   # empty reference
    ("", ""),
    ("   \t  ", "  "),                                               # whitespace only
    ("!!! ??? ...", "..."),                                          # punctuation only
    ("Ça va très bien, merci !", "Ça va bien, merci."),              # Latin with accents
    ("Cafe\u0301 au lait", "Café au lait"),                          # combining accent vs precomposed
    ("I \u2764\ufe0f NY \U0001f5fd", "I love NY"),                   # emoji
    ("我喜欢吃苹果。", "我爱吃苹果。"),                                   # CJK
    ("東京は日本の首都です", ["東京は日本の首都である", "日本の首都は東京です"]),
    ("مرحبا بالعالم", "مرحبا يا عالم"),                                # Arabic
    ("zero\u200bwidth space", "zero width space"),
    ("line one\nline two\n", "line one\nline 2"),                    # newlines
    ("First sentence.\nSecond one here.", "First sentence here.\nAnd a second one."),
    ("The end .", "The end."),                                       # tokenised period
    ("HELLO World", "hello world"),
    ("3.14 is about pi; 1,000,000 is big", "pi is 3.14 and 1,000,000 is large"),
    ("the cat", ["the cat is on the mat", "there is a cat on the mat", "a cat"]),  # several references
    ("a b c d e f", ["x y z", "a b c d e f"]),
    ("running runners ran", ["the runner runs", "runs and running"]),
    ("the cat", ["the cat", None]),                                  # None inside a list is dropped
    (LONG_A, LONG_B),                                                # long text
    (LONG_A, [LONG_B, LONG_A[:1000]]),
]


def _refs(r):
    return [r] if isinstance(r, str) else [x for x in r if x is not None]


def _close(a, b):
    assert a == pytest.approx(b, abs=1e-9, rel=0), (a, b)


BLEU_OPTS = [{}, {"tokenize": "intl"}, {"tokenize": "zh"}, {"tokenize": "char"}, {"tokenize": "none"},
             {"smooth_method": "floor"}, {"smooth_method": "floor", "smooth_value": 0.3},
             {"smooth_method": "add-k"}, {"smooth_method": "none"}, {"lowercase": True}]


@pytest.mark.parametrize("opts", BLEU_OPTS, ids=str)
def test_bleu_equals_sacrebleu(opts):
    comps, refs = [c for c, _ in CASES], [r for _, r in CASES]
    got = bleu(["p"] * len(CASES), comps, refs, **opts)
    for c, r, g in zip(comps, refs, got):
        _close(g, sacrebleu.sentence_bleu(c, _refs(r), **opts).score / 100)


def test_bleu_ja_mecab_where_installed():
    pytest.importorskip("MeCab", reason="ja-mecab needs sacrebleu[ja] (mecab-python3, ipadic), not installed")
    c, r = "東京は日本の首都です", "東京は日本の首都である"
    want = sacrebleu.sentence_bleu(c, [r], tokenize="ja-mecab").score / 100
    _close(bleu([""], [c], [r], tokenize="ja-mecab")[0], want)


CHRF_OPTS = [{}, {"word_order": 2}, {"whitespace": True}, {"eps_smoothing": True}, {"beta": 1, "char_order": 4},
             {"word_order": 2, "eps_smoothing": True}]


@pytest.mark.parametrize("opts", CHRF_OPTS, ids=str)
def test_chrf_equals_sacrebleu(opts):
    comps, refs = [c for c, _ in CASES], [r for _, r in CASES]
    got = chrf(["p"] * len(CASES), comps, refs, **opts)
    ref_opts = {k: v for k, v in opts.items() if k != "whitespace"}
    for c, r, g in zip(comps, refs, got):
        want = sacrebleu.sentence_chrf(c, _refs(r), remove_whitespace=not opts.get("whitespace", False), **ref_opts)
        _close(g, want.score / 100)


def test_chrf_lowercase_equals_sacrebleu_class():
    for c, r in CASES[:12]:
        _close(chrf([""], [c], [r], lowercase=True)[0], CHRF(lowercase=True).sentence_score(c, _refs(r)).score / 100)


TER_OPTS = [{}, {"normalized": True}, {"case_sensitive": True}, {"no_punct": True},
            {"normalized": True, "asian_support": True}]


@pytest.mark.parametrize("opts", TER_OPTS, ids=str)
def test_ter_equals_sacrebleu(opts):
    cases = [x for x in CASES if len(x[0]) < 1000]  # TER's shift search is slow on long text; covered below
    comps, refs = [c for c, _ in cases], [r for _, r in cases]
    got = ter(["p"] * len(cases), comps, refs, **opts)
    for c, r, g in zip(comps, refs, got):
        _close(g, 1 - sacrebleu.sentence_ter(c, _refs(r), **opts).score / 100)


def test_ter_long_and_below_zero():
    c, r = LONG_A[:150], LONG_B[:150]
    _close(ter([""], [c], [r])[0], 1 - sacrebleu.sentence_ter(c, [r]).score / 100)
    # 5 words against a 1-word reference: 4 insertions + 1 substitution... TER = 5/1 = 500 -> 1 - 5 = -4
    assert ter([""], ["a b c d e"], ["x"])[0] == pytest.approx(-4.0)
    assert ter([""], ["same words"], ["same words"])[0] == 1.0
    assert ter([""], ["non empty"], [""])[0] == 0.0  # sacrebleu: empty reference, non-empty hypothesis -> 100


@pytest.mark.parametrize("kind", ["rouge1", "rouge2", "rougeL", "rougeLsum"])
@pytest.mark.parametrize("stem", [False, True])
def test_rouge_equals_rouge_score(kind, stem):
    comps, refs = [c for c, _ in CASES], [r for _, r in CASES]
    got = rouge(["p"] * len(CASES), comps, refs, kind=kind, use_stemmer=stem)
    scorer = RougeScorer([kind], use_stemmer=stem)
    for c, r, g in zip(comps, refs, got):
        _close(g, scorer.score_multi(_refs(r), c)[kind].fmeasure)


def test_rouge_several_references_take_the_best():
    s = RougeScorer(["rouge1"])
    best = max(s.score(r, "a b c")["rouge1"].fmeasure for r in ["a", "a b c d"])
    assert rouge([""], ["a b c"], [["a", "a b c d"]], kind="rouge1")[0] == best == pytest.approx(2 * 0.75 / 1.75)


def test_cached_metrics_keep_no_state_between_calls():
    # interleave option sets and reference counts; each answer equals a freshly built metric
    order = [(c, r, o) for o in ({}, {"tokenize": "char"}, {}) for c, r in CASES[:12]]
    random.Random(1).shuffle(order)
    for c, r, o in order:
        _close(bleu([""], [c], [r], **o)[0], BLEU(effective_order=True, **o).sentence_score(c, _refs(r)).score / 100)


def test_threads_share_cached_metrics_safely():
    comps, refs = [c for c, _ in CASES[:20]], [r for _, r in CASES[:20]]
    want = {"bleu": bleu([""] * 20, comps, refs), "chrf": chrf([""] * 20, comps, refs),
            "rouge": rouge([""] * 20, comps, refs, use_stemmer=True)}
    got, errors = [], []

    def work():
        try:
            for _ in range(3):
                got.append(bleu([""] * 20, comps, refs) == want["bleu"]
                           and chrf([""] * 20, comps, refs) == want["chrf"]
                           and rouge([""] * 20, comps, refs, use_stemmer=True) == want["rouge"])
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors and all(got) and len(got) == 12


# ------------------------------------------------------------------------------------------- exact match, F1

def test_exact_match_normalisation_options():
    c, r = ["The  Cat!"], ["cat"]
    assert exact_match([""], c, r) == [1.0]                           # SQuAD: lower, punct, articles, spaces
    assert exact_match([""], c, r, normalize=False) == [0.0]
    assert exact_match([""], ["cat "], r, normalize=False) == [1.0]   # ends are always stripped
    assert exact_match([""], c, r, lowercase=False) == [0.0]          # "Cat" != "cat"
    assert exact_match([""], ["Cat"], ["cat"], normalize=False, lowercase=True) == [1.0]
    assert exact_match([""], ["the cat"], ["cat"], articles=False) == [0.0]
    assert exact_match([""], ["a  b"], ["a b"], normalize=False, whitespace=True) == [1.0]
    assert exact_match([""], ["cat."], ["cat"], punctuation=False) == [0.0]
    assert exact_match([""], ["dog", "x"], [["cat", "dog"], "y"]) == [1.0, 0.0]  # several references
    assert exact_match([""], [""], [""]) == [1.0]


def test_token_f1_by_hand():
    # pred "the cat sat" -> [cat, sat]; gold "a cat sat down" -> [cat, sat, down]: 2 common,
    # P = 2/2, R = 2/3, F1 = 2 * 1 * 2/3 / (1 + 2/3) = 0.8
    assert token_f1([""], ["the cat sat"], ["a cat sat down"]) == [pytest.approx(0.8)]
    # repeated tokens count with multiplicity: pred [x, x, y] vs gold [x, y, y]: common x1 y1 = 2 -> P=R=2/3
    assert token_f1([""], ["x x y"], ["x y y"]) == [pytest.approx(2 / 3)]
    assert token_f1([""], ["x"], [["y", "x z"]]) == [pytest.approx(2 * 1 * 0.5 / 1.5)]  # best reference
    assert token_f1([""], ["the"], ["a"]) == [1.0]   # both normalise to nothing: SQuAD v2 says they agree
    assert token_f1([""], [""], ["cat"]) == [0.0]
    assert token_f1([""], ["Cat"], ["cat"], lowercase=False) == [0.0]


# ------------------------------------------------------------------------------------------- missing references

@pytest.mark.parametrize("fn", [bleu, chrf, ter, rouge, exact_match, token_f1])
def test_missing_reference_names_the_row(fn):
    with pytest.raises(ValueError, match=r"row 1 has no reference"):
        fn(["", "", ""], ["a", "b", "c"], ["a", None, "c"])
    with pytest.raises(ValueError, match=r"row 0 has no reference"):
        fn([""], ["a"], [[]])
    with pytest.raises(ValueError, match=r"row 0 has no reference"):
        fn([""], ["a"], [[None]])
    out = fn(["", ""], ["a", "b"], ["a", None], on_missing="none")
    assert out[1] is None and out[0] is not None
    with pytest.raises(ValueError, match="2 values for 3 completions"):
        fn([""] * 3, ["a", "b", "c"], ["a", "b"])
    with pytest.raises(ValueError, match="row 0"):
        fn([""], ["a"], [3])


def test_bad_options_are_clear():
    with pytest.raises(ValueError, match="tokenize must be one of"):
        bleu([""], ["a"], ["a"], tokenize="13b")
    with pytest.raises(ValueError, match="smooth_method"):
        bleu([""], ["a"], ["a"], smooth_method="exp2")
    with pytest.raises(ValueError, match="kind must be one of"):
        rouge([""], ["a"], ["a"], kind="rougeX")


# ------------------------------------------------------------------------------------------- corpus metrics

HYPS = [c for c, r in CASES if isinstance(r, str)]
REFS1 = [r for c, r in CASES if isinstance(r, str)]


def test_corpus_single_reference_equals_sacrebleu():
    _close(corpus_bleu(HYPS, REFS1), sacrebleu.corpus_bleu(HYPS, [REFS1]).score / 100)
    _close(corpus_bleu(HYPS, REFS1, tokenize="zh"), sacrebleu.corpus_bleu(HYPS, [REFS1], tokenize="zh").score / 100)
    _close(corpus_chrf(HYPS, REFS1), sacrebleu.corpus_chrf(HYPS, [REFS1]).score / 100)
    _close(corpus_chrf(HYPS, REFS1, word_order=2), sacrebleu.corpus_chrf(HYPS, [REFS1], word_order=2).score / 100)
    short = [(h, r) for h, r in zip(HYPS, REFS1) if len(h) < 1000]
    _close(corpus_ter([h for h, _ in short], [r for _, r in short]),
           1 - sacrebleu.corpus_ter([h for h, _ in short], [[r for _, r in short]]).score / 100)
    s = RougeScorer(["rougeL"])
    _close(corpus_rouge(HYPS, REFS1), sum(s.score(r, h)["rougeL"].fmeasure for h, r in zip(HYPS, REFS1)) / len(HYPS))


def test_corpus_bleu_is_not_the_mean_of_sentence_bleu():
    h, r = ["the cat sat on the mat", "a dog"], ["the cat is on the mat", "a dog barked loudly"]
    mean = sum(bleu(["", ""], h, r)) / 2
    assert abs(corpus_bleu(h, r) - mean) > 0.01
    _close(corpus_bleu(h, r), sacrebleu.corpus_bleu(h, [r]).score / 100)


def test_corpus_variable_number_of_references():
    hyps = ["the cat sat on the mat", "a dog barked", "hello world"]
    refs = [["the cat is on the mat", "there is a cat on the mat"], "a dog barks", ["hello there world", "hi", "hey"]]
    streams = [["the cat is on the mat", "a dog barks", "hello there world"],
               ["there is a cat on the mat", None, "hi"], [None, None, "hey"]]
    _close(corpus_bleu(hyps, refs), sacrebleu.corpus_bleu(hyps, streams).score / 100)
    _close(corpus_chrf(hyps, refs), sacrebleu.corpus_chrf(hyps, streams).score / 100)
    _close(corpus_ter(hyps, refs), 1 - sacrebleu.corpus_ter(hyps, streams).score / 100)
    # independent check of the padding: repeating a row's reference changes none of the three metrics
    # (same clipped counts, same closest length, same best TER and mean reference length)
    same = [refs[0], [refs[1], refs[1], refs[1]], refs[2]]
    for f in (corpus_bleu, corpus_chrf, corpus_ter):
        _close(f(hyps, refs), f(hyps, same))
    s = RougeScorer(["rouge2"])
    want = sum(s.score_multi(r if isinstance(r, list) else [r], h)["rouge2"].fmeasure for h, r in zip(hyps, refs)) / 3
    _close(corpus_rouge(hyps, refs, kind="rouge2"), want)


def test_corpus_errors():
    with pytest.raises(ValueError, match="empty corpus"):
        corpus_bleu([], [])
    with pytest.raises(ValueError, match="2 references for 1 hypotheses"):
        corpus_chrf(["a"], ["a", "b"])
    with pytest.raises(ValueError, match="row 1 has no reference"):
        corpus_ter(["a", "b"], ["a", None])
    with pytest.raises(ValueError, match="hypothesis 0"):
        corpus_rouge([None], ["a"])


def test_registered_names():
    from rlft.rewards import REGISTRY
    for name in ("bleu", "chrf", "ter", "rouge", "exact_match", "token_f1"):
        assert REGISTRY[name] is getattr(text, name)


def test_fuzz_random_unicode_against_the_reference_implementations():
    # characters that trip tokenizers: odd whitespace, punctuation, digits, accents, CJK, Hangul, Arabic, emoji
    pool = list("abc xyz ABC 0123 .,;:!?'\"-()[]{}<>/\\&%$#@*+=~|") + [
        " ", "  ", "\t", "\n", "\r", "\x0b", "\x0c", "\u00a0", "\u3000", "\u200b", "e\u0301", "é", "ß", "İ",
        "中", "文", "。", "，", "日本", "한국어", "مرحبا", "\U0001f600", "\u2764\ufe0f", "½", "Ⅷ", "ﬁ"]
    rng = random.Random(1234)

    def s():
        return "".join(rng.choice(pool) for _ in range(rng.randint(0, 25)))

    comps = [s() for _ in range(150)]
    refs = [s() if rng.random() < 0.7 else [s() for _ in range(rng.randint(1, 3))] for _ in range(150)]
    n = len(comps)
    pairs = list(zip(comps, refs))
    for opts in ({}, {"tokenize": "zh"}, {"tokenize": "intl"}, {"tokenize": "char"}):
        for (c, r), g in zip(pairs, bleu([""] * n, comps, refs, **opts)):
            _close(g, sacrebleu.sentence_bleu(c, _refs(r), **opts).score / 100)
    for (c, r), g in zip(pairs, chrf([""] * n, comps, refs, word_order=2)):
        _close(g, sacrebleu.sentence_chrf(c, _refs(r), word_order=2).score / 100)
    for (c, r), g in zip(pairs, ter([""] * n, comps, refs)):
        _close(g, 1 - sacrebleu.sentence_ter(c, _refs(r)).score / 100)
    for kind in ("rouge1", "rougeLsum"):
        scorer = RougeScorer([kind])
        for (c, r), g in zip(pairs, rouge([""] * n, comps, refs, kind=kind)):
            _close(g, scorer.score_multi(_refs(r), c)[kind].fmeasure)
    _close(corpus_bleu(comps, refs), sacrebleu.corpus_bleu(comps, text._streams(comps, refs, "t")).score / 100)
