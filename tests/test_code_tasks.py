"""The shipped code tasks (every reference passes, wrong solutions do not), the data files, the
HumanEval/MBPP loaders and pass@k (values derived by hand)."""

import json
from fractions import Fraction
from math import comb
from pathlib import Path

import pytest

from rlft.rewards import REGISTRY
from rlft.rewards.code import style_report
from rlft.tasks.code import (
    STYLE_CHECKS,
    TASKS,
    bugfix_rows,
    completion_rows,
    evaluate_pass_at_k,
    load_humaneval,
    load_mbpp,
    pass_at_k,
    pass_at_k_table,
    style_rows,
    write_data,
)

DATA = Path(__file__).resolve().parent.parent / "data" / "code"


def _fenced(code: str) -> str:
    return f"Here you go:\n```python\n{code}```\n"


def _score(rows, completions):
    cols = {k: [r.get(k) for r in rows] for k in ("tests", "entry_point", "code_prefix")}
    return REGISTRY["pass_rate"](["p"] * len(rows), completions, **cols, timeout_s=20.0)


def test_every_shipped_problem_right_and_wrong():
    """One batch for all three tasks: references score 1, wrong solutions score below 1."""
    comp, bug, style = completion_rows(), bugfix_rows(), style_rows()
    rows, completions, expect = [], [], []
    for r in comp:                       # a base model continues the prefix with the body
        rows += [r, r]
        completions += [r["reference"], "    return None\n"]
        expect += ["all", "not all"]
    for r in bug:                        # a chat model answers in a block; the buggy code fails its test
        rows += [r, {**r, "tests": [r["failing_test"]]}]
        completions += [_fenced(r["reference"]), _fenced(r["buggy_code"])]
        expect += ["all", "none"]
    for r in style:                      # the unstyled source has the wrong name: nothing passes
        rows += [r, r]
        completions += [_fenced(r["reference"]), _fenced(r["source_code"])]
        expect += ["all", "none"]
    scores = _score(rows, completions)
    for row, e, s in zip(rows, expect, scores):
        ok = s == 1.0 if e == "all" else s < 1.0 if e == "not all" else s == 0.0
        assert ok, (row["task_id"], e, s)
    assert len(comp) >= 20 and len(bug) >= 20 and len(style) >= 10


def test_style_task_rewards_form():
    """The references meet every style rule; each unstyled source breaks several."""
    for r in style_rows():
        assert all(v is not False for v in style_report(r["reference"], STYLE_CHECKS).values()), r["task_id"]
        rep = style_report(r["source_code"], STYLE_CHECKS)
        assert sum(v is False for v in rep.values()) >= 2, (r["task_id"], rep)
    rows = style_rows()[:2]
    out = REGISTRY["code_style"](["p"] * 4, [_fenced(r[k]) for r in rows for k in ("reference", "source_code")],
                                 checks=STYLE_CHECKS)
    assert out[0] == out[2] == 1.0 and out[1] < 1.0 and out[3] < 1.0


def test_rows_have_the_common_columns():
    for name, rows in TASKS.items():
        for r in rows():
            assert isinstance(r["prompt"], str) and r["prompt"]
            assert isinstance(r["tests"], list) and all(t.startswith("assert ") for t in r["tests"])
            assert r["entry_point"] and r["reference"] and r["task_id"].startswith(f"rlft/{name}/")
    r = completion_rows()[0]
    assert r["prompt"] == r["code_prefix"] and r["prompt"].startswith("def digit_sum(n: int) -> int:\n")
    b = bugfix_rows()[0]
    assert b["failing_test"] in b["prompt"] and b["buggy_code"] in b["prompt"]


def test_shipped_data_files_are_up_to_date(tmp_path):
    """data/code/*.jsonl are what `python -m rlft.tasks.code data/code` writes."""
    for path in write_data(tmp_path):
        shipped = DATA / path.name
        assert shipped.exists(), f"missing {shipped}: run python -m rlft.tasks.code data/code"
        assert shipped.read_text() == path.read_text(), f"{shipped} is stale: run python -m rlft.tasks.code data/code"
        assert all(json.loads(line) for line in shipped.read_text().splitlines())


# --------------------------------------------------------------------------------------------- loaders

HUMANEVAL = [
    {"task_id": "Toy/0", "prompt": 'from typing import List\n\n\ndef total(xs: List[int]) -> int:\n    """Sum."""\n',
     "canonical_solution": "    return sum(xs)\n", "entry_point": "total",
     "test": "METADATA = {}\n\n\ndef check(candidate):\n    assert candidate([]) == 0\n"
             "    assert candidate([1, 2]) == 3\n"},
    {"task_id": "Toy/1", "prompt": 'def poly(xs: list, x: float):\n    return sum(c * x ** i for i, c in '
                                   'enumerate(xs))\n\n\ndef root(xs: list) -> float:\n    """A root of poly."""\n',
     "canonical_solution": "    lo, hi = -100.0, 100.0\n    for _ in range(200):\n        mid = (lo + hi) / 2\n"
                           "        if poly(xs, lo) * poly(xs, mid) <= 0:\n            hi = mid\n        else:\n"
                           "            lo = mid\n    return lo\n",
     "entry_point": "root",
     "test": "import math\n\n\ndef check(candidate):\n    for xs in ([-6, 11, -6, 1], [1, 1]):\n"
             "        assert math.fabs(poly(xs, candidate(xs))) < 1e-4\n"},
]
MBPP = [
    {"task_id": 11, "text": "Write a python function to remove first and last occurrence of a given character.",
     "code": "def remove_Occ(s, ch):\n    i = s.find(ch)\n    if i >= 0:\n        s = s[:i] + s[i + 1:]\n"
             "    j = s.rfind(ch)\n    if j >= 0:\n        s = s[:j] + s[j + 1:]\n    return s",
     "test_list": ['assert remove_Occ("hello","l") == "heo"', 'assert remove_Occ("abcda","a") == "bcd"'],
     "test_setup_code": "", "challenge_test_list": []},
    {"task_id": 2, "prompt": "Find the shared elements of two lists.",
     "code": "import math\ndef similar_elements(a, b):\n    return tuple(set(a) & set(b))",
     "test_list": ["assert set(similar_elements((3, 4, 5), (5, 7, 4))) == set((4, 5))",
                   "assert math.isclose(len(similar_elements((1,), (1,))), 1)"],
     "test_imports": ["import math"]},
]


def _write(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_load_humaneval_rows_run(tmp_path):
    rows = load_humaneval(_write(tmp_path / "he.jsonl", HUMANEVAL))
    assert [r["task_id"] for r in rows] == ["Toy/0", "Toy/1"]
    assert rows[0]["code_prefix"] == rows[0]["prompt"] and isinstance(rows[0]["tests"], str)
    assert _score(rows, [r["reference"] for r in rows]) == [1.0, 1.0]
    assert _score(rows, ["    return 1\n", "    return 123.0\n"]) == [0.0, 0.0]


def test_load_mbpp_rows_run(tmp_path):
    rows = load_mbpp(_write(tmp_path / "mbpp.jsonl", MBPP))
    assert [r["entry_point"] for r in rows] == ["remove_Occ", "similar_elements"]
    assert 'remove_Occ("hello","l")' in rows[0]["prompt"] and rows[1]["tests"][0] == "import math"
    assert _score(rows, [_fenced(r["reference"] + "\n") for r in rows]) == [1.0, 1.0]
    assert _score(rows, ["def remove_Occ(s, ch):\n    return s", "def similar_elements(a, b):\n    return (1,)"]) \
        == [0.0, 0.5]


@pytest.mark.parametrize("loader, rows, message", [
    (load_humaneval, [HUMANEVAL[0], "{not json"], r"he\.jsonl, line 2: not valid JSON"),
    (load_humaneval, [{**HUMANEVAL[0], "entry_point": 3}], r"line 1: 'entry_point' must be a non-empty string"),
    (load_humaneval, [HUMANEVAL[0], {k: v for k, v in HUMANEVAL[1].items() if k != "test"}], r"line 2: 'test'"),
    (load_humaneval, [{**HUMANEVAL[0], "test": "def check(candidate):\n    assert ("}],
     r"line 1: 'test' does not parse"),
    (load_humaneval, [{**HUMANEVAL[0], "test": "assert True"}], r"line 1: 'test' defines no check"),
    (load_humaneval, ["[1, 2]"], r"line 1: expected a JSON object"),
    (load_mbpp, [MBPP[0], {**MBPP[1], "test_list": "assert x"}],
     r"mbpp\.jsonl, line 2: 'test_list' must be a non-empty list"),
    (load_mbpp, [{**MBPP[0], "text": ""}], r"line 1: needs a non-empty 'text'"),
    (load_mbpp, [{**MBPP[0], "test_list": ["assert remove_Occ("]}], r"line 1: test .* does not parse"),
    (load_mbpp, [{**MBPP[0], "code": "x = 1"}], r"line 1: 'code' defines no function"),
])
def test_bad_rows_name_file_and_line(tmp_path, loader, rows, message):
    name = "he.jsonl" if loader is load_humaneval else "mbpp.jsonl"
    with pytest.raises(ValueError, match=message):
        loader(_write(tmp_path / name, rows))


def test_missing_file(tmp_path):
    with pytest.raises(ValueError, match="cannot read"):
        load_mbpp(tmp_path / "nope.jsonl")


# ---------------------------------------------------------------------------------------------- pass@k

@pytest.mark.parametrize("n, c, k, expected", [
    (5, 0, 1, 0.0),                    # no correct sample
    (5, 5, 1, 1.0),                    # all correct
    (10, 3, 1, 0.3),                   # pass@1 = c / n
    (10, 3, 2, 1 - 21 / 45),           # 1 - C(7,2)/C(10,2) = 1 - 21/45 = 0.5333...
    (4, 2, 3, 1.0),                    # n - c = 2 < k = 3: every 3-subset holds a correct one
    (200, 1, 100, 0.5),                # 1 - C(199,100)/C(200,100) = 1 - 100/200
    (20, 4, 5, 1 - 4368 / 15504),      # 1 - C(16,5)/C(20,5) = 1 - 4368/15504
])
def test_pass_at_k_by_hand(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_is_stable_for_large_n():
    # the product form agrees with exact rational arithmetic where the binomials overflow floats
    n, c, k = 2000, 37, 300
    exact = 1 - Fraction(comb(n - c, k), comb(n, k))
    assert pass_at_k(n, c, k) == pytest.approx(float(exact), rel=1e-9)


def test_pass_at_k_rejects_bad_arguments():
    for n, c, k in [(5, 6, 1), (5, -1, 1), (5, 2, 0), (5, 2, 6)]:
        with pytest.raises(ValueError):
            pass_at_k(n, c, k)
    with pytest.raises(TypeError):
        pass_at_k(5.0, 2, 1)


def test_pass_at_k_table():
    # two problems, 10 samples each, 3 and 0 correct: pass@1 = (0.3 + 0) / 2; k = 20 > n is left out
    table = pass_at_k_table([(10, 3), (10, 0)], ks=(1, 2, 20))
    assert table == pytest.approx({"pass@1": 0.15, "pass@2": (1 - 21 / 45) / 2})


def test_evaluate_pass_at_k_runs_the_samples():
    rows = completion_rows()[:2]
    right, wrong = [r["reference"] for r in rows], "    return None\n"
    # row 0: 2 of 4 samples correct; row 1: 1 of 4. pass@1 = (2/4 + 1/4) / 2 = 0.375;
    # pass@2 = (1 - C(2,2)/C(4,2) + 1 - C(3,2)/C(4,2)) / 2 = (5/6 + 1/2) / 2 = 2/3
    samples = [[right[0], wrong, right[0], wrong], [wrong, wrong, right[1], wrong]]
    assert evaluate_pass_at_k(rows, samples, ks=(1, 2)) == pytest.approx({"pass@1": 0.375, "pass@2": 2 / 3})
