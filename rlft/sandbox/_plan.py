"""Test code, prepared on the host for the supervisor: each ``assert`` rewritten to record its outcome.

``assert <test>, <msg>`` becomes (``__rlft_*__`` are provided by the supervisor)::

    try:
        __rlft_ok__ = __rlft_bool__(<test>)
    except __rlft_stop__:          # the worker is gone or time is up: this test failed, stop
        __rlft_rec__(IDX, False)
        raise
    except Exception:              # the program raised, or gave a value the test could not use
        __rlft_ok__ = False
    __rlft_rec__(IDX, __rlft_ok__)

so each assert statement is one test, and a failing one does not hide the ones after it. A statement
passes when every execution of it passed (asserts in a loop run many times), or when it never ran
because the test code legitimately went around it (``try: f(-1); assert False / except ValueError``)
and the snippet -- or ``check`` -- holding it ran to its end. In a snippet that stopped on an
exception, asserts that did not run, and asserts in a loop that did not finish, failed. The rewritten
code is compiled here and shipped as code objects, so the sandbox does not import ``ast`` (a few
milliseconds per program).
"""

from __future__ import annotations

import ast
import builtins
import marshal
import sys
from functools import lru_cache

_TEMPLATE = ast.parse("""
try:
    __rlft_ok__ = __rlft_bool__(TEST)
except __rlft_stop__:
    __rlft_rec__(IDX, False)
    raise
except Exception:
    __rlft_ok__ = False
__rlft_rec__(IDX, __rlft_ok__)
""").body


class _Asserts(ast.NodeTransformer):
    """Replaces each ``assert`` by the template above; notes which are inside a loop."""

    def __init__(self):
        self.n, self.looped, self._loops, self.sources = 0, set(), 0, []

    def _loop(self, node):
        self._loops += 1
        self.generic_visit(node)
        self._loops -= 1
        return node

    visit_For = visit_While = visit_AsyncFor = _loop

    def visit_Assert(self, node):
        idx, self.n = self.n, self.n + 1
        self.sources.append(ast.unparse(ast.Assert(node.test))[:200])
        if self._loops:
            self.looped.add(idx)
        fill = _Fill(node.test, idx)
        return [ast.copy_location(fill.visit(ast.parse(ast.unparse(stmt)).body[0]), node) for stmt in _TEMPLATE]


class _Fill(ast.NodeTransformer):
    def __init__(self, test, idx):
        self.test, self.idx = test, idx

    def visit_Name(self, node):
        return self.test if node.id == "TEST" else ast.Constant(self.idx) if node.id == "IDX" else node


class Plan:
    """Test code compiled for the supervisor: ``units`` run in order in one namespace; ``free``: the
    names it takes from the program; ``total``: the number of tests (assert statements, at least 1)."""

    def __init__(self, tests):
        snippets = [tests] if isinstance(tests, str) else list(tests)
        if not snippets or not all(isinstance(s, str) for s in snippets):
            raise ValueError("tests must be a non-empty string or list of strings")
        rewriter, loaded, bound, called, self.units, self.ranges = _Asserts(), set(), set(), set(), [], []
        self.has_check, self.check_range = False, (0, 0)
        for i, src in enumerate(snippets):
            first = rewriter.n
            try:
                tree = ast.parse(src, f"<test {i}>")
            except (SyntaxError, ValueError) as e:
                raise ValueError(f"test {i} does not parse: {e}") from None
            defines_check = any(isinstance(n, ast.FunctionDef) and n.name == "check" for n in tree.body)
            self.has_check |= defines_check
            for node in ast.walk(tree):
                if isinstance(node, ast.Name):
                    (loaded if isinstance(node.ctx, ast.Load) else bound).add(node.id)
                elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                    called.add(node.func.id)
                elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    bound.add(node.name)
                elif isinstance(node, ast.arg):
                    bound.add(node.arg)
                elif isinstance(node, (ast.Import, ast.ImportFrom)):
                    bound.update((a.asname or a.name).split(".")[0] for a in node.names)
                elif isinstance(node, ast.ExceptHandler) and node.name:
                    bound.add(node.name)
            tree = ast.fix_missing_locations(rewriter.visit(tree))
            self.units.append(compile(tree, f"<test {i}>", "exec", dont_inherit=True))
            self.ranges.append((first, rewriter.n))
            if defines_check:
                self.check_range = (first, rewriter.n)
        self.n_asserts, self.looped, self.sources = rewriter.n, rewriter.looped, rewriter.sources
        self.total = max(1, self.n_asserts)
        self.free = sorted(loaded - bound - set(dir(builtins)))
        # Free names that are standard modules the tests use as modules (``math.isclose``), not call
        # (``chunk(xs, 2)`` is the program's function): the supervisor imports its own, trusted copy.
        self.modules = sorted(n for n in self.free if n in getattr(sys, "stdlib_module_names", ()) and n not in called)

    def data(self) -> dict:
        return {"units": self.units, "ranges": self.ranges, "n_asserts": self.n_asserts,
                "looped": set(self.looped), "free": self.free, "has_check": self.has_check,
                "check_range": self.check_range, "modules": self.modules, "total": self.total,
                "sources": self.sources}


@lru_cache(maxsize=4096)
def _cached(key) -> tuple[bytes, int, bool]:
    plan = Plan(key if isinstance(key, str) else list(key))
    return marshal.dumps(plan.data()), plan.total, plan.has_check


def prepare(tests) -> tuple[bytes, int, bool]:
    """(marshalled plan, number of tests, whether it defines check) -- cached: the G completions of
    one prompt share their tests."""
    return _cached(tests if isinstance(tests, str) else tuple(tests))

