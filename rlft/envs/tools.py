"""Tools for environments: Python functions offered to the model through the chat template, tool calls parsed from
its output, run with a time limit, their results returned as ``{"role": "tool", ...}`` messages.

    toolbox = Toolbox([calculator, python_tool()])
    toolbox.schemas()                         # JSON schemas (transformers' get_json_schema: type hints + docstring)
    calls = parse_tool_calls(model_output)    # [ToolCall(name, arguments, error, text)], in order
    messages = toolbox.run_all(calls)         # [{"role": "tool", "name": ..., "content": ...}]

A call that cannot run -- bad JSON, an unknown tool, missing / unexpected / mistyped arguments, a tool that raises,
hangs past its time limit or returns something that is not text -- becomes a tool message that says what went wrong,
never an exception: the model sees the error and may try again. `ToolEnv` turns this into an environment in a few
lines (docs/environments.md).

Formats parsed (``parse_tool_calls(text, formats=...)``; all by default, the first that occurs in the text wins):

* ``hermes`` -- Hermes, Qwen 2/2.5/3, and every model whose template is derived from theirs:
  ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``, any number per turn;
* ``mistral`` -- ``[TOOL_CALLS] [{"name": ..., "arguments": {...}}, ...]`` (also ``[TOOL_CALLS]name[ARGS]{...}``, and
  the JSON list alone: decoding with skip_special_tokens removes the ``[TOOL_CALLS]`` token);
* ``llama3`` -- Llama 3.1-3.3's JSON tool calling: the whole message is ``{"name": ..., "parameters": {...}}``
  (optionally after ``<|python_tag|>``), or several such objects separated by ``;``.

``arguments`` may also be a string that holds a JSON object (the OpenAI wire format).
"""

from __future__ import annotations

import ast
import json
import math
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

FORMATS = ("hermes", "mistral", "llama3")
OPEN, CLOSE = "<tool_call>", "</tool_call>"
MAX_CALLS = 8               # calls run per turn; more are refused with one error message
MAX_CALL_CHARS = 10_000     # characters of one call's JSON; a longer one is refused unparsed
MAX_RESULT_CHARS = 2_000    # characters of a tool's result the model sees (the rest is cut, and it says so)

# A chat template for the tiny test models (rlft.tiny.byte_tokenizer(chat=True) has the same tokens) that renders
# tools the way Qwen 2.5's does: the schemas in the system turn inside <tools></tools>, the calls expected as
# <tool_call> JSON, tool results as <tool_response> blocks in a user turn.
TOOL_CHAT_TEMPLATE = (
    "{%- if tools %}<|system|>{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}\n\n{% endif %}"
    "# Tools\nYou may call one or more functions. Signatures inside <tools></tools>:\n<tools>"
    "{%- for t in tools %}\n{{ t | tojson }}{%- endfor %}\n</tools>\nFor each call return a JSON object with the "
    "function name and arguments inside <tool_call></tool_call> tags:\n<tool_call>\n"
    "{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call></s>"
    "{%- elif messages[0]['role'] == 'system' %}<|system|>{{ messages[0]['content'] }}</s>{%- endif %}"
    "{%- for m in messages %}"
    "{%- if m['role'] == 'tool' %}"
    "{%- if loop.first or messages[loop.index0 - 1]['role'] != 'tool' %}<|user|>{% endif %}"
    "<tool_response>\n{{ m['content'] }}\n</tool_response>"
    "{%- if loop.last or messages[loop.index0 + 1]['role'] != 'tool' %}</s>{% endif %}"
    "{%- elif m['role'] != 'system' %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}<|assistant|>{% endif %}"
)


@dataclass(frozen=True)
class ToolCall:
    """One tool call found in the model's output: ``name`` and ``arguments`` when it could be read, else ``error``
    says why not (the call is then answered with that error). ``text``: the span of the output it came from
    (cut to 200 characters)."""

    name: str | None
    arguments: dict | None
    error: str | None = None
    text: str = ""

    @property
    def ok(self) -> bool:
        return self.error is None


# ------------------------------------------------------------------------------------------------- parsing

class _Duplicate(ValueError):
    pass


def _no_duplicates(pairs):
    seen = {}
    for k, v in pairs:
        if k in seen:
            raise _Duplicate(f"the key {k!r} appears twice")
        seen[k] = v
    return seen


def _bad_constant(name):
    raise ValueError(f"{name} is not valid JSON")


_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_constant=_bad_constant)


def _decode(text: str, start: int) -> tuple[object, int]:
    """One JSON value at ``text[start:]`` (leading white space skipped): (value, end). Raises ValueError with a
    message for the model (bad JSON, duplicate keys, NaN, nesting too deep)."""
    while start < len(text) and text[start].isspace():
        start += 1
    try:
        return _DECODER.raw_decode(text, start)
    except json.JSONDecodeError as e:
        raise ValueError(f"invalid JSON: {e.msg} (character {e.pos - start + 1} of the call)") from None
    except RecursionError:
        raise ValueError("invalid JSON (nested too deeply)") from None


def _call_of(obj, text: str) -> ToolCall:
    """A decoded JSON value -> a ToolCall (or one that names what is wrong with it)."""
    span = text.strip()[:200]
    if not isinstance(obj, dict):
        return ToolCall(None, None, f"a tool call must be a JSON object with \"name\" and \"arguments\", got "
                                    f"{type(obj).__name__}", span)
    name = obj.get("name")
    if not isinstance(name, str) or not name:
        return ToolCall(None, None, "the tool call has no \"name\" (a string)", span)
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):  # the OpenAI wire format: arguments as a JSON string
        try:
            args = _decode(args, 0)[0] if args.strip() else {}
        except ValueError as e:
            return ToolCall(name, None, f"the arguments of {name} are a string that is not a JSON object: {e}", span)
    if not isinstance(args, dict):
        return ToolCall(name, None, f"the arguments of {name} must be a JSON object, got {type(args).__name__}",
                        span)
    extra = sorted(set(obj) - {"name", "arguments", "parameters", "id", "type"})
    if extra:
        return ToolCall(name, None, f"unexpected key(s) in the tool call: {', '.join(extra)} (write "
                                    f"{{\"name\": ..., \"arguments\": {{...}}}})", span)
    return ToolCall(name, args, None, span)


def _hermes(text: str, max_chars: int) -> list[ToolCall]:
    """Every ``<tool_call>JSON</tool_call>``, scanning left to right. JSON is decoded from just after the opening
    tag, so a ``</tool_call>`` or ``<tool_call>`` inside a JSON string is data, not a tag. The last call may miss
    its closing tag (a stop string or max_new_tokens cut it off) when its JSON is complete."""
    out, pos = [], 0
    while (i := text.find(OPEN, pos)) >= 0:
        body = i + len(OPEN)
        close = text.find(CLOSE, body)
        seg_end = close if close >= 0 else len(text)
        span = text[i:seg_end + (len(CLOSE) if close >= 0 else 0)]
        if seg_end - body > max_chars:
            out.append(ToolCall(None, None, f"the tool call is {seg_end - body} characters long, over the limit of "
                                            f"{max_chars}", span[:200]))
            pos = seg_end
            continue
        try:
            obj, end = _decode(text, body)
        except ValueError as e:
            nested = OPEN in text[body:seg_end]
            why = "a <tool_call> tag inside another one" if nested else \
                f"{e}" + ("; the <tool_call> tag is never closed" if close < 0 else "")
            out.append(ToolCall(None, None, why, span[:200]))
            pos = seg_end + (len(CLOSE) if close >= 0 else 0)
            continue
        rest = end
        while rest < len(text) and text[rest].isspace():
            rest += 1
        if text.startswith(CLOSE, rest) or rest == len(text):
            out.append(_call_of(obj, text[body:end]))
            pos = rest + (len(CLOSE) if rest < len(text) else 0)
        else:
            nxt = text.find(CLOSE, rest)
            out.append(ToolCall(None, None, "text after the JSON object inside <tool_call> (one JSON object per tag)",
                                text[i:(nxt if nxt >= 0 else len(text))][:200]))
            pos = nxt + len(CLOSE) if nxt >= 0 else len(text)
    return out


_MISTRAL = "[TOOL_CALLS]"


def _mistral(text: str, max_chars: int) -> list[ToolCall]:
    """``[TOOL_CALLS] [{...}, ...]`` (Mistral v3 and earlier) or ``[TOOL_CALLS]name[ARGS]{...}`` (v11+). Decoding
    with skip_special_tokens removes the ``[TOOL_CALLS]`` token: then a message that is a JSON list of objects with
    a ``name`` is read as the calls (any other text is an answer)."""
    if _MISTRAL not in text:
        s = text.strip()
        if not s.startswith("[{") or len(s) > max_chars * MAX_CALLS:
            return []
        try:
            obj, end = _decode(s, 0)
        except ValueError:
            return []
        if s[end:].strip() or not all(isinstance(o, dict) and "name" in o for o in obj):
            return []
        return [_call_of(o, json.dumps(o)[:200]) for o in obj]
    out, pos = [], 0
    while (i := text.find(_MISTRAL, pos)) >= 0:
        body = i + len(_MISTRAL)
        nxt = text.find(_MISTRAL, body)
        seg = text[body:nxt if nxt >= 0 else len(text)]
        pos = body + len(seg)
        if len(seg) > max_chars:
            out.append(ToolCall(None, None, f"the tool call is {len(seg)} characters long, over the limit of "
                                            f"{max_chars}", seg[:200]))
            continue
        m = re.match(r"\s*([A-Za-z_][\w.-]*)\[ARGS\]", seg)
        try:
            if m:
                args, _ = _decode(seg, m.end())
                out.append(_call_of({"name": m.group(1), "arguments": args}, seg))
                continue
            obj, _ = _decode(seg, 0)
        except ValueError as e:
            out.append(ToolCall(None, None, str(e), seg[:200]))
            continue
        for o in obj if isinstance(obj, list) else [obj]:
            out.append(_call_of(o, json.dumps(o)[:200] if isinstance(o, dict | list) else str(o)))
    return out


def _llama3(text: str, max_chars: int) -> list[ToolCall]:
    """The whole message is one JSON object with a name and ``parameters`` (or ``arguments``), after an optional
    ``<|python_tag|>``; several are separated by ``;``. Anything else is plain text, not a call."""
    s = text.strip()
    tagged = s.startswith("<|python_tag|>")
    s = s.removeprefix("<|python_tag|>").strip()
    if not s.startswith("{") or len(s) > max_chars * MAX_CALLS:
        return []
    out, pos = [], 0
    while pos < len(s):
        try:
            obj, end = _decode(s, pos)
        except ValueError as e:
            return [ToolCall(None, None, str(e), s[:200])] if tagged or out else []
        if not isinstance(obj, dict) or "name" not in obj:
            return out
        out.append(_call_of(obj, s[pos:end]))
        pos = end
        while pos < len(s) and (s[pos].isspace() or s[pos] == ";"):
            pos += 1
    return out


_PARSERS = {"hermes": (OPEN, _hermes), "mistral": (None, _mistral), "llama3": (None, _llama3)}  # None: always tried


def parse_tool_calls(text: str, formats=FORMATS, *, max_calls: int = MAX_CALLS,
                     max_chars: int = MAX_CALL_CHARS) -> list[ToolCall]:
    """The tool calls in one turn of model output, in order (``[]``: the turn calls no tool -- it is an answer).

    ``formats``: which to look for (see the module's docstring), in order; the first whose marker occurs in the
    text is used. A call that cannot be read is a ToolCall with ``error`` set; beyond ``max_calls`` calls one
    error replaces the rest. Never raises on any text."""
    unknown = [f for f in formats if f not in _PARSERS]
    if unknown:
        raise ValueError(f"unknown tool-call format(s) {unknown}: choose from {', '.join(FORMATS)}")
    calls: list[ToolCall] = []
    for f in formats:
        marker, parse = _PARSERS[f]
        if marker is None or marker in text:
            calls = parse(text, max_chars)
            if calls:
                break
    if len(calls) > max_calls:
        calls = calls[:max_calls] + [ToolCall(None, None, f"{len(calls) - max_calls} more tool call(s) not run: at "
                                                          f"most {max_calls} per turn")]
    return calls


# ----------------------------------------------------------------------------------------------- running

_JSON_TYPES = {"string": str, "integer": int, "number": (int, float), "boolean": bool, "array": list,
               "object": dict, "null": type(None)}


def _type_problem(value, schema: dict) -> str | None:
    """Whether ``value`` fits a JSON-schema type (``type`` may be a list; bool is not an integer)."""
    types = schema.get("type")
    if types is None:
        return None
    types = types if isinstance(types, list) else [types]
    for t in types:
        want = _JSON_TYPES.get(t)
        if want is None or (isinstance(value, want) and not (isinstance(value, bool) and t in ("integer", "number"))):
            if "enum" in schema and value not in schema["enum"]:
                return f"must be one of {schema['enum']}"
            return None
    return f"must be of type {' or '.join(types)}, got {type(value).__name__} {json.dumps(value)[:40]}"


class Toolbox:
    """Python functions offered as tools. Each needs type hints and a Google-style docstring with an ``Args:``
    section (transformers builds the schema from them); a function without them is a ValueError here, naming it.

    ``timeout_s``: each call's time limit. A call runs in a thread of its own; one that does not return in time is
    answered with an error and left behind (a thread cannot be killed -- run code that may hang in the sandbox:
    `python_tool`)."""

    def __init__(self, tools: list[Callable], *, timeout_s: float = 10.0, max_result_chars: int = MAX_RESULT_CHARS):
        self.tools = {}
        for fn in tools:
            name = getattr(fn, "__name__", None)
            if not callable(fn) or not name:
                raise ValueError(f"a tool must be a named Python function, got {fn!r}")
            if name in self.tools:
                raise ValueError(f"two tools are called {name!r}: tool names must be unique")
            self.tools[name] = fn
        self._schemas = [_schema(fn) for fn in self.tools.values()]
        self.timeout_s, self.max_result_chars = timeout_s, max_result_chars

    def schemas(self) -> list[dict]:
        """The tools' JSON schemas, as ``apply_chat_template(tools=...)`` renders them."""
        return self._schemas

    def functions(self) -> list[Callable]:
        return list(self.tools.values())

    def check(self, call: ToolCall) -> str | None:
        """Why ``call`` cannot run (unknown tool, missing, unexpected or mistyped arguments), or None."""
        if call.error:
            return call.error
        fn = self.tools.get(call.name)
        if fn is None:
            return f"there is no tool called {call.name!r} (tools: {', '.join(self.tools)})"
        params = next(s for s in self._schemas if s["function"]["name"] == call.name)["function"]["parameters"]
        props = params.get("properties", {})
        missing = [k for k in params.get("required", []) if k not in call.arguments]
        unexpected = [k for k in call.arguments if k not in props]
        if missing or unexpected:
            return (f"{call.name}: " + "; ".join(
                ([f"missing argument(s) {', '.join(missing)}"] if missing else [])
                + ([f"unexpected argument(s) {', '.join(unexpected)}"] if unexpected else []))
                + f" (it takes: {', '.join(props) or 'no arguments'})")
        for k, v in call.arguments.items():
            problem = _type_problem(v, props[k])
            if problem:
                return f"{call.name}: argument {k} {problem}"
        return None

    def run(self, call: ToolCall) -> dict:
        """Run one call; the tool message with its result, or with the error if it could not run."""
        problem = self.check(call)
        if problem:
            return tool_message(call.name, f"Error: {problem}")
        box: dict = {}

        def target():
            try:
                box["value"] = self.tools[call.name](**call.arguments)
            except BaseException as e:  # noqa: BLE001 -- whatever the tool raised goes back to the model
                box["error"] = e

        t = threading.Thread(target=target, name=f"rlft-tool-{call.name}", daemon=True)
        t.start()
        t.join(self.timeout_s)
        if t.is_alive():
            return tool_message(call.name, f"Error: {call.name} did not finish within {self.timeout_s:g} s")
        if "error" in box:
            e = box["error"]
            return tool_message(call.name, f"Error: {call.name} raised {type(e).__name__}: {e}"[:self.max_result_chars])
        return tool_message(call.name, self._text(box["value"]))

    def run_all(self, calls: list[ToolCall]) -> list[dict]:
        return [self.run(c) for c in calls]

    def _text(self, value) -> str:
        if isinstance(value, str):
            text = value
        else:
            try:
                text = json.dumps(value, ensure_ascii=False)
            except (TypeError, ValueError):
                text = str(value)
        if len(text) > self.max_result_chars:
            text = text[:self.max_result_chars] + f"... [cut: {len(text)} characters in all]"
        return text


def tool_message(name: str | None, content: str) -> dict:
    return {"role": "tool", "name": name or "unknown", "content": content}


def _schema(fn: Callable) -> dict:
    from transformers.utils import get_json_schema  # heavy; needed only when tools are built

    try:
        return get_json_schema(fn)
    except Exception as e:  # noqa: BLE001 -- transformers' DocstringParsingException / TypeHintParsingException
        raise ValueError(f"tool {fn.__name__}: {e}. A tool needs type hints on every argument and a docstring "
                         f"with an 'Args:' section describing each one") from None


# ------------------------------------------------------------------------------------------- the calculator

_BINOPS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
           ast.Div: lambda a, b: a / b, ast.FloorDiv: lambda a, b: a // b, ast.Mod: lambda a, b: a % b}
MAX_DIGITS = 200


def _exact(node) -> Fraction:
    if isinstance(node, ast.Expression):
        return _exact(node.body)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        if isinstance(node.value, float) and not math.isfinite(node.value):
            raise ValueError("numbers must be finite")
        return Fraction(str(node.value)) if isinstance(node.value, float) else Fraction(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.UAdd | ast.USub):
        v = _exact(node.operand)
        return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.BinOp) and (type(node.op) in _BINOPS or isinstance(node.op, ast.Pow)):
        a, b = _exact(node.left), _exact(node.right)
        if isinstance(node.op, ast.Pow):
            if b.denominator != 1 or abs(b) > 64:
                raise ValueError("exponents must be whole numbers between -64 and 64")
            out = a ** int(b)
        else:
            if b == 0 and isinstance(node.op, ast.Div | ast.FloorDiv | ast.Mod):
                raise ZeroDivisionError("division by zero")
            out = _BINOPS[type(node.op)](a, b)
            out = Fraction(out)
        if max(len(str(out.numerator)), len(str(out.denominator))) > MAX_DIGITS:
            raise ValueError(f"the result has more than {MAX_DIGITS} digits")
        return out
    raise ValueError(f"only numbers, + - * / // % ** and parentheses are allowed, not {ast.unparse(node)!r}"
                     if isinstance(node, ast.AST) and not isinstance(node, ast.Expression) else "not an expression")


def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression exactly.

    Args:
        expression: Numbers with + - * / // % ** and parentheses, for example "347 * 28 + 5".
    """
    if len(expression) > 500:
        raise ValueError("the expression is over 500 characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError:
        raise ValueError(f"cannot read {expression!r} as arithmetic") from None
    v = _exact(tree)
    if v.denominator == 1:
        return str(v.numerator)
    return f"{v.numerator}/{v.denominator} (about {float(v):.6g})"


# -------------------------------------------------------------------------------------- Python in the sandbox

_OUTPUT_CHARS = 260  # the sandbox's result line holds 300 characters: the tool returns the output's last 260
_WRAP = '''import io as _io, contextlib as _cl
def __rlft_python__():
    _buf = _io.StringIO()
    _ns = {"__name__": "__main__"}
    def _show(v):
        if v is not None:
            print(repr(v))
    _ns["__rlft_show__"] = _show
    try:
        with _cl.redirect_stdout(_buf), _cl.redirect_stderr(_buf):
            exec(compile(%r, "<code>", "exec"), _ns)
    except BaseException as _e:
        _buf.write(f"{type(_e).__name__}: {_e}")
    _out = _buf.getvalue()
    return _out if len(_out) <= %d else "..." + _out[-%d:]
'''
_CHECK = "class ToolOutput(Exception):\n    pass\nraise ToolOutput(__rlft_python__())\n"


def _show_last(code: str) -> str:
    """Like an interactive session: a last statement that is an expression has its value printed."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return code  # the error is reported from the sandbox, with its line
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = tree.body[-1]
        call = ast.Call(ast.Name("__rlft_show__", ast.Load()), [last.value], [])
        tree.body[-1] = ast.copy_location(ast.Expr(call), last)
        return ast.unparse(ast.fix_missing_locations(tree))
    return code


def python_tool(timeout_s: float = 5.0, memory_mb: int = 512, use_bwrap: bool | None = None) -> Callable:
    """A tool ``python(code)`` that runs code in rlft's sandbox (rlft.sandbox: a fresh isolated process, no
    network, read-only files, CPU/memory limits) and returns what it printed -- the last 260 characters, since the
    sandbox hands back one short result line -- or the error it stopped with."""
    from ..sandbox import run_tests  # the sandbox starts processes: imported when the tool is made

    def python(code: str) -> str:
        """Run Python code in an isolated sandbox and return what it printed (the value of a last expression is
        printed too).

        Args:
            code: Python source code.
        """
        program = _WRAP % (_show_last(code), _OUTPUT_CHARS, _OUTPUT_CHARS - 3)
        r = run_tests(program, _CHECK, timeout_s=timeout_s, memory_mb=memory_mb, use_bwrap=use_bwrap)
        if r.status == "timeout":
            return f"Error: the code did not finish within {timeout_s:g} s"
        if r.status == "memory":
            return f"Error: the code ran out of memory ({memory_mb} MB)"
        head, sep, out = r.detail.partition("ToolOutput: ")
        if r.status != "ok" or not sep:
            return f"Error: the sandbox stopped the code ({r.status}: {r.detail[:200]})"
        return out

    return python


# ------------------------------------------------------------------------------------------- the base class

DESCRIBE = ("template", "prompt", "none")


class ToolEnv:
    """An environment where the model may call tools before it answers -- subclass it and write two methods:

        class Weather(ToolEnv):
            tools = [get_weather]                     # Python functions (type hints + docstring)

            def prompt(self, row):                    # the first observation (default: row["prompt"])
                return row["question"]

            def answer(self, text: str) -> float:     # the reward of the final answer
                return float(self.row["expected"] in text)

    A turn with tool calls is answered with one ``tool`` message per call (errors included); a turn without any
    is the answer: ``answer(text)`` is its reward and the episode ends (terminated). ``max_tool_turns`` (None: no
    limit but env.max_turns) ends a model that never answers (truncated, reward 0). ``tool_reward`` (override)
    gives a reward for a tool turn (default 0). ``describe_tools``: how the model learns what the tools are --
    ``template`` (default): ``reset``'s info carries their schemas under ``tools``, which the rollout passes to the
    chat template (``apply_chat_template(tools=...)``; it needs a chat template); ``prompt``: the first observation
    describes them itself (`with_tools`: the words of Qwen 2.5's template), for any tokenizer; ``none``: not at all
    (a model that learnt the calls from demonstrations)."""

    tools: list[Callable] = []
    formats: tuple = FORMATS

    def __init__(self, *, tools: list[Callable] | None = None, tool_timeout_s: float = 10.0,
                 max_tool_turns: int | None = None, describe_tools: str = "template"):
        if describe_tools not in DESCRIBE:
            raise ValueError(f"{type(self).__name__}: describe_tools must be one of {', '.join(DESCRIBE)}, got "
                             f"{describe_tools!r}")
        self.toolbox = Toolbox(list(self.tools if tools is None else tools), timeout_s=tool_timeout_s)
        self.max_tool_turns, self.describe_tools = max_tool_turns, describe_tools
        self.row: dict = {}
        self.turn = self.tool_turns = self.tool_errors = 0
        self.results: list[dict] = []     # every tool message of the episode, in order

    def prompt(self, row: dict):
        """The first observation: a string (a user message) or a list of chat messages."""
        return row["prompt"]

    def answer(self, text: str) -> float:
        raise NotImplementedError(f"{type(self).__name__} must define answer(text) -> reward")

    def tool_reward(self, calls: list[ToolCall], results: list[dict]) -> float:
        return 0.0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        self.row = dict((options or {}).get("row") or {})
        self.seed = seed
        self.turn = self.tool_turns = self.tool_errors = 0
        self.results = []
        obs, schemas = self.prompt(self.row), self.toolbox.schemas()
        if self.describe_tools == "prompt":
            return with_tools(obs, schemas), {}
        return obs, ({"tools": schemas} if self.describe_tools == "template" else {})

    def step(self, action: str):
        self.turn += 1
        calls = parse_tool_calls(action, self.formats)
        if not calls:
            return None, float(self.answer(action)), True, False, self.info()
        self.tool_turns += 1
        results = self.toolbox.run_all(calls)
        self.tool_errors += sum(m["content"].startswith("Error: ") for m in results)
        self.results += results
        reward = float(self.tool_reward(calls, results))
        if self.max_tool_turns is not None and self.tool_turns >= self.max_tool_turns:
            return None, reward, False, True, self.info()
        return results, reward, False, False, self.info()

    def info(self) -> dict:
        return {"turn": self.turn, "tool_turns": self.tool_turns, "tool_errors": self.tool_errors}


TOOLS_PROMPT = ("# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with "
                "function signatures within <tools></tools> XML tags:\n<tools>\n{schemas}\n</tools>\n\nFor each "
                "function call, return a json object with function name and arguments within <tool_call></tool_call> "
                "XML tags:\n<tool_call>\n{{\"name\": <function-name>, \"arguments\": <args-json-object>}}\n"
                "</tool_call>")


def with_tools(obs, schemas: list[dict]):
    """A first observation with the tools described as Qwen 2.5's chat template describes them (Hermes format): in
    the system message of a list of messages (merged into one that is there), or before a string prompt."""
    text = TOOLS_PROMPT.format(schemas="\n".join(json.dumps(s, ensure_ascii=False) for s in schemas))
    if isinstance(obs, str):
        return f"{text}\n\n{obs}"
    msgs = [dict(m) for m in obs]
    if msgs and msgs[0].get("role") == "system":
        msgs[0]["content"] = f"{msgs[0]['content']}\n\n{text}"
        return msgs
    return [{"role": "system", "content": text}] + msgs
