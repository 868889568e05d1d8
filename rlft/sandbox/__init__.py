"""Running model-written code against tests, isolated, in parallel, with results it cannot forge.

    >>> from rlft.sandbox import run_tests
    >>> r = run_tests("def add(a, b):\\n    return a + b", ["assert add(1, 2) == 3", "assert add(2, 2) == 5"])
    >>> (r.passed, r.total, r.status)
    (1, 2, 'ok')

See docs/sandbox.md for the threat model and what is isolated with and without bubblewrap.
"""

from .runner import STATUSES, Job, TestResult, bwrap_available, isolation, run_batch, run_tests

__all__ = ["STATUSES", "Job", "TestResult", "bwrap_available", "isolation", "run_batch", "run_tests"]
