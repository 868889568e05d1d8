"""Executable documentation: every command and code block in README.md and docs/**/*.md runs here.

Every fenced block of a runnable language (bash, sh, shell, console, python, py, yaml, yml) and every block with
no language at all carries a marker, an HTML comment on the line before its fence (GitHub does not render it):

    <!-- doc-test: run -->                       run it as written (with the substitutions below)
    <!-- doc-test: run overrides="train.steps=2 rollout.max_new_tokens=8" sub="checkpoint-500 => checkpoint-2"
                   setup="feedback-db" group="usage" skip-lines="^pip install" reason="..." timeout=120 -->
    <!-- doc-test: skip reason="needs a GPU and vLLM" -->
    <!-- doc-test: xfail reason="rlft eval crashes on ... (code bug)" -->   run; must fail; red once it passes

(one line; shown on two here). `test_every_block_has_a_marker` fails when a block has none, so new docs cannot
drift untested. What "run" means:

* bash / sh / shell / console / unlabeled: each logical line (backslash continuations joined, `#` comments
  dropped; for console only the `$ ` lines) is one command, run as a subprocess from a fresh temporary folder with
  the repository's `.venv/bin` first on PATH (`rlft`, `python`, `torchrun`). Every block starts with `./my-model`
  (a tiny Llama saved by `rlft.tiny.save_tiny`), `data/train.jsonl` and `data/test.jsonl` (prompt / reference
  rows) and a copy of `configs/` with the table `SUBSTITUTIONS` applied (hub ids become `./my-model`) and the
  marker's `overrides` merged in. `rlft train` / `rlft sft` commands also get the overrides on their command line,
  before their own key=value pairs, so a value the docs write explicitly wins: shrink those with `sub`.
* python / py: the block is written to a file and run with the venv's python from such a folder.
* yaml / yml: a config (a mapping) or a list of rewards, validated as rlft validates a config: `Config.from_dict`
  (keys, values, presets) and every reward resolved with its args checked (`rlft.rewards.check_columns`).

`sub="A => B ;; C => D"` replaces text in the block; `skip-lines` (a regex on each command, needs `reason`)
leaves those commands out; `group` runs the blocks of one file that share it in one folder, in order, as one test;
`setup` adds named fixtures (`SETUPS`); `file="name"` writes the block to that file in the folder instead of
running it (a YAML one is also validated), for the files a page asks the reader to create. Keep the file under
~4 minutes on 2 cores: a few train steps, tiny data.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent  # the interpreter running the tests: the repository's .venv
RUN_LANGS = {"bash", "sh", "shell", "console", "python", "py", "yaml", "yml"}
SHELL_LANGS = {"bash", "sh", "shell", "console", ""}
VERBS = {"run", "skip", "xfail"}
COMMAND_WORDS = {"rlft", "python", "python3", "pip", "torchrun", "make", "bash", "sh", "cd", "export", "accelerate"}
ATTRS = {"reason", "overrides", "sub", "setup", "group", "skip-lines", "timeout", "lang", "file"}

# Placeholders in the docs and the shipped configs -> what a test run uses (applied to run blocks and to the
# copies of configs/). Hub ids would need the network; 8 processes would need 8 cores.
SUBSTITUTIONS = {
    "Qwen/Qwen2.5-0.5B-Instruct": "./my-model",
    "Qwen/Qwen2.5-7B-Instruct": "./my-model",
    "Qwen/Qwen2-0.5B-Instruct": "./my-model",
    "Qwen/Qwen2.5-Coder-0.5B-Instruct": "./my-model",
    "Qwen/Qwen2.5-Coder-0.5B": "./my-model",
    "google/flan-t5-base": "./my-model",
    "./small-model": "./my-model",
    "--nproc_per_node 8": "--nproc_per_node 2",
}

MARKER = re.compile(r"^\s*<!--\s*doc-test:\s*(?P<body>.*?)\s*-->\s*$")
FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})(?P<lang>[^`\s]*)[^`]*$")
ATTR = re.compile(r"""(?P<key>[\w-]+)=(?:"(?P<dq>[^"]*)"|'(?P<sq>[^']*)'|(?P<bare>[^\s"']+))""")


# ------------------------------------------------------------------------------------------------- parsing

@dataclass
class Block:
    """One fenced block of a Markdown file and the doc-test marker on the line before it (if any)."""

    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    text: str  # the block's content, dedented by the fence's indentation
    marker: str | None  # the marker's body, e.g. 'run overrides="..."'; None without a marker

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT) if self.path.is_absolute() else self.path}:{self.line}"


@dataclass
class Marker:
    verb: str
    attrs: dict[str, str] = field(default_factory=dict)


def parse_marker(body: str) -> Marker:
    """'run key="v" k2='v "2"' k3=v3' -> Marker('run', {...}). Raises ValueError naming what is wrong."""
    verb, _, rest = body.strip().partition(" ")
    if verb not in VERBS:
        raise ValueError(f"unknown doc-test verb {verb!r} (use one of: {', '.join(sorted(VERBS))})")
    attrs = {m["key"]: next(v for v in (m["dq"], m["sq"], m["bare"]) if v is not None) for m in ATTR.finditer(rest)}
    leftover = ATTR.sub("", rest).strip()
    if leftover:
        raise ValueError(f"cannot read {leftover!r} in the marker (attributes look like key=\"value\")")
    unknown = set(attrs) - ATTRS
    if unknown:
        raise ValueError(f"unknown marker attribute(s) {', '.join(sorted(unknown))} "
                         f"(known: {', '.join(sorted(ATTRS))})")
    return Marker(verb, attrs)


def parse_blocks(path: Path, text: str) -> list[Block]:
    """Every fenced block of a Markdown text, with the marker on the last non-blank line before its fence."""
    lines, blocks, i = text.splitlines(), [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence = len(m["indent"]), m["fence"]
        end = i + 1
        while end < len(lines) and not re.match(rf"^\s*{re.escape(fence[0])}{{{len(fence)},}}\s*$", lines[end]):
            end += 1
        body = "\n".join(line[indent:] if not line[:indent].strip() else line.lstrip() for line in lines[i + 1:end])
        prev = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        mk = MARKER.match(prev)
        blocks.append(Block(path, i + 1, m["lang"].lower(), body + "\n", mk["body"] if mk else None))
        i = end + 1
    return blocks


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def looks_like_command(text: str) -> bool:
    """A block with no language whose first line starts like a command (`rlft eval ...`, `$ python ...`), not
    like program output (`rlft eval: task ...`), a table or a diagram."""
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    words = first.removeprefix("$ ").split()
    return bool(words) and words[0] in COMMAND_WORDS and not (len(words) > 1 and words[1].endswith(":"))


def collected(blocks: list[Block]) -> list[Block]:
    """The blocks that must carry a marker: runnable languages, and blocks with no language that hold commands
    (tag output ```text)."""
    return [b for b in blocks if b.lang in RUN_LANGS or (b.lang == "" and (b.marker or looks_like_command(b.text)))]


def marker_problems(blocks: list[Block]) -> list[str]:
    """What is wrong with the markers of these blocks, one line each, naming file:line."""
    problems = []
    for b in collected(blocks):
        if b.marker is None:
            problems.append(f"{b.where}: a ```{b.lang} block without a doc-test marker: add <!-- doc-test: run --> "
                            f"(see tests/test_docs.py) or <!-- doc-test: skip reason=\"...\" -->")
            continue
        try:
            mk = parse_marker(b.marker)
        except ValueError as e:
            problems.append(f"{b.where}: {e}")
            continue
        needs_reason = mk.verb in ("skip", "xfail") or "skip-lines" in mk.attrs
        if needs_reason and not mk.attrs.get("reason", "").strip():
            problems.append(f"{b.where}: doc-test {mk.verb} needs reason=\"...\" (why it does not run, or fails)")
        unknown_setup = set(mk.attrs.get("setup", "").split()) - set(SETUPS)
        if unknown_setup:
            problems.append(f"{b.where}: unknown setup {', '.join(sorted(unknown_setup))} (known: {', '.join(SETUPS)})")
    return problems


def all_blocks() -> list[Block]:
    return [b for p in doc_files() for b in parse_blocks(p, p.read_text(encoding="utf-8"))]


# ---------------------------------------------------------------------------------------------- test units

@dataclass
class Unit:
    """What one test runs: one block, or the blocks of one file that share a group (in order)."""

    name: str
    verb: str
    reason: str
    blocks: list[tuple[Block, Marker]]


def units() -> list[Unit]:
    out: dict[str, Unit] = {}
    for b in collected(all_blocks()):
        try:
            mk = parse_marker(b.marker or "")
        except ValueError:
            continue  # reported by test_every_block_has_a_marker
        group = mk.attrs.get("group")
        name = f"{b.path.relative_to(ROOT)}:{group}" if group else b.where
        unit = out.setdefault(name, Unit(name, mk.verb, mk.attrs.get("reason", ""), []))
        if mk.verb == "xfail":
            unit.verb, unit.reason = "xfail", mk.attrs.get("reason", "")
        unit.blocks.append((b, mk))
    return list(out.values())


def subs(mk: Marker, block_text: str) -> list[tuple[str, str]]:
    """The marker's `sub="A => B ;; C => D"` pairs; each A must occur in the block (else the marker is stale)."""
    pairs = []
    for pair in filter(str.strip, mk.attrs.get("sub", "").split(";;")):
        old, arrow, new = (s.strip() for s in pair.partition("=>"))
        if not arrow or old not in block_text:
            raise AssertionError(f"sub {pair!r}: {old!r} is not in the block (update the marker)")
        pairs.append((old, new))
    return pairs


def substitute(text: str, pairs: list[tuple[str, str]]) -> str:
    for old, new in [*SUBSTITUTIONS.items(), *pairs]:
        text = text.replace(old, new)
    return text


def commands(text: str, lang: str) -> list[str]:
    """Logical command lines of a shell block: continuations joined, comments and blank lines dropped."""
    raw = text.splitlines()
    if lang == "console":
        raw = [line[2:] for line in raw if line.startswith("$ ")]
    joined, out = "", []
    for line in raw:
        if line.rstrip().endswith("\\"):
            joined += line.rstrip()[:-1] + " "
            continue
        joined += line
        if shlex.split(joined, comments=True):
            out.append(joined.strip())
        joined = ""
    return out


# -------------------------------------------------------------------------------------------------- set-up

def _tiny_model(tmp: Path, cache: Path) -> None:
    if not (cache / "my-model").exists():
        from rlft.tiny import byte_tokenizer, save_tiny, tiny_causal_lm

        tok = byte_tokenizer()
        save_tiny(cache / "my-model", tiny_causal_lm(tok, hidden=32, layers=2, heads=2, max_positions=512), tok)
    shutil.copytree(cache / "my-model", tmp / "my-model")


def _data(tmp: Path) -> None:
    rows = [{"prompt": f"{a}+{b}=", "reference": str(a + b)} for a in range(5) for b in range(5)]
    (tmp / "data").mkdir(exist_ok=True)
    for name, part in (("train.jsonl", rows), ("test.jsonl", rows[:6])):
        (tmp / "data" / name).write_text("".join(json.dumps(r) + "\n" for r in part))


def _configs(tmp: Path, overrides: list[str]) -> None:
    """configs/ copied with SUBSTITUTIONS applied and the overrides merged into every file."""
    (tmp / "configs").mkdir()
    for src in sorted((ROOT / "configs").glob("*.yaml")):
        text = src.read_text()
        for old, new in SUBSTITUTIONS.items():
            text = text.replace(old, new)
        raw = yaml.safe_load(text) or {}
        for item in overrides:
            set_key(raw, item)
        (tmp / "configs" / src.name).write_text(yaml.safe_dump(raw, sort_keys=False))


def set_key(raw: dict, item: str) -> None:
    """Apply one `a.b.c=value` override to a raw YAML mapping, as `Config.load` reads overrides."""
    key, _, value = item.partition("=")
    parts = key.split(".")
    if isinstance(raw.get("rewards"), list):  # `rewards: [...]` is sugar for rewards.components
        raw["rewards"] = {"components": raw["rewards"]}
    node = raw
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = yaml.safe_load(value) if value.strip() else ""


def _feedback_db(tmp: Path) -> None:
    """runs/x/feedback.sqlite with a few rated pairs and scores (what `rlft reward-model train` reads)."""
    from rlft.feedback.store import Store

    db = tmp / "runs" / "x" / "feedback.sqlite"
    db.parent.mkdir(parents=True, exist_ok=True)
    with Store(str(db)) as s:
        s.add_samples("r", 0, ["Q: "] * 4, ["no", "yes it is", "ok", "a b c d e f"], [0, 0, 1, 1],
                      pairs=[(0, 1), (2, 3)])
        s.add_samples("r", 1, ["Q: "] * 2, ["short", "a longer answer"], [0, 0])
        while (item := s.next_item("ann")) is not None:
            if item["kind"] == "pair":
                s.rate("ann", item["id"], choice="b")
            else:
                s.rate("ann", item["id"], score=4)


def _my_rewards(tmp: Path) -> None:
    """my_rewards.py, the file docs/rewards.md names in `fn: my_rewards.py:politeness`."""
    (tmp / "my_rewards.py").write_text(
        "def politeness(prompts, completions, **_):\n"
        "    return [1.0 if 'please' in c.lower() else 0.0 for c in completions]\n")


def _translation_data(tmp: Path) -> None:
    """data/translation/{train,eval}.jsonl, which configs/translation.yaml reads."""
    from rlft.tasks.text_examples import write_example

    write_example("translation", tmp / "data" / "translation")


def _code_data(tmp: Path) -> None:
    """data/code/*.jsonl, the shipped problems the code task configs read."""
    shutil.copytree(ROOT / "data" / "code", tmp / "data" / "code")


SETUPS = {"feedback-db": _feedback_db, "my-rewards": _my_rewards, "translation-data": _translation_data,
          "code-data": _code_data}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("doc-cache")


def prepare(tmp: Path, cache: Path, unit: Unit) -> None:
    _tiny_model(tmp, cache)
    _data(tmp)
    overrides = [o for _, mk in unit.blocks for o in mk.attrs.get("overrides", "").split()]
    _configs(tmp, overrides)
    for _, mk in unit.blocks:
        for name in mk.attrs.get("setup", "").split():
            SETUPS[name](tmp)


# --------------------------------------------------------------------------------------------------- running

def with_overrides(argv: list[str], overrides: list[str]) -> list[str]:
    """`rlft train|sft CONFIG k=v ...` (also under torchrun / python -m): the overrides go right after CONFIG,
    before the command's own key=value pairs, so the values the docs write win."""
    for i, tok in enumerate(argv[:-1]):
        if tok.endswith("rlft") and argv[i + 1] in ("train", "sft"):
            j = i + 2
            if j < len(argv) and not argv[j].startswith("-") and "=" not in argv[j]:
                j += 1  # the YAML config
            return argv[:j] + overrides + argv[j:]
    return argv


def run_command(cmd: str, tmp: Path, mk: Marker) -> str:
    argv = shlex.split(cmd, comments=True)
    exe = shutil.which(argv[0], path=str(VENV_BIN))
    if exe is None:
        raise AssertionError(f"{cmd!r}: {argv[0]} is not in {VENV_BIN}: leave it out with skip-lines and a reason")
    argv = with_overrides([exe, *argv[1:]], mk.attrs.get("overrides", "").split())
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}", "OMP_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    t0 = time.perf_counter()
    try:
        p = subprocess.run(argv, cwd=tmp, env=env, capture_output=True, text=True,
                           timeout=int(mk.attrs.get("timeout", 180)))
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"{cmd!r} ran over {e.timeout} s") from None
    print(f"{time.perf_counter() - t0:6.1f} s  {cmd}")  # shown with -s: what each documented command costs
    if p.returncode != 0:
        raise AssertionError(f"{cmd!r} exited with {p.returncode}\n--- stdout\n{p.stdout[-3000:]}\n"
                             f"--- stderr\n{p.stderr[-3000:]}")
    return p.stdout


def run_shell(b: Block, mk: Marker, tmp: Path) -> None:
    """Each command in order; `skip-lines` matches the command as the docs write it (before substitution)."""
    skip, pairs = mk.attrs.get("skip-lines"), subs(mk, b.text)
    for cmd in commands(b.text, mk.attrs.get("lang", b.lang)):
        if skip and re.search(skip, cmd):
            continue
        run_command(substitute(cmd, pairs), tmp, mk)


def run_python(b: Block, mk: Marker, tmp: Path) -> None:
    script = tmp / f"doc_block_{b.line}.py"
    script.write_text(substitute(b.text, subs(mk, b.text)))
    run_command(f"python {script.name}", tmp, mk)


def check_yaml(b: Block, mk: Marker, tmp: Path) -> None:
    """A config or a list of rewards, validated as rlft validates a config, rewards resolved and args checked."""
    from rlft.config import Config
    from rlft.rewards import Reward, check_columns, required_columns, resolve

    raw = yaml.safe_load(substitute(b.text, subs(mk, b.text)))
    cfg = Config.from_dict({"rewards": raw} if isinstance(raw, list) else raw)
    here = os.getcwd()
    os.chdir(tmp)  # `fn: file.py:function` is relative to the folder a run starts in
    try:
        rewards = [Reward(s.name or s.fn, resolve(s.fn), s.weight, dict(s.args)) for s in cfg.rewards.components]
    finally:
        os.chdir(here)
    # the columns a reward needs are assumed present: the check here is on the args (names, spelling)
    columns = {"prompt", "reference"} | {c for r in rewards for c in required_columns(r.fn, r.args)}
    check_columns(rewards, columns)


def run_unit(unit: Unit, tmp: Path) -> None:
    for b, mk in unit.blocks:
        lang = mk.attrs.get("lang", b.lang)
        if "file" in mk.attrs:  # a file the docs ask the reader to create: written, and a YAML one validated
            (tmp / mk.attrs["file"]).parent.mkdir(parents=True, exist_ok=True)
            (tmp / mk.attrs["file"]).write_text(substitute(b.text, subs(mk, b.text)))
            if lang not in ("yaml", "yml"):
                continue
        if lang in SHELL_LANGS:
            run_shell(b, mk, tmp)
        elif lang in ("python", "py"):
            run_python(b, mk, tmp)
        else:
            check_yaml(b, mk, tmp)


# ---------------------------------------------------------------------------------------------------- tests

def test_every_block_has_a_marker():
    problems = marker_problems(all_blocks())
    assert not problems, "doc blocks without a valid doc-test marker:\n" + "\n".join(problems)


def test_marker_check_catches_unmarked_blocks():
    text = ("# t\n\n```bash\nrlft train x.yaml\n```\n\n<!-- doc-test: skip -->\n```python\nprint(1)\n```\n\n"
            "```text\nnot collected\n```\n\n<!-- doc-test: run setup=\"nope\" -->\n```\nrlft config-help\n```\n"
            "<!-- doc-test: walk -->\n```yaml\na: 1\n```\n\n```\n$ python -m x\n```\n\n```\nrlft eval: output\n```\n"
            "  ```\n  | a table |\n  ```\n")
    problems = marker_problems(parse_blocks(Path("t.md"), text))
    assert [p.split(":")[1] for p in problems] == ["3", "8", "17", "21", "25"], problems
    assert "needs reason" in problems[1] and "unknown setup nope" in problems[2] and "walk" in problems[3]


def test_commands_and_overrides():
    text = "# x\nrlft train a.yaml k=1 \\\n    --out o   # why\n\n$ not console\n"
    assert commands(text, "bash") == ["rlft train a.yaml k=1      --out o   # why", "$ not console"]
    assert commands("$ rlft eval x\nout\n", "console") == ["rlft eval x"]
    argv = with_overrides(["/v/rlft", "sft", "c.yaml", "sft.steps=500", "--out", "o"], ["sft.steps=2"])
    assert argv == ["/v/rlft", "sft", "c.yaml", "sft.steps=2", "sft.steps=500", "--out", "o"]


@pytest.mark.timeout(600)  # the README's Use block runs seven commands in a row; a busy machine doubles each
@pytest.mark.parametrize("unit", units(), ids=lambda u: u.name)
def test_doc_block(unit: Unit, tmp_path, cache):
    if unit.verb == "skip":
        pytest.skip(unit.reason)
    prepare(tmp_path, cache, unit)
    if unit.verb == "run":
        run_unit(unit, tmp_path)
        return
    try:
        run_unit(unit, tmp_path)
    except Exception as e:  # noqa: BLE001 -- an xfail block may fail in any way; the reason names the bug
        pytest.xfail(f"{unit.reason} -- failed as expected: {str(e).splitlines()[0]}")
    pytest.fail(f"{unit.name} is marked xfail ({unit.reason}) but now runs: remove the xfail marker")
