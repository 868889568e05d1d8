"""Code rewards: run the program in each completion against the row's tests in ``rlft.sandbox``.

Columns: ``tests`` (a list of assert snippets, MBPP-style, or one string of test code, HumanEval-style
with ``check(candidate)``), optional ``entry_point`` (the function ``check`` is called with) and optional
``code_prefix`` (for completion-style prompts: the signature and docstring the completion continues).

| name | value per completion | source |
| --- | --- | --- |
| ``pass_rate`` | passed / total, in [0, 1] | |
| ``all_pass`` | 1 if every test passed, else 0 | |
| ``coderl`` | +1 all pass; -0.3 a test failed; -0.6 error, timeout, memory, killed; -1 syntax error | Le et al. 2022 |
| ``rltf`` | as ``coderl``, but a run whose tests fail gets -0.3 + 1.3 * passed / total | Liu et al. 2023 (RLTF) |
| ``code_style`` | fraction of the chosen style checks the code passes, in [0, 1] | |

A completion's programs run in parallel (``rlft.sandbox.run_batch``), identical programs once, and the
results are cached for the process so that several code rewards on one batch run each program once.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from .base import register, report

# ---------------------------------------------------------------------------------------- extraction

_FENCE = re.compile(r"^[ \t]*```[ \t]*([\w+-]*)[^\n]*\n(.*?)(?:^[ \t]*```[ \t]*$|\Z)", re.DOTALL | re.MULTILINE)
_CODE_START = re.compile(r"^(def |async def |class |import |from |@)", re.MULTILINE)
_PY_LANGS = ("", "python", "py", "python3", "py3")


def _parses(code: str) -> bool:
    try:
        ast.parse(code)
        return True
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False


def _defines(code: str, name: str) -> bool:
    return re.search(rf"^\s*(async\s+)?def\s+{re.escape(name)}\s*\(", code, re.MULTILINE) is not None


def _fenced_blocks(text: str) -> list[str]:
    """Python (or untagged) fenced blocks; a last block left open (truncated completion) counts too."""
    return [m.group(2) for m in _FENCE.finditer(text) if m.group(1).lower() in _PY_LANGS]


def _first_line_end(text: str) -> int:
    """Index just past the first non-blank line of ``text``."""
    start = len(text) - len(text.lstrip())
    end = text.find("\n", start)
    return len(text) if end < 0 else end + 1


def _trim(code: str, keep: int = 0) -> str:
    """Drop trailing lines (a statement cut off by max_new_tokens, prose after the code) until the code
    parses, never cutting into the first ``keep`` characters; unchanged if nothing parses. ``keep``
    always covers the first line of the completion, so a one-line syntax error stays an error."""
    if _parses(code):
        return code
    lines = code.splitlines(keepends=True)
    for end in range(len(lines) - 1, max(0, len(lines) - 50), -1):    # at most 50 tries: parsing is O(len)
        cut = "".join(lines[:end])
        if len(cut) < keep:
            break
        if _parses(cut):
            return cut
    return code


def extract_code(completion: str, code_prefix: str | None = None, entry_point: str | None = None) -> str:
    """The program a completion means.

    1. Fenced blocks (```python or ```): the *last* block that defines ``entry_point``; if none does
       (or no entry point is known), the *longest* block. Models revise ("here is the fixed version")
       and append short usage examples: the last defining block and the longest block follow that.
    2. Otherwise the whole completion; without a ``code_prefix``, from its first line that starts like
       code (``def``, ``class``, ``import``, ``from``, ``@``), so leading prose is dropped.
    3. With a ``code_prefix`` (completion-style prompt: signature + docstring), the program is
       ``code_prefix + code``. A completion that rewrites the whole function also works: the prefix's
       function (a docstring only) is simply redefined.
    4. If the program does not parse, trailing lines are dropped until it does (a statement cut off at
       ``max_new_tokens``, prose after the code), but never the completion's first line: code that is
       wrong from its first line stays a syntax error.

    >>> extract_code("Sure:\\n```python\\ndef f(x):\\n    return x\\n```\\nDone.")
    'def f(x):\\n    return x\\n'
    """
    blocks = _fenced_blocks(completion)
    if blocks:
        defining = [b for b in blocks if entry_point and _defines(b, entry_point)]
        code = defining[-1] if defining else max(blocks, key=len)
    elif code_prefix:
        code = completion
    else:
        m = _CODE_START.search(completion)
        code = completion[m.start():] if m else completion
    if code_prefix:
        prefix = code_prefix if code_prefix.endswith("\n") else code_prefix + "\n"
        if blocks and not code.startswith((" ", "\t")) and not _parses(prefix + code):
            prefix += "    pass\n"             # a prefix ending in an open def, then a whole new function
        return _trim(prefix + code, keep=len(prefix) + _first_line_end(code))
    return _trim(code, keep=_first_line_end(code))


# ------------------------------------------------------------------------------------------- running

_CACHE_SIZE = 4096
_cache: OrderedDict = OrderedDict()
_cache_lock = threading.Lock()


def _key(tests) -> str | tuple:
    return tests if isinstance(tests, str) else tuple(tests)


def run_completions(completions, tests, entry_point=None, code_prefix=None, *, timeout_s: float = 10.0,
                    memory_mb: int = 512, workers: int | None = None) -> list:
    """``TestResult`` per completion (``None`` where the row has no tests). Identical jobs run once;
    results are cached (single-flight: concurrent rewards on the same batch wait for one run)."""
    from ..sandbox import run_batch

    n = len(completions)
    entry_point = entry_point if entry_point is not None else [None] * n
    code_prefix = code_prefix if code_prefix is not None else [None] * n
    if not len(tests) == len(entry_point) == len(code_prefix) == n:
        raise ValueError(f"code rewards: {n} completions but {len(tests)} tests, {len(entry_point)} entry_point, "
                         f"{len(code_prefix)} code_prefix values")
    keys = [None if t is None or (isinstance(t, (list, str)) and len(t) == 0) else
            (extract_code(c, p or None, e or None), _key(t), e or None, float(timeout_s), int(memory_mb))
            for c, t, e, p in zip(completions, tests, entry_point, code_prefix)]
    futures, todo = {}, []
    with _cache_lock:
        for key in keys:
            if key is None or key in futures:
                continue
            fut = _cache.get(key)
            if fut is None:
                fut = _cache[key] = Future()
                todo.append((key, fut))
                while len(_cache) > _CACHE_SIZE:
                    _cache.popitem(last=False)
            else:
                _cache.move_to_end(key)
            futures[key] = fut
    if todo:
        try:
            jobs = [{"program": k[0], "tests": list(k[1]) if isinstance(k[1], tuple) else k[1],
                     "entry_point": k[2], "timeout_s": k[3], "memory_mb": k[4]} for k, _ in todo]
            for (_, fut), res in zip(todo, run_batch(jobs, workers=workers)):
                fut.set_result(res)
        except BaseException as e:
            with _cache_lock:
                for k, fut in todo:
                    _cache.pop(k, None)
                    if not fut.done():
                        fut.set_exception(e)
            raise
    results = [futures[k].result() if k is not None else None for k in keys]
    ran = [r for r in results if r is not None]
    if ran:
        report(**{f"frac_{s}": sum(r.status == s for r in ran) / len(ran)
                  for s in ("syntax_error", "runtime_error", "timeout", "memory", "killed")})
    return results


def _score(fn, prompts, completions, tests, entry_point, code_prefix, timeout_s, memory_mb, workers):
    res = run_completions(completions, tests, entry_point, code_prefix, timeout_s=timeout_s, memory_mb=memory_mb,
                          workers=workers)
    return [None if r is None else fn(r) for r in res]


def _graded(r, adaptive: bool) -> float:
    if r.all_passed:
        return 1.0
    if r.status == "syntax_error":
        return -1.0
    if r.status != "ok":                     # runtime_error, timeout, memory, killed
        return -0.6
    return -0.3 + 1.3 * r.pass_rate if adaptive else -0.3


_DOC_ARGS = """``timeout_s``, ``memory_mb``: limits of one run; ``workers``: parallel sandboxes (default: CPUs)."""


@register("pass_rate", strict_args=True)
def pass_rate(prompts, completions, tests, entry_point=None, code_prefix=None, *, timeout_s: float = 10.0,
              memory_mb: int = 512, workers: int | None = None, **_):
    """Fraction of the row's tests the program passes, in [0, 1]; ``None`` for rows without tests."""
    return _score(lambda r: r.pass_rate, prompts, completions, tests, entry_point, code_prefix, timeout_s, memory_mb,
                  workers)


@register("all_pass", strict_args=True)
def all_pass(prompts, completions, tests, entry_point=None, code_prefix=None, *, timeout_s: float = 10.0,
             memory_mb: int = 512, workers: int | None = None, **_):
    """1 if the program passes every test, else 0."""
    return _score(lambda r: float(r.all_passed), prompts, completions, tests, entry_point, code_prefix, timeout_s,
                  memory_mb, workers)


@register("coderl", strict_args=True)
def coderl(prompts, completions, tests, entry_point=None, code_prefix=None, *, timeout_s: float = 10.0,
           memory_mb: int = 512, workers: int | None = None, **_):
    """CodeRL's graded reward (Le et al. 2022, https://arxiv.org/abs/2207.01780): +1 all tests pass, -0.3 a
    test fails, -0.6 runtime error (also timeout, memory, killed), -1 syntax error."""
    return _score(lambda r: _graded(r, False), prompts, completions, tests, entry_point, code_prefix, timeout_s,
                  memory_mb, workers)


@register("rltf", strict_args=True)
def rltf(prompts, completions, tests, entry_point=None, code_prefix=None, *, timeout_s: float = 10.0,
         memory_mb: int = 512, workers: int | None = None, **_):
    """RLTF's adaptive reward (Liu et al. 2023, https://arxiv.org/abs/2307.04349): +1 all pass;
    -0.3 + 1.3 * passed/total when it runs but tests fail; -0.6 runtime error (timeout, memory, killed);
    -1 syntax error. Example: 2 of 4 tests pass -> -0.3 + 0.65 = 0.35."""
    return _score(lambda r: _graded(r, True), prompts, completions, tests, entry_point, code_prefix, timeout_s,
                  memory_mb, workers)


# ------------------------------------------------------------------------------------------------ style

STYLE_CHECKS = ("type_hints", "docstring", "snake_case", "no_print", "max_line_length", "f_strings",
                "no_bare_except", "ruff")
_SNAKE = re.compile(r"^_{0,2}[a-z][a-z0-9_]*_{0,2}$|^_$")
_CONST = re.compile(r"^_?[A-Z][A-Z0-9_]*$")
_CAPWORDS = re.compile(r"^_?[A-Z][A-Za-z0-9]*$")


def _functions(tree):
    return [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


def _check_type_hints(tree, code, opts):
    for f in _functions(tree):
        args = f.args.posonlyargs + f.args.args + f.args.kwonlyargs
        args += [a for a in (f.args.vararg, f.args.kwarg) if a]
        if f.returns is None or any(a.annotation is None for a in args if a.arg not in ("self", "cls")):
            return False
    return True


def _check_docstring(tree, code, opts):
    nodes = _functions(tree) + [n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)]
    return all(ast.get_docstring(n) for n in nodes)


def _check_snake_case(tree, code, opts):
    module_level = {id(t) for s in tree.body if isinstance(s, (ast.Assign, ast.AnnAssign))
                    for t in (s.targets if isinstance(s, ast.Assign) else [s.target])}
    for n in ast.walk(tree):
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and not _SNAKE.match(n.name):
            return False
        if isinstance(n, ast.ClassDef) and not _CAPWORDS.match(n.name):
            return False
        if isinstance(n, ast.arg) and not _SNAKE.match(n.arg):
            return False
        if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store) and not _SNAKE.match(n.id) \
                and not (id(n) in module_level and _CONST.match(n.id)):      # MODULE_CONSTANT is fine
            return False
    return True


def _check_no_print(tree, code, opts):
    return not any(isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "print"
                   for n in ast.walk(tree))


def _check_max_line_length(tree, code, opts):
    return all(len(line) <= opts["max_line_length"] for line in code.splitlines())


def _check_f_strings(tree, code, opts):
    """No ``"..." % x`` and no ``"...".format(...)``: string formatting, if any, uses f-strings."""
    for n in ast.walk(tree):
        if isinstance(n, ast.BinOp) and isinstance(n.op, ast.Mod) and isinstance(n.left, ast.Constant) \
                and isinstance(n.left.value, str):
            return False
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "format" \
                and isinstance(n.func.value, ast.Constant) and isinstance(n.func.value.value, str):
            return False
    return True


def _check_no_bare_except(tree, code, opts):
    return not any(isinstance(n, ast.ExceptHandler) and n.type is None for n in ast.walk(tree))


def _ruff() -> str | None:
    sibling = Path(sys.executable).parent / "ruff"
    return str(sibling) if sibling.exists() else shutil.which("ruff")


def _check_ruff(tree, code, opts):
    """``ruff check`` (its default rules, line length ``max_line_length``) finds nothing. It only parses."""
    exe = _ruff()
    if exe is None:
        return None
    try:
        r = subprocess.run([exe, "check", "--isolated", "--no-cache", "--quiet", "--line-length",
                            str(opts["max_line_length"]), "--stdin-filename", "solution.py", "-"],
                           input=code, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.returncode == 0


_CHECKS = {name: globals()[f"_check_{name}"] for name in STYLE_CHECKS}


def style_report(code: str, checks=STYLE_CHECKS, max_line_length: int = 88) -> dict[str, bool | None]:
    """Each check's verdict on ``code`` (``None``: could not run, e.g. ruff not installed). Code that
    does not parse fails every check."""
    unknown = [c for c in checks if c not in _CHECKS]
    if unknown:
        raise ValueError(f"unknown style checks {unknown}; known: {', '.join(STYLE_CHECKS)}")
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return {c: False for c in checks}
    opts = {"max_line_length": max_line_length}
    return {c: _CHECKS[c](tree, code, opts) for c in checks}


@register("code_style", strict_args=True)
def code_style(prompts, completions, entry_point=None, code_prefix=None, *, checks=STYLE_CHECKS,
               max_line_length: int = 88, **_):
    """Fraction of ``checks`` the completion's code passes, in [0, 1]: ``type_hints`` (every parameter and
    return annotated), ``docstring`` (every function and class), ``snake_case`` (functions, arguments,
    variables; CapWords classes; UPPER_CASE module constants), ``no_print``, ``max_line_length``,
    ``f_strings`` (no ``%`` or ``.format`` on string literals), ``no_bare_except``, ``ruff`` (no findings;
    skipped -- left out of the fraction -- when ruff is not installed). Code that does not parse: 0."""
    n = len(completions)
    entry_point = entry_point if entry_point is not None else [None] * n
    code_prefix = code_prefix if code_prefix is not None else [None] * n
    checks = [checks] if isinstance(checks, str) else list(checks)

    def score(args):
        c, e, p = args
        verdicts = [v for v in style_report(extract_code(c, p or None, e or None), checks, max_line_length).values()
                    if v is not None]
        return sum(verdicts) / len(verdicts) if verdicts else None
    rows = list(zip(completions, entry_point, code_prefix))
    if "ruff" not in checks or len(rows) < 2:
        return [score(r) for r in rows]
    with ThreadPoolExecutor(min(8, len(rows))) as pool:       # threads wait on ruff processes
        return list(pool.map(score, rows))
