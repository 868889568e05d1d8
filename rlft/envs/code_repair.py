"""``code_repair``: the model writes a function, sees the sandbox's failing tests, and gets another turn.

Rows are rlft's code task rows (rlft/tasks/code.py; ``data/code/bugfix.jsonl`` ships with the repository, and the
completion and style rows work too): ``prompt``, ``tests``, ``entry_point``, optional ``code_prefix``. Each turn
the code is taken from the model's answer as the code rewards take it (`rlft.rewards.code.extract_code`) and run
against all the row's tests in rlft's sandbox (`rlft.sandbox.run_tests`). When every test passes, or after
``max_attempts`` turns, the episode ends (terminated); otherwise the user replies with the result -- how many tests
passed, the first failing assert or the error -- and asks for the whole function again.

Reward (``reward``): ``final`` (default) -- the pass rate of the last attempt, on the last turn, 0 before;
``delta`` -- each turn the change in pass rate since the previous attempt (the first against 0), which sums to the
same final pass rate but credits the turn that made the progress. ``step`` is ``async`` (the sandbox run waits in a
thread), so the episodes of a step run their tests concurrently.
"""

from __future__ import annotations

import asyncio

from ..env import register
from ..rewards.code import extract_code
from ..sandbox import run_tests

FEEDBACK = ("Your code passed {passed} of {total} tests{status}. {detail}\nFix it and answer with the whole "
            "function in one ```python code block.")


def feedback(passed: int, total: int, status: str, detail: str) -> str:
    """The user's reply after a failed attempt (what the model sees of the sandbox's result)."""
    return FEEDBACK.format(passed=passed, total=total, status="" if status == "ok" else f" ({status})",
                           detail=detail.strip() or "")


@register("code_repair")
class CodeRepairEnv:
    """Write, test, repair (see the module's docstring)."""

    def __init__(self, max_attempts: int = 3, reward: str = "final", timeout_s: float = 5.0, memory_mb: int = 512):
        if reward not in ("final", "delta"):
            raise ValueError(f"code_repair: reward must be final or delta, got {reward!r}")
        if max_attempts < 1:
            raise ValueError(f"code_repair: max_attempts must be >= 1, got {max_attempts}")
        self.max_attempts, self.reward, self.timeout_s, self.memory_mb = max_attempts, reward, timeout_s, memory_mb
        self.row: dict = {}
        self.attempts, self.last_rate = 0, 0.0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        self.row = dict((options or {}).get("row") or {})
        missing = [c for c in ("prompt", "tests") if c not in self.row]
        if missing:
            raise ValueError(f"code_repair: the row has no {' or '.join(missing)} column (code task rows: "
                             f"rlft/tasks/code.py, data/code/*.jsonl)")
        self.attempts, self.last_rate = 0, 0.0
        return self.row["prompt"], {}

    async def step(self, action: str):
        row = self.row
        code = extract_code(action, row.get("code_prefix"), row.get("entry_point"))
        result = await asyncio.to_thread(run_tests, code, row["tests"], entry_point=row.get("entry_point"),
                                         timeout_s=self.timeout_s, memory_mb=self.memory_mb)
        self.attempts += 1
        rate = result.pass_rate
        done = result.all_passed or self.attempts >= self.max_attempts
        if self.reward == "delta":
            reward = rate - self.last_rate
        else:
            reward = rate if done else 0.0
        self.last_rate = rate
        info = {"attempt": self.attempts, "passed": result.passed, "total": result.total, "status": result.status}
        if done:
            return None, reward, True, False, info
        return feedback(result.passed, result.total, result.status, result.detail), reward, False, False, info
