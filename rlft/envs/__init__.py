"""The environments rlft ships, registered under short names for ``env.cls`` (docs/environments.md), and the tool
helpers they are built on (rlft/envs/tools.py).

=============== ============================================================ ======================================
name            what                                                         data
=============== ============================================================ ======================================
calculator      word problems; the exact answer needs the calculator tool    python -m rlft.envs write calculator
guess_number    guess a number; a scripted user says "Higher." / "Lower."    python -m rlft.envs write guess_number
code_repair     write a function, see the failing tests, fix it              data/code/bugfix.jsonl (shipped)
=============== ============================================================ ======================================
"""

from .calculator import CalculatorEnv
from .code_repair import CodeRepairEnv
from .guess_number import GuessNumberEnv
from .tools import FORMATS, TOOL_CHAT_TEMPLATE, Toolbox, ToolCall, ToolEnv, parse_tool_calls, python_tool

__all__ = ["FORMATS", "TOOL_CHAT_TEMPLATE", "CalculatorEnv", "CodeRepairEnv", "GuessNumberEnv", "ToolCall",
           "ToolEnv", "Toolbox", "parse_tool_calls", "python_tool"]
# (the calculator tool is rlft.envs.tools.calculator: rlft.envs.calculator is the environment's module)
