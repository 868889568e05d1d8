"""Shape and constraint rewards; every expected value is worked out by hand in the comment beside it."""

import pytest

from rlft.rewards import Reward, check_columns
from rlft.rewards.shape import distinct, json_valid, keywords, length, novelty, overlong, regex, repetition


def words(k):
    return " ".join(["w"] * k)


def test_length_range():
    got = length([""] * 5, [words(15), words(25), words(5), words(60), words(10)], min_length=10, max_length=20)
    # inside -> 0; 25: d=5, s=20 -> -0.25; 5: d=5, s=10 -> -0.5; 60: d=40 -> clipped -1; 10 is inside
    assert got == [0.0, -0.25, -0.5, -1.0, 0.0]


def test_length_target_scale_units():
    assert length([""], [words(12)], target=10) == [pytest.approx(-0.2)]       # d=2, s=10
    assert length([""], [words(12)], target=10, scale=4) == [-0.5]             # d=2, s=4
    assert length([""], [words(3)], max_length=0) == [-1.0]                    # d=3, s=max(1, 0)=1 -> clipped
    assert length([""], ["abcdef"], max_length=4, unit="chars") == [-0.5]      # d=2, s=4
    assert length([""], ["x"], min_length=4, unit="tokens", completion_ids=[[1, 2]]) == [-0.5]  # 2 tokens: d=2, s=4
    with pytest.raises(ValueError, match="needs completion_ids"):
        length([""], ["x"], target=3, unit="tokens")
    with pytest.raises(ValueError, match="not both"):
        length([""], ["x"], target=3, max_length=4)
    with pytest.raises(ValueError, match="unit must be"):
        length([""], ["x"], target=3, unit="lines")


def test_overlong_dapo():
    ids = [[0] * k for k in (10, 16, 17, 18, 20, 21)]
    # L_max=20, L_cache=4: ramp starts after 16; 17 -> (16-17)/4 = -0.25; 18 -> -0.5; 20 -> -1; 21 -> -1
    assert overlong([""] * 6, [""] * 6, ids, max_length=20, cache_length=4) == [0.0, 0.0, -0.25, -0.5, -1.0, -1.0]
    with pytest.raises(ValueError, match="cache_length"):
        overlong([""], [""], [[0]], max_length=4, cache_length=5)


def test_repetition():
    # "a b a b a b", n=2: bigrams ab ba ab ba ab -> 5 total, 2 distinct -> -(1 - 2/5) = -0.6
    # "a b c d", n=2: 3 distinct of 3 -> 0; "a", n=2: no bigram -> 0
    assert repetition([""] * 3, ["a b a b a b", "a b c d", "a"], n=2) == [pytest.approx(-0.6), 0.0, 0.0]
    # tokens [1,1,1,1] n=1: 4 unigrams, 1 distinct -> -(1 - 1/4) = -0.75
    assert repetition([""], ["x"], completion_ids=[[1, 1, 1, 1]], n=1, unit="tokens") == [-0.75]


def test_distinct_groups_by_prompt_or_size():
    prompts = ["p", "p", "q", "q"]
    comps = ["a b c", "a b d", "x y", "x y"]
    # group p: bigrams ab bc ab bd -> 3 distinct / 4 = 0.75; group q: xy xy -> 1/2
    assert distinct(prompts, comps, n=2) == [0.75, 0.75, 0.5, 0.5]
    # group_size=4: all 6 bigrams (ab bc ab bd xy xy), distinct {ab bc bd xy} = 4 -> 4/6
    assert distinct(prompts, comps, n=2, group_size=4) == [pytest.approx(4 / 6)] * 4
    # equal prompts that are not neighbours make separate groups
    assert distinct(["p", "q", "p"], ["a a", "b b", "a a"], n=1) == [0.5, 0.5, 0.5]
    with pytest.raises(ValueError, match="does not divide"):
        distinct(prompts, comps, group_size=3)


def test_novelty_per_sample():
    # group: "a b c" {ab, bc}, "a b d" {ab, bd}: each has one bigram the other lacks -> 1/2, 1/2
    # group q: identical completions -> nothing new -> 0, 0; "z" alone: no bigram -> 0
    got = novelty(["p", "p", "q", "q", "r"], ["a b c", "a b d", "x y", "x y", "z"], n=2)
    assert got == [0.5, 0.5, 0.0, 0.0, 0.0]
    # a lone sample's n-grams are all new: "a b a" bigrams ab, ba -> 2/2
    assert novelty(["p"], ["a b a"], n=2) == [1.0]


def test_keywords():
    c = ["The Cat sat on the mat.", "category error", "a dog"]
    # required [cat, mat]: row 0 has both -> 1; row 1 "category" is not the whole word cat -> 0; row 2 -> 0
    assert keywords([""] * 3, c, required=["cat", "mat"]) == [1.0, 0.0, 0.0]
    assert keywords([""] * 3, c, required=["cat", "mat"], whole_word=False) == [1.0, 0.5, 0.0]  # "cat" in category
    assert keywords([""] * 3, c, required=["cat"], case_sensitive=True) == [0.0, 0.0, 0.0]
    # forbidden [dog, error]: row 1 has 1 of 2 -> -0.5; row 2 -> -0.5; both lists: row 0 1 - 0 = 1
    assert keywords([""] * 3, c, forbidden=["dog", "error"]) == [0.0, -0.5, -0.5]
    assert keywords([""] * 3, c, required=["mat"], forbidden=["dog", "error"]) == [1.0, -0.5, -0.5]
    # per-row keywords from a column: row 0 needs "sat" (found), row 1 none -> None, row 2 ["dog", "cat"] -> 1/2
    got = keywords([""] * 3, c, required_column="must", must=[["sat"], None, ["dog", "cat"]])
    assert got == [1.0, None, 0.5]
    assert keywords([""], ["C++ is fast"], required=["C++"]) == [1.0]  # punctuation at the keyword's edge
    assert keywords([""], ["no keywords"]) == [None]


def test_keywords_column_is_checked_at_start_up():
    r = Reward("kw", keywords, args={"required_column": "must"})
    check_columns([r], ["prompt", "must"])
    with pytest.raises(ValueError, match="'kw' .*needs 'must'"):
        check_columns([r], ["prompt"])


def test_regex():
    pat = r"<think>.*?</think>\s*<answer>.*?</answer>"
    c = ["<think>a\nb</think>\n<answer>4</answer>\n", "<answer>4</answer>", "x <think></think><answer></answer>"]
    assert regex([""] * 3, c, pattern=pat) == [1.0, 0.0, 0.0]
    assert regex([""] * 3, c, pattern=pat, mode="search") == [1.0, 0.0, 1.0]
    assert regex([""], ["<THINK>x</THINK><ANSWER>y</ANSWER>"], pattern=pat, ignore_case=True) == [1.0]
    assert regex([""], ["a\nb"], pattern="a.b", dotall=False) == [0.0]
    assert regex([""], [" ab "], pattern="ab", strip=False) == [0.0]
    with pytest.raises(ValueError, match="bad pattern"):
        regex([""], ["x"], pattern="(")
    with pytest.raises(ValueError, match="needs 'pattern'"):
        check_columns([Reward("fmt", regex)], ["prompt"])


def test_json_valid():
    c = ['{"a": 1, "b": [2]}', "[1, 2]", "{a: 1}", '  "text"  ', "", 'Here:\n```json\n{"a": 1}\n```\nDone.']
    assert json_valid([""] * 6, c) == [1.0, 1.0, 0.0, 1.0, 0.0, 0.0]
    assert json_valid([""] * 6, c, extract=True) == [1.0, 1.0, 0.0, 1.0, 0.0, 1.0]
    assert json_valid([""] * 6, c, require_object=True) == [1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    assert json_valid([""] * 2, c[:2], keys=["a", "b"]) == [1.0, 0.0]
    assert json_valid([""], ['{"a": 1}'], keys=["b"]) == [0.0]
    assert json_valid([""], ["[" * 100000]) == [0.0]  # deep nesting: RecursionError is a failure, not a crash


def test_strict_args_catch_typos_and_column_clashes():
    with pytest.raises(ValueError, match="no arg 'max_lenght'"):
        check_columns([Reward("len", length, args={"max_lenght": 3})], ["prompt"])
    with pytest.raises(ValueError, match="needs 'max_length'.*needs 'cache_length'"):
        check_columns([Reward("ol", overlong)], ["prompt"])
    # a dataset column named like an option would silently replace it
    with pytest.raises(ValueError, match="column 'unit' would replace"):
        check_columns([Reward("rep", repetition)], ["prompt", "unit"])
    check_columns([Reward("rep", repetition, args={"unit": "words"})], ["prompt", "unit"])
