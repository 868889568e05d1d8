"""``calculator``: arithmetic word problems whose reward needs the calculator tool's exact answer.

Each problem multiplies two-digit numbers (``47 * 28 + 15``), which few small models get right in their head. The
model may call ``calculator(expression)`` (rlft.envs.tools.calculator: exact arithmetic) as often as it likes, then
answers in a turn without a tool call. Reward, on that final turn: 1 when the last number in the answer equals the
exact result (and, with ``require_tool`` -- the default -- the calculator returned that number in this episode: a
lucky guess earns nothing), else 0. ``tool_bonus`` (default 0) adds a shaping reward on the first tool turn whose
calls all ran without error. ``describe_tools`` (ToolEnv's: template, prompt or none) says how the tool is described
to the model. Rows: ``prompt`` (the problem and how to answer), ``expression``, ``answer`` (the exact integer).
Write a dataset with ``python -m rlft.envs write calculator data/calculator``.
"""

from __future__ import annotations

import random
import re

from ..env import register
from .tools import ToolCall, ToolEnv, calculator

INSTRUCTION = "Use the calculator tool, then give the final answer as a number."
NAMES = ["Ada", "Ben", "Cleo", "Dev", "Eva", "Finn", "Gus", "Hana", "Ivo", "Jun"]
TEMPLATES = [  # (text, expression): a, b, c drawn per problem, in the text's order
    ("{n} packs {a} apples into each of {b} crates. How many apples are there?", "{a} * {b}"),
    ("A train runs {a} km a day for {b} days. How many km does it run?", "{a} * {b}"),
    ("{n} buys {a} boxes of {b} nails and has {c} nails already. How many nails now?", "{a} * {b} + {c}"),
    ("A hall has {a} rows of {b} seats and {c} seats are taken. How many seats are free?", "{a} * {b} - {c}"),
    ("{n} saves {a} coins a week for {b} weeks, then spends {c}. How many coins are left?", "{a} * {b} - {c}"),
]
NUMBER = re.compile(r"-?\d+")


def problem(rng: random.Random) -> dict:
    """One word problem: {prompt, expression, answer} (an integer answer, always positive)."""
    text, expr = rng.choice(TEMPLATES)
    v = {"n": rng.choice(NAMES), "a": rng.randint(13, 99), "b": rng.randint(13, 99), "c": rng.randint(11, 99)}
    expression = expr.format(**v)
    return {"prompt": f"{text.format(**v)} {INSTRUCTION}", "expression": expression,
            "answer": calculator(expression)}


def rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [problem(rng) for _ in range(n)]


def tool_call_text(expression: str) -> str:
    """The call a model makes (Hermes/Qwen format): what the worked example's warm start demonstrates."""
    return f'<tool_call>{{"name": "calculator", "arguments": {{"expression": "{expression}"}}}}</tool_call>'


@register("calculator")
class CalculatorEnv(ToolEnv):
    """Word problems with a calculator tool; reward 1 for the exact answer (see the module's docstring)."""

    tools = [calculator]

    def __init__(self, require_tool: bool = True, tool_bonus: float = 0.0, **kw):
        super().__init__(**kw)
        self.require_tool, self.tool_bonus = require_tool, tool_bonus
        self.bonus_paid = False

    def reset(self, *, seed=None, options=None):
        self.bonus_paid = False
        obs, info = super().reset(seed=seed, options=options)
        if "answer" not in self.row:
            raise ValueError(f"the calculator environment needs rows with 'prompt' and 'answer' columns (the row has "
                             f"{', '.join(self.row) or 'no columns'}); write them with python -m rlft.envs write "
                             f"calculator FOLDER")
        return obs, info

    def answer(self, text: str) -> float:
        found = NUMBER.findall(text.replace(",", ""))
        expected = str(self.row["answer"])
        if not found or found[-1] != expected:
            return 0.0
        if self.require_tool and not any(m["content"] == expected for m in self.results):
            return 0.0
        return 1.0

    def tool_reward(self, calls: list[ToolCall], results: list[dict]) -> float:
        if self.bonus_paid or any(m["content"].startswith("Error: ") for m in results):
            return 0.0
        self.bonus_paid = True
        return self.tool_bonus
