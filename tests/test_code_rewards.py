"""Code rewards: extraction, the graded rewards with values derived by hand, style checks, caching."""

import pytest

from rlft.rewards import REGISTRY, Reward, compute, required_columns
from rlft.rewards import code as code_rewards
from rlft.rewards.code import extract_code, style_report

PREFIX = 'def f(x: int) -> int:\n    """Return x squared."""\n'
TESTS = ["assert f(0) == 0", "assert f(1) == 1", "assert f(2) == 4", "assert f(3) == 9"]


# ------------------------------------------------------------------------------------------ extraction

@pytest.mark.parametrize("completion, prefix, entry, expected", [
    # one fenced block, prose around it
    ("Sure:\n```python\ndef f(x):\n    return x\n```\nDone.", None, None, "def f(x):\n    return x\n"),
    # several blocks: the last one that defines the entry point (not the usage example after it)
    (("```python\ndef f(x):\n    return 1\n```\nFixed:\n```python\ndef f(x):\n    return 2\n```\n"
     "```python\nprint(f(3))\n```"), None, "f", "def f(x):\n    return 2\n"),
    # no block defines the entry point: the longest block
    ("```\nx = 1\n```\n```python\ny = 2\nz = 3\n```", None, "f", "y = 2\nz = 3\n"),
    # a block left open at max_new_tokens
    ("```py\ndef f(x):\n    return x * x\n", None, "f", "def f(x):\n    return x * x\n"),
    # a non-Python block is not code
    ("```bash\nrm -rf /\n```\ndef f(x):\n    return x", None, "f", "def f(x):\n    return x"),
    # completion-style: the body joins the prefix; a trailing cut-off line is dropped
    ("    return x * x\n    y = (", PREFIX, "f", PREFIX + "    return x * x\n"),
    # completion-style with a whole function in a block: the prefix's function is redefined
    ("```python\ndef f(x):\n    return x ** 2\n```", PREFIX, "f", PREFIX + "def f(x):\n    return x ** 2\n"),
    # leading prose without fences is dropped; trailing prose too
    ("The answer:\nimport math\ndef f(x):\n    return x\nThat is all.", None, "f",
     "import math\ndef f(x):\n    return x\n"),
    # a one-line syntax error is kept (it must score as a syntax error, not be trimmed away)
    ("def f(x) return x", PREFIX, "f", PREFIX + "def f(x) return x"),
])
def test_extract_code(completion, prefix, entry, expected):
    assert extract_code(completion, prefix, entry) == expected


# --------------------------------------------------------------------------------------- graded rewards

BODIES = {
    "all_pass": "    return x * x\n",                                   # 4/4, ok
    "half": "    return x if x < 2 else 0\n",                          # f(0), f(1) right: 2/4, ok
    "one": "    return 0\n",                                            # f(0) right: 1/4, ok
    "none": "    return -1\n",                                          # 0/4, ok
    "runtime": "    if x == 3:\n        raise ValueError(x)\n    return x * x\n",   # 3/4, runtime_error
    "syntax": "    return x *\n",                                       # syntax_error
    "timeout": "    while True:\n        pass\n",                       # timeout
}

# Derived by hand from the definitions (pass ratio p = passed / 4):
#   pass_rate = p; all_pass = [p == 1]
#   coderl: 1 if all pass; -1 syntax; -0.6 runtime error / timeout; else -0.3
#   rltf:   1 if all pass; -1 syntax; -0.6 runtime error / timeout; else -0.3 + 1.3 p
EXPECTED = {
    #            pass_rate all_pass coderl rltf
    "all_pass": (1.0, 1.0, 1.0, 1.0),
    "half": (0.5, 0.0, -0.3, 0.35),              # -0.3 + 1.3 * 0.5
    "one": (0.25, 0.0, -0.3, 0.025),             # -0.3 + 1.3 * 0.25
    "none": (0.0, 0.0, -0.3, -0.3),              # -0.3 + 0
    "runtime": (0.75, 0.0, -0.6, -0.6),          # a runtime error outranks the 3 passes
    "syntax": (0.0, 0.0, -1.0, -1.0),
    "timeout": (0.0, 0.0, -0.6, -0.6),
}


def test_graded_rewards_by_hand():
    names = list(BODIES)
    completions = [BODIES[n] for n in names] + ["anything"]
    cols = {"tests": [TESTS] * len(names) + [None],               # the last row has no tests: None
            "entry_point": ["f"] * (len(names) + 1), "code_prefix": [PREFIX] * (len(names) + 1)}
    prompts = ["p"] * len(completions)
    got = {fn: REGISTRY[fn](prompts, completions, **cols, timeout_s=2.0)
           for fn in ("pass_rate", "all_pass", "coderl", "rltf")}
    for i, name in enumerate(names):
        row = tuple(got[fn][i] for fn in ("pass_rate", "all_pass", "coderl", "rltf"))
        assert row == pytest.approx(EXPECTED[name]), name
    assert all(got[fn][-1] is None for fn in got)


def test_humaneval_style_columns():
    test = "def check(candidate):\n    assert candidate(2) == 4\n    assert candidate(3) == 9\n"
    out = REGISTRY["rltf"](["p", "p"], ["    return x * x\n", "    return x + x\n"], tests=[test, test],
                           entry_point=["f", "f"], code_prefix=[PREFIX, PREFIX])
    assert out == pytest.approx([1.0, -0.3 + 1.3 * 0.5])              # x + x is right for 2 only


def test_identical_programs_run_once_and_results_are_shared(monkeypatch):
    from rlft import sandbox
    calls = []
    real = sandbox.run_batch

    def counting(jobs, workers=None):
        calls.append(len(jobs))
        return real(jobs, workers=workers)
    monkeypatch.setattr(sandbox, "run_batch", counting)
    monkeypatch.setattr(code_rewards, "_cache", type(code_rewards._cache)())
    body = "    return x * x  # cache test\n"
    cols = {"tests": [TESTS] * 3, "entry_point": ["f"] * 3, "code_prefix": [PREFIX] * 3}
    assert REGISTRY["pass_rate"](["p"] * 3, [body] * 3, **cols) == [1.0, 1.0, 1.0]
    assert REGISTRY["coderl"](["p"] * 3, [body] * 3, **cols) == [1.0, 1.0, 1.0]     # cached: no new run
    assert calls == [1]


def test_rewards_through_compute_and_columns():
    rewards = [Reward("pass_rate", REGISTRY["pass_rate"]), Reward("rltf", REGISTRY["rltf"], weight=0.5)]
    res = compute(rewards, ["p", "p"], ["    return x * x\n", "    return 0\n"], [3, 3],
                  {"tests": [TESTS, TESTS], "entry_point": ["f", "f"], "code_prefix": [PREFIX, PREFIX]})
    assert res.components["pass_rate"] == [1.0, 0.25]
    assert [t[-1] for t in res.token_rewards] == pytest.approx([1.0 + 0.5, 0.25 + 0.5 * 0.025])
    assert res.metrics()["reward/pass_rate"] == pytest.approx(0.625)
    for fn in ("pass_rate", "all_pass", "coderl", "rltf"):
        assert required_columns(REGISTRY[fn], {}) == ["tests"]
    assert required_columns(REGISTRY["code_style"], {}) == []


def test_mismatched_columns_are_an_error():
    with pytest.raises(ValueError, match="2 completions but 1 tests"):
        REGISTRY["pass_rate"](["p", "p"], ["a", "b"], tests=[TESTS])


# ------------------------------------------------------------------------------------------------- style

GOOD = '''def mean(values: list[float]) -> float:
    """Return the mean of values."""
    total = sum(values)
    return total / len(values)
'''
BAD = '''def Mean(Values, n=0):
    total = 0
    for V in Values:
        total += V
    print("mean is %s" % (total / len(Values)))
    try:
        return "{}".format(total / len(Values))
    except:
        return None
'''


def test_style_checks_by_hand(monkeypatch):
    assert all(style_report(GOOD, max_line_length=88).values())
    rep = style_report(BAD, max_line_length=88)
    assert rep == {"type_hints": False, "docstring": False, "snake_case": False, "no_print": False,
                   "max_line_length": True, "f_strings": False, "no_bare_except": False, "ruff": False}
    assert not style_report(GOOD, ["max_line_length"], max_line_length=30)["max_line_length"]
    assert style_report("def f(:", ["docstring"]) == {"docstring": False}
    assert style_report("TOTAL = 1\nclass Point:\n    '''A point.'''\n", ["snake_case"]) == {"snake_case": True}
    assert style_report("class point_2d:\n    pass\n", ["snake_case"]) == {"snake_case": False}
    with pytest.raises(ValueError, match="unknown style checks"):
        style_report(GOOD, ["tabs"])

    # the reward is the fraction of checks passed; a check that cannot run (no ruff) is left out
    fenced = "```python\n" + BAD + "```"
    checks = ["type_hints", "max_line_length", "no_bare_except", "ruff"]
    assert REGISTRY["code_style"](["p"], [fenced], checks=checks) == [pytest.approx(1 / 4)]
    monkeypatch.setattr(code_rewards, "_ruff", lambda: None)
    assert REGISTRY["code_style"](["p", "p"], [fenced, GOOD], checks=checks) == [pytest.approx(1 / 3), 1.0]
    assert REGISTRY["code_style"](["p"], ["no code at all"], checks=["docstring"]) == [0.0]
