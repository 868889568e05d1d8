"""rlft.sandbox: results, statuses, test counting, values across the boundary, run_batch, modes.

Every test runs in both modes: ``bwrap`` (skipped where bubblewrap cannot run) and ``plain`` (forced,
as on a machine without bubblewrap). Timeouts are generous: the suite shares 2 loaded cores.
"""

import os
import threading
import time

import pytest

from rlft import sandbox
from rlft.sandbox import Job, TestResult, bwrap_available, isolation, run_batch, run_tests, runner


@pytest.fixture(params=[True, False], ids=["bwrap", "plain"])
def use_bwrap(request):
    if request.param and not bwrap_available()[0]:
        pytest.skip(f"bubblewrap cannot run here: {bwrap_available()[1]}")
    return request.param


ADD = "def add(a, b):\n    return a + b\n"


def run(program, tests, use_bwrap, **kw):
    kw.setdefault("timeout_s", 10)
    return run_tests(program, tests, use_bwrap=use_bwrap, **kw)


def pts(r):
    """(passed, total, status)"""
    return r.passed, r.total, r.status


def test_pass_and_fail_counted_per_assert(use_bwrap):
    r = run(ADD, ["assert add(1, 2) == 3", "assert add(2, 2) == 5", "assert add(-1, 1) == 0"], use_bwrap)
    assert (r.passed, r.total, r.status) == (2, 3, "ok")
    assert r.pass_rate == pytest.approx(2 / 3) and not r.all_passed


def test_statuses(use_bwrap):
    assert run("def add(a, b)\n    return a", ["assert add(1, 1) == 2"], use_bwrap).status == "syntax_error"
    r = run("raise ValueError('at import')", ["assert add(1, 1) == 2"], use_bwrap)
    assert (r.passed, r.status) == (0, "runtime_error") and "ValueError" in r.detail
    r = run("def add(a, b):\n    return a / 0", ["assert add(1, 1) == 2"], use_bwrap)
    assert (r.passed, r.status) == (0, "runtime_error") and "ZeroDivisionError" in r.detail
    r = run("def add(a, b):\n    while True:\n        pass", ["assert add(1, 1) == 2"], use_bwrap, timeout_s=1.5)
    assert (r.passed, r.status) == (0, "timeout")
    assert r.seconds < 1.5 + runner.START_GRACE_S
    r = run("def add(a, b):\n    return bytearray(1 << 30)", ["assert add(1, 1) == 2"], use_bwrap, memory_mb=256)
    assert (r.passed, r.status) == (0, "memory")
    r = run("import os\nos.abort()", ["assert add(1, 1) == 2"], use_bwrap)
    assert (r.passed, r.status) == (0, "killed") and "SIGABRT" in r.detail


def test_timeout_keeps_the_tests_already_passed(use_bwrap):
    prog = "import time\ndef f(x):\n    if x == 3:\n        time.sleep(60)\n    return x"
    r = run(prog, ["assert f(1) == 1", "assert f(2) == 2", "assert f(3) == 3", "assert f(4) == 4"], use_bwrap,
            timeout_s=1.5)
    assert (r.passed, r.total, r.status) == (2, 4, "timeout")


HUMANEVAL_TEST = """
METADATA = {'author': 'rlft'}

def check(candidate):
    assert candidate(1, 2) == 3
    assert candidate(2, 2) == 4, "two and two"
    for i in range(5):
        assert candidate(i, 1) == i + 1
    assert candidate(-1, -1) == -2
"""


def test_humaneval_check_each_assert_one_test(use_bwrap):
    assert pts(run(ADD, HUMANEVAL_TEST, use_bwrap, entry_point="add")) == (4, 4, "ok")
    # wrong for a == 3 only: the looped assert fails, the three others pass
    wrong = "def add(a, b):\n    return 0 if a == 3 else a + b"
    assert pts(run(wrong, HUMANEVAL_TEST, use_bwrap, entry_point="add")) == (3, 4, "ok")
    raises = "def add(a, b):\n    if a == 3:\n        raise KeyError(a)\n    return a + b"
    assert pts(run(raises, HUMANEVAL_TEST, use_bwrap, entry_point="add")) == (3, 4, "runtime_error")
    r = run("def plus(a, b):\n    return a + b", HUMANEVAL_TEST, use_bwrap, entry_point="add")
    assert (r.passed, r.status) == (0, "runtime_error") and "'add'" in r.detail
    with pytest.raises(ValueError, match="entry_point"):
        run_tests(ADD, HUMANEVAL_TEST)


def test_test_code_shapes(use_bwrap):
    # a test that expects an exception: the assert it skips is not a failure
    prog = "def f(x):\n    if x < 0:\n        raise ValueError(x)\n    return x"
    t = "try:\n    f(-1)\n    assert False, 'no error'\nexcept ValueError:\n    assert True"
    assert pts(run(prog, [t], use_bwrap)) == (2, 2, "ok")
    assert pts(run("def f(x):\n    return x", [t], use_bwrap))[:2] == (1, 2)
    # no assert at all: one test, passed when the code runs through
    assert pts(run(ADD, ["add(1, 2)"], use_bwrap)) == (1, 1, "ok")
    assert pts(run(ADD, ["add(1)"], use_bwrap))[:2] == (0, 1)
    # a snippet that stops on an exception fails the asserts it did not reach
    assert pts(run(ADD, ["x = add(1)\nassert x == 1\nassert True"], use_bwrap))[:2] == (0, 2)
    # setup code shared by later snippets
    assert pts(run(ADD, ["import math\nN = 2", "assert add(N, N) == 4", "assert math.sqrt(add(8, 8)) == 4"],
               use_bwrap)) == (2, 2, "ok")


def test_values_cross_as_genuine_builtins(use_bwrap):
    prog = """
from collections import Counter, OrderedDict, namedtuple
import itertools, enum
P = namedtuple('P', 'x y')
class Color(enum.IntEnum):
    RED = 1
class Pair:
    def __init__(self, a, b):
        self.a, self.b = a, b
def chain(pairs):
    pairs = sorted(pairs, key=lambda p: p.b)
    n, end = 0, float('-inf')
    for p in pairs:
        if p.a > end:
            n, end = n + 1, p.b
    return n
def counts(xs): return Counter(xs)
def ordered(): return OrderedDict(a=1, b=2)
def point(): return P(1, 2)
def red(): return Color.RED
def squares(n): return (i * i for i in range(n))
def pairs(xs): return itertools.combinations(xs, 2)
def big(): return 3 ** 5000
def weird(): return [float('nan'), float('inf'), -0.0, 1 + 2j, b'x', bytearray(b'y'), frozenset({1}), {1: (2, 3)}]
def area(r): return 3.14159 * r * r
class Stack:
    def __init__(self): self.items = []
    def push(self, x): self.items.append(x)
    def pop(self): return self.items.pop()
"""
    tests = ["assert chain([Pair(5, 24), Pair(15, 25), Pair(27, 40), Pair(50, 60)]) == 3",
             "assert counts('aab') == {'a': 2, 'b': 1}",
             "assert ordered() == {'b': 2, 'a': 1}",
             "assert point() == (1, 2)",
             "assert red() == 1",
             "assert list(squares(4)) == [0, 1, 4, 9] and squares(2) != [0, 1]",
             "assert list(pairs([1, 2, 3])) == [(1, 2), (1, 3), (2, 3)]",
             "assert big() == 3 ** 5000",
             "w = weird()\nassert w[0] != w[0] and w[1] == float('inf') and str(w[2]) == '-0.0'",
             "assert w[3:] == [1 + 2j, b'x', bytearray(b'y'), frozenset({1}), {1: (2, 3)}]",
             "assert math.isclose(area(2), 12.56636)",
             "s = Stack()\ns.push(3)\ns.push(4)\nassert s.pop() == 4\nassert s.items == [3]",
             "assert type(Pair(1, 2)).__name__ == 'Remote' and Pair(1, 2) != Pair(1, 2)"]
    r = run(prog, tests, use_bwrap)
    assert (r.passed, r.total, r.status) == (14, 14, "ok"), r.detail


def test_program_output_and_state_do_not_leak_between_runs(use_bwrap):
    prog = "import os\nprint('noise' * 1000)\nopen('state.txt', 'a').write('x')\n" \
           "def n():\n    return len(open('state.txt').read()), sorted(os.listdir('.'))"
    for _ in range(2):                            # a fresh, empty working folder each time
        assert run(prog, ["assert n() == (1, ['state.txt'])"], use_bwrap).passed == 1


def test_environment_is_scrubbed(use_bwrap, monkeypatch):
    monkeypatch.setenv("RLFT_TEST_SECRET", "s3cr3t")
    prog = "import os\ndef env():\n    return sorted(os.environ)"
    r = run(prog, ["assert 'RLFT_TEST_SECRET' not in env()", ("assert set(env()) <= {'PATH', 'HOME', 'TMPDIR', "
               "'LANG', 'LC_ALL', 'MALLOC_ARENA_MAX', 'PWD'}")], use_bwrap)
    assert r.passed == 2, r.detail


def test_run_batch_order_and_parallelism(use_bwrap, monkeypatch):
    # order: job i returns i; jobs alternate right and wrong answers
    jobs = [{"program": f"def f():\n    return {i if i % 2 == 0 else -1}", "tests": [f"assert f() == {i}"]}
            for i in range(6)]
    assert [r.passed for r in run_batch(jobs, workers=2, use_bwrap=use_bwrap)] == [1, 0, 1, 0, 1, 0]
    assert run_batch([]) == []
    # parallelism: 4 sleeping jobs on 2 workers; record when each run starts and ends
    spans, real = [], runner.run_tests
    lock = threading.Lock()

    def timed(**kw):
        t0 = time.monotonic()
        r = real(**kw)
        with lock:
            spans.append((t0, time.monotonic()))
        return r
    monkeypatch.setattr(runner, "run_tests", timed)
    sleepy = Job("import time\ntime.sleep(1.0)\ndef f():\n    return 1", ["assert f() == 1"])
    results = run_batch([sleepy] * 4, workers=2, use_bwrap=use_bwrap, timeout_s=20)
    assert all(r.passed == 1 for r in results)

    def running_at(t):
        return sum(a <= t < b for a, b in spans)
    peak = max(running_at(a) for a, _ in spans)
    assert peak == 2                              # two at a time: overlap, and never more than the workers


def test_job_fields_override_batch_defaults():
    jobs = [Job("import time\ntime.sleep(30)", ["assert True"], timeout_s=1.0)]
    r = run_batch(jobs, timeout_s=60)[0]
    assert r.status == "timeout" and r.seconds < 1.0 + runner.START_GRACE_S


def test_bad_tests_are_caller_errors():
    with pytest.raises(ValueError, match="does not parse"):
        run_tests(ADD, ["assert add(1, 2) =="])
    with pytest.raises(ValueError, match="non-empty"):
        run_tests(ADD, [])


def test_fallback_forced_by_env(monkeypatch):
    monkeypatch.setenv("RLFT_SANDBOX", "plain")
    info = isolation()
    assert info["mode"] == "plain"
    assert any("PID namespace" in s for s in info["not_isolated"])
    assert run_tests(ADD, ["assert add(1, 2) == 3"]).passed == 1
    monkeypatch.setenv("RLFT_SANDBOX", "sometimes")
    with pytest.raises(ValueError, match="RLFT_SANDBOX"):
        run_tests(ADD, ["assert add(1, 2) == 3"])


def test_bwrap_required_but_missing_is_an_error(monkeypatch):
    monkeypatch.setitem(runner._cache, "bwrap", (False, "bwrap is not installed"))
    with pytest.raises(RuntimeError, match="not installed"):
        run_tests(ADD, ["assert add(1, 2) == 3"], use_bwrap=True)
    assert run_tests(ADD, ["assert add(1, 2) == 3"]).passed == 1          # auto: falls back


def test_fallback_logs_what_is_not_isolated(monkeypatch, caplog):
    monkeypatch.setitem(runner._cache, "bwrap", (False, "no namespaces for bwrap"))
    for key in [k for k in runner._cache if isinstance(k, tuple)]:
        monkeypatch.delitem(runner._cache, key)
    with caplog.at_level("WARNING", logger="rlft.sandbox"):
        run_tests(ADD, ["assert add(1, 2) == 3"])
        run_tests(ADD, ["assert add(1, 2) == 3"])
    text = caplog.text
    assert "falling back" in text and "NOT isolated" in text and "PID namespace" in text
    assert text.count("NOT isolated") == 1                               # once, not per program


def test_isolation_report_names_the_mode():
    info = isolation(use_bwrap=False)
    assert info["mode"] == "plain" and info["isolated"]
    if bwrap_available()[0]:
        info = isolation(use_bwrap=True)
        assert info["mode"] == "bwrap" and any("network namespace" in s for s in info["isolated"])


def test_public_api():
    assert set(sandbox.__all__) >= {"run_tests", "run_batch", "TestResult", "isolation", "Job"}
    assert TestResult(1, 2, "ok").pass_rate == 0.5
    assert not os.environ.get("RLFT_SANDBOX") or os.environ["RLFT_SANDBOX"] in ("auto", "bwrap", "plain")
