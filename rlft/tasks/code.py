"""Code tasks: function completion, bug fixing and style conversion, on problems rlft writes itself
(``code_problems.py``); loaders for HumanEval- and MBPP-style JSONL; the unbiased pass@k estimator.

Every row, whatever its source, has at least::

    prompt       str         what the model sees (through data.template / the chat template)
    tests        list | str  MBPP-style assert snippets, or HumanEval-style test code with check()
    entry_point  str         the function under test
    reference    str         a correct solution (a body for completion rows, else the whole function)

and completion rows also ``code_prefix`` (the signature + docstring the completion continues), which
the code rewards join in front of the completion. Write the shipped datasets with
``python -m rlft.tasks.code data/code``.
"""

from __future__ import annotations

import ast
import json
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

from ..rewards.code import run_completions
from .base import Outputs, Task
from .code_problems import PROBLEMS, Problem

STYLE_RULES = ("snake_case names for the function, its arguments and variables",
               "type hints on every argument and on the return value",
               "a docstring",
               "f-strings for string formatting (no % and no .format)",
               "no print calls",
               "lines of at most 88 characters")
STYLE_CHECKS = ["type_hints", "docstring", "snake_case", "no_print", "f_strings", "max_line_length", "ruff"]

BUGFIX_PROMPT = """Fix the bug in this Python function. This test fails:

    {failing_test}

```python
{buggy_code}```

Answer with the corrected function in one ```python code block."""

STYLE_PROMPT = """Rewrite this Python function in our house style, keeping its behaviour exactly:
{rules}

```python
{source_code}```

Answer with the rewritten function in one ```python code block."""

# A chat-model template for completion rows (base models take the prompt as it is: the code prefix).
COMPLETION_CHAT_TEMPLATE = ("Complete this Python function. Answer with the whole function in one ```python "
                            "code block.\n\n```python\n{prompt}```")


# ------------------------------------------------------------------------------------- shipped tasks

def code_prefix(p: Problem) -> str:
    """Signature and docstring: what a completion-style prompt shows and the completion continues."""
    paras = []
    for para in p.doc.split("\n\n"):               # prose wrapped to 88 columns, doctests kept as they are
        paras.append(para if para.startswith(">>>") else textwrap.fill(" ".join(para.split()), 80))
    doc = "\n".join(("    " + line) if line else "" for line in "\n\n".join(paras).splitlines())
    return f'{p.signature}\n    """{doc.lstrip()}\n    """\n'


def completion_rows() -> list[dict]:
    """Signature + docstring -> body."""
    return [{"task_id": f"rlft/completion/{p.name}", "prompt": code_prefix(p), "code_prefix": code_prefix(p),
             "tests": list(p.tests), "entry_point": p.name, "reference": p.body} for p in PROBLEMS]


def bugfix_rows() -> list[dict]:
    """Buggy function + a test it fails -> the fixed function (checked against all the tests)."""
    rows = []
    for p in PROBLEMS:
        if p.bug is None:
            continue
        buggy, failing = code_prefix(p) + p.bug[0], p.tests[p.bug[1]]
        rows.append({"task_id": f"rlft/bugfix/{p.name}", "prompt": BUGFIX_PROMPT.format(failing_test=failing,
                                                                                     buggy_code=buggy),
                     "buggy_code": buggy, "failing_test": failing, "tests": list(p.tests), "entry_point": p.name,
                     "reference": code_prefix(p) + p.body})
    return rows


def style_rows() -> list[dict]:
    """An unstyled function -> an equivalent one in the house style (``STYLE_RULES``): checked by its
    tests (behaviour) and by ``code_style`` with ``STYLE_CHECKS`` (form)."""
    rows = []
    for p in PROBLEMS:
        if p.messy is None:
            continue
        rules = "\n".join(f"- {r}" for r in (f"name the function `{p.name}`",) + STYLE_RULES)
        rows.append({"task_id": f"rlft/style/{p.name}",
                     "prompt": STYLE_PROMPT.format(rules=rules, source_code=p.messy[0]),
                     "source_code": p.messy[0], "tests": list(p.tests), "entry_point": p.name,
                     "reference": code_prefix(p) + p.body})
    return rows


TASKS = {"completion": completion_rows, "bugfix": bugfix_rows, "style": style_rows}


def write_data(out_dir: str | Path) -> list[Path]:
    """Write ``completion.jsonl``, ``bugfix.jsonl``, ``style.jsonl`` (one JSON object a line)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, rows in TASKS.items():
        path = out_dir / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows()),
                        encoding="utf-8")
        paths.append(path)
    return paths


# ------------------------------------------------------------------------------------------- loaders

def _jsonl(path: str | Path):
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise ValueError(f"{path}: cannot read ({e.strerror})") from None
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}, line {i}: not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}, line {i}: expected a JSON object, got {type(row).__name__}")  # noqa: TRY004 -- a bad row
        yield i, row


def _need(path, i, row, key, kind):
    v = row.get(key)
    if not isinstance(v, kind) or (isinstance(v, (str, list)) and not v):
        what = "a non-empty string" if kind is str else "a non-empty list"
        raise ValueError(f"{path}, line {i}: {key!r} must be {what}, got {type(v).__name__}")
    return v


def _check_parses(path, i, what, code):
    try:
        ast.parse(code)
    except (SyntaxError, ValueError) as e:
        raise ValueError(f"{path}, line {i}: {what} does not parse ({e})") from None


def load_humaneval(path: str | Path) -> list[dict]:
    """HumanEval-style JSONL (``task_id``, ``prompt``, ``canonical_solution``, ``test``, ``entry_point``)
    -> rows: ``prompt`` = ``code_prefix`` = the code prompt, ``tests`` = the test code (its ``check`` is
    called with the entry point), ``reference`` = the canonical solution (a body)."""
    rows = []
    for i, row in _jsonl(path):
        prompt = _need(path, i, row, "prompt", str)
        test = _need(path, i, row, "test", str)
        entry = _need(path, i, row, "entry_point", str)
        solution = row.get("canonical_solution", "")
        if not isinstance(solution, str):
            raise ValueError(f"{path}, line {i}: 'canonical_solution' must be a string")  # noqa: TRY004 -- a bad row
        _check_parses(path, i, "'test'", test)
        if "def check" not in test:
            raise ValueError(f"{path}, line {i}: 'test' defines no check(candidate)")
        rows.append({"task_id": str(row.get("task_id", f"line-{i}")), "prompt": prompt, "code_prefix": prompt,
                     "tests": test, "entry_point": entry, "reference": solution})
    return rows


MBPP_PROMPT = "{text}\nYour code should pass these tests:\n\n{tests}\n"


def _mbpp_entry_point(code: str, tests: list[str]) -> str | None:
    """The function of ``code`` that the first test calls (else the first function it defines)."""
    try:
        defined = [n.name for n in ast.walk(ast.parse(code)) if isinstance(n, ast.FunctionDef)]
        called = [n.func.id for t in tests for n in ast.walk(ast.parse(t))
                  if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)]
    except (SyntaxError, ValueError):
        return None
    return next((c for c in called if c in defined), defined[0] if defined else None)


def load_mbpp(path: str | Path) -> list[dict]:
    """MBPP-style JSONL (``text`` or ``prompt``, ``code``, ``test_list``; optional ``task_id``,
    ``test_setup_code`` / ``test_imports``) -> rows: ``prompt`` = the task and its tests (as in Austin et
    al. 2021), ``tests`` = setup code + the asserts, ``reference`` = the code, ``entry_point`` = the
    function the tests call."""
    rows = []
    for i, row in _jsonl(path):
        text = row.get("text", row.get("prompt"))
        if not isinstance(text, str) or not text:
            raise ValueError(f"{path}, line {i}: needs a non-empty 'text' (or 'prompt') string")
        code = _need(path, i, row, "code", str)
        tests = _need(path, i, row, "test_list", list)
        if not all(isinstance(t, str) for t in tests):
            raise ValueError(f"{path}, line {i}: 'test_list' must hold strings")
        for t in tests:
            _check_parses(path, i, f"test {t[:60]!r}", t)
        setup = row.get("test_setup_code") or "\n".join(row.get("test_imports") or [])
        if not isinstance(setup, str):
            raise ValueError(f"{path}, line {i}: 'test_setup_code' must be a string")  # noqa: TRY004 -- a bad row
        entry = _mbpp_entry_point(code, tests)
        if entry is None:
            raise ValueError(f"{path}, line {i}: 'code' defines no function the tests call")
        rows.append({"task_id": str(row.get("task_id", f"line-{i}")),
                     "prompt": MBPP_PROMPT.format(text=text.strip(), tests="\n".join(tests)),
                     "tests": ([setup] if setup.strip() else []) + list(tests), "entry_point": entry,
                     "reference": code})
    return rows


# -------------------------------------------------------------------------------------------- pass@k

def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimate of pass@k from n samples of which c are correct (Chen et al. 2021,
    https://arxiv.org/abs/2107.03374): 1 - C(n-c, k) / C(n, k), computed as the stable product
    1 - prod_{i=n-c+1}^{n} (1 - k/i) (no huge binomials).

    >>> round(pass_at_k(10, 1, 1), 12)      # 1 - C(9,1)/C(10,1) = 1 - 9/10
    0.1
    """
    if not (isinstance(n, int) and isinstance(c, int) and isinstance(k, int)):
        raise TypeError("pass_at_k takes integers n, c, k")
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def pass_at_k_table(counts: list[tuple[int, int]], ks=(1, 5, 10)) -> dict[str, float]:
    """Mean pass@k over problems, from (samples, correct) per problem; k larger than a problem's sample
    count is skipped for all problems. ``{"pass@1": ..., "pass@5": ...}``."""
    out = {}
    for k in ks:
        if counts and all(n >= k for n, _ in counts):
            out[f"pass@{k}"] = sum(pass_at_k(n, c, k) for n, c in counts) / len(counts)
    return out


def evaluate_pass_at_k(rows: list[dict], samples: list[list[str]], ks=(1, 5, 10), timeout_s: float = 10.0,
                       memory_mb: int = 512) -> dict[str, float]:
    """pass@k of ``samples[i]`` (n completions of ``rows[i]``): each completion runs in the sandbox
    (through the same extraction as the rewards); a sample is correct when it passes every test.
    Returns ``{"pass@1": ..., "pass@5": ...}`` for the k that every row has samples for."""
    if len(rows) != len(samples):
        raise ValueError(f"{len(rows)} rows but {len(samples)} lists of samples")
    flat_rows = [r for r, s in zip(rows, samples) for _ in s]
    results = run_completions([c for s in samples for c in s], [r["tests"] for r in flat_rows],
                              [r.get("entry_point") for r in flat_rows], [r.get("code_prefix") for r in flat_rows],
                              timeout_s=timeout_s, memory_mb=memory_mb)
    counts, i = [], 0
    for s in samples:
        counts.append((len(s), sum(r.all_passed for r in results[i:i + len(s)])))
        i += len(s)
    return pass_at_k_table(counts, ks)


# ---------------------------------------------------------------------------------------- the presets

def _code_preset(rewards: list[dict], stop: list[str]) -> Callable[[], dict]:
    def make() -> dict:
        return {"data": {"template": "{prompt}"},
                "rollout": {"max_new_tokens": 384, "temperature": 1.0, "stop": list(stop)},
                "rewards": {"components": [dict(r) for r in rewards]}}
    return make


def code_metrics(o: Outputs) -> dict:
    """pass@1 of the greedy completions (share of problems whose program passes every test, in the sandbox);
    with k samples per problem also the unbiased pass@1 and pass@k of Chen et al. 2021 (``evaluate_pass_at_k``)."""
    out = {"pass@1 (greedy)": evaluate_pass_at_k(o.rows, [[g] for g in o.greedy], ks=(1,))["pass@1"]}
    if o.sampled:
        ks = sorted({1, len(o.sampled[0])})
        out.update({f"{name} (sampled)": v for name, v in evaluate_pass_at_k(o.rows, o.sampled, ks=ks).items()})
    return out


_STYLE = {"name": "style", "fn": "code_style", "weight": 0.5,
          "args": {"checks": ["type_hints", "docstring", "snake_case", "no_print", "f_strings", "max_line_length"]}}
CODE_TASKS = {
    "code_completion": Task("code_completion", _code_preset([{"fn": "pass_rate"}],
                                                            ["\ndef ", "\nclass ", "\nif __name__", "\n```"]),
                            code_metrics, summary="signature + docstring -> body, scored by the tests"),
    "bug_fixing": Task("bug_fixing", _code_preset([{"fn": "pass_rate"}], []), code_metrics,
                       summary="a buggy function and a failing test -> the fixed function"),
    "style_conversion": Task("style_conversion", _code_preset([{"fn": "all_pass"}, _STYLE], []),
                             code_metrics, summary="a function -> the same behaviour in the house style"),
}


if __name__ == "__main__":
    for p in write_data(sys.argv[1] if len(sys.argv) > 1 else "data/code"):
        print(p)
