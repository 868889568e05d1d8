"""The shipped environments (rlft/envs/): scripted actions -> rewards, termination, observations; their data; their
configs load and train one step through `rlft.train`; docs/environments.md quotes the worked examples' figures."""

import asyncio
import json
import re
from pathlib import Path

import pytest

from rlft.config import Config
from rlft.env import resolve
from rlft.envs import CalculatorEnv, CodeRepairEnv, GuessNumberEnv, calculator, examples, guess_number
from rlft.envs.calculator import tool_call_text

ROOT = Path(__file__).resolve().parent.parent


def test_registered_names():
    assert resolve("calculator") is CalculatorEnv
    assert resolve("guess_number") is GuessNumberEnv
    assert resolve("code_repair") is CodeRepairEnv


# ------------------------------------------------------------------------------------------------ calculator

def test_calculator_rows_are_seeded_and_exact():
    rows = calculator.rows(50, seed=3)
    assert rows == calculator.rows(50, seed=3) and rows != calculator.rows(50, seed=4)
    for r in rows:
        a, b = map(int, re.findall(r"\d+", r["expression"])[:2])
        assert int(r["answer"]) == eval(r["expression"]) and a * b > 150     # noqa: S307 -- our own arithmetic
        assert str(a) in r["prompt"] and str(b) in r["prompt"]


def _calc_env(**kw):
    env = CalculatorEnv(**kw)
    obs, info = env.reset(seed=0, options={"row": {"prompt": "P", "expression": "347 * 28", "answer": "9716"}})
    assert obs == "P" and info["tools"][0]["function"]["name"] == "calculator"
    return env


def test_calculator_episode_with_the_tool():
    env = _calc_env()
    obs, r, term, trunc, info = env.step("Let me compute. " + tool_call_text("347 * 28"))
    assert obs == [{"role": "tool", "name": "calculator", "content": "9716"}]
    assert (r, term, trunc) == (0.0, False, False)
    assert env.step("The answer is 9,716.") == (None, 1.0, True, False, {"turn": 2, "tool_turns": 1,
                                                                          "tool_errors": 0})


@pytest.mark.parametrize("turns,reward", [
    (["9716"], 0.0),                                                   # the right number, but no tool: a guess
    ([tool_call_text("347 * 28"), "9717"], 0.0),                       # wrong answer
    ([tool_call_text("347 * 29"), "9716"], 0.0),                       # the tool never returned that number
    ([tool_call_text("347 * 28"), "9716 or maybe 12"], 0.0),           # the LAST number is the answer
    (['<tool_call>{"name": "calculator", "arguments": {"expr": "1"}}</tool_call>', tool_call_text("347*28"),
      "9716"], 1.0),                                                   # a bad call, an error message, then right
])
def test_calculator_rewards(turns, reward):
    env = _calc_env()
    for t in turns[:-1]:
        assert env.step(t)[2] is False
    obs, r, term, _, _ = env.step(turns[-1])
    assert (obs, r, term) == (None, reward, True)


def test_calculator_malformed_call_is_an_observation():
    env = _calc_env()
    obs, r, term, _, info = env.step('<tool_call>{"name": "calculator", "arguments": {"expression": "1+"')
    assert not term and r == 0.0 and info["tool_errors"] == 1
    assert obs[0]["content"].startswith("Error: invalid JSON") and "never closed" in obs[0]["content"]
    obs, *_ = env.step('<tool_call>{"name": "calculator", "arguments": {"expression": "os.system(1)"}}</tool_call>')
    assert obs[0]["content"].startswith("Error: calculator raised ValueError: only numbers")


def test_calculator_options():
    env = _calc_env(require_tool=False)
    assert env.step("9716")[1] == 1.0
    env = _calc_env(tool_bonus=0.1)
    assert env.step(tool_call_text("1 +"))[1] == 0.0                   # an error: no bonus
    assert env.step(tool_call_text("347 * 28"))[1] == 0.1
    assert env.step(tool_call_text("347 * 28"))[1] == 0.0              # paid once
    with pytest.raises(ValueError, match="needs rows with 'prompt' and 'answer'"):
        CalculatorEnv().reset(options={"row": {"prompt": "x"}})


# ---------------------------------------------------------------------------------------------- guess_number

def _bisect(env, low=1, high=16):
    """A binary-search player; returns the rewards and observations of the game."""
    got = []
    while True:
        g = (low + high) // 2
        obs, r, term, trunc, info = env.step(f"Is it {g}?")
        got.append((g, obs, r))
        if term or trunc:
            return got
        low, high = (g + 1, high) if obs.startswith("Higher.") else (low, g - 1)


@pytest.mark.parametrize("secret", range(1, 17))
def test_guess_number_binary_search(secret):
    env = GuessNumberEnv(1, 16, 6)
    obs, info = env.reset(options={"row": {"secret": secret}})
    assert obs.startswith("I am thinking of a whole number from 1 to 16") and info == {"secret": secret}
    got = _bisect(env)
    k = len(got)
    assert k <= 5 and got[-1][0] == secret                             # ceil(log2(16)) + 1 guesses at most
    assert [r for _, _, r in got] == [0.0] * (k - 1) + [1 - (k - 1) / 6]
    assert all(obs == ("Higher." if g < secret else "Lower.") + f" {6 - i - 1} guess{'es' if 6 - i - 1 > 1 else ''}"
               f" left." for i, (g, obs, _) in enumerate(got[:-1]))
    assert got[-1][1] is None


def test_guess_number_loses_and_reminds():
    env = GuessNumberEnv(1, 16, 3)
    env.reset(options={"row": {"secret": 9}})
    assert env.step("no idea")[:4] == ("Please answer with one whole number from 1 to 16. 2 guesses left.", 0.0,
                                       False, False)
    assert env.step("1")[0] == "Higher. 1 guess left."
    assert env.step("2")[:4] == (None, 0.0, True, False)               # out of guesses: the game is lost
    env.reset(options={"row": {"secret": 9}})
    assert env.step("9")[:3] == (None, 1.0, True)                      # a first-guess hit


def test_guess_number_show_range():
    env = GuessNumberEnv(1, 16, 6, show_range=True)
    env.reset(options={"row": {"secret": 11}})
    assert [env.step(g)[0] for g in ("8", "12", "x", "10")] == [
        "Higher. It is from 9 to 16. 5 guesses left.", "Lower. It is from 9 to 11. 4 guesses left.",
        "Please answer with one whole number from 1 to 16. It is from 9 to 11. 3 guesses left.",
        "Higher. It is from 11 to 11. 2 guesses left."]
    assert env.step("11")[:3] == (None, 1 - 4 / 6, True)


def test_guess_number_secret_from_seed_and_bad_rows():
    secrets = {GuessNumberEnv().reset(seed=s, options={"row": {}})[1]["secret"] for s in range(40)}
    assert secrets <= set(range(1, 17)) and len(secrets) > 8
    assert GuessNumberEnv().reset(seed=5)[1] == GuessNumberEnv().reset(seed=5)[1]
    with pytest.raises(ValueError, match=r"secret must be a whole number in \[1, 16\], got 17"):
        GuessNumberEnv().reset(options={"row": {"secret": 17}})
    with pytest.raises(ValueError, match="needs low < high"):
        GuessNumberEnv(5, 5)
    rows = guess_number.rows(100, seed=1)
    assert {r["secret"] for r in rows} <= set(range(1, 17)) and rows == guess_number.rows(100, seed=1)


# ----------------------------------------------------------------------------------------------- code_repair

@pytest.fixture(scope="module")
def bug_row():
    rows = [json.loads(line) for line in (ROOT / "data/code/bugfix.jsonl").read_text().splitlines()]
    return next(r for r in rows if r["entry_point"] == "digit_sum")


def _play(env, row, actions):
    env.reset(seed=0, options={"row": row})
    return [asyncio.run(env.step(a)) for a in actions]


def test_code_repair_feedback_then_fix(bug_row):
    buggy, fixed = f"```python\n{bug_row['buggy_code']}```", f"Here:\n```python\n{bug_row['reference']}```"
    (obs, r, term, trunc, info), last = _play(CodeRepairEnv(), bug_row, [buggy, fixed])
    assert (r, term, trunc) == (0.0, False, False) and info["passed"] == 1 and info["total"] == 4
    assert obs.startswith("Your code passed 1 of 4 tests. 3 of 4 tests failed; first: assert digit_sum(7) == 7")
    assert obs.endswith("Fix it and answer with the whole function in one ```python code block.")
    assert last == (None, 1.0, True, False, {"attempt": 2, "passed": 4, "total": 4, "status": "ok"})


def test_code_repair_rewards(bug_row):
    buggy, fixed = f"```python\n{bug_row['buggy_code']}```", f"```python\n{bug_row['reference']}```"
    steps = _play(CodeRepairEnv(max_attempts=3), bug_row, ["def digit_sum(:", buggy, buggy])
    assert [s[1] for s in steps] == [0.0, 0.0, 0.25] and [s[2] for s in steps] == [False, False, True]
    assert "(syntax_error)" in steps[0][0]
    steps = _play(CodeRepairEnv(max_attempts=3, reward="delta"), bug_row, ["def digit_sum(:", buggy, fixed])
    assert [s[1] for s in steps] == [0.0, 0.25, 0.75]                  # sums to the final pass rate, 1
    assert [s[1] for s in _play(CodeRepairEnv(max_attempts=1), bug_row, [fixed])] == [1.0]
    with pytest.raises(ValueError, match="reward must be final or delta"):
        CodeRepairEnv(reward="best")
    with pytest.raises(ValueError, match="no tests column"):
        CodeRepairEnv().reset(options={"row": {"prompt": "x"}})


# ---------------------------------------------------------------------------------------------- data, configs

@pytest.mark.parametrize("name", examples.NAMES)
def test_write_data(tmp_path, name):
    train, evals, warm = examples.write_data(name, tmp_path)
    rows = [json.loads(line) for line in train.read_text().splitlines()]
    demos = [json.loads(line) for line in warm.read_text().splitlines()]
    assert rows and demos and all(isinstance(d["prompt"], list) and isinstance(d["reference"], str) for d in demos)
    if name == "calculator":  # the demonstrations play the environment's game and win
        env = _calc_env()
        env.reset(options={"row": rows[0]})
        assert env.step(demos[0]["reference"])[0][0]["content"] == rows[0]["answer"]
        assert env.step(demos[1]["reference"])[1] == 1.0
    if name == "code_repair":  # the demonstrated report is the environment's own, and the fix passes
        env = CodeRepairEnv(max_attempts=2)
        (obs, *_), last = _play(env, rows[0], [demos[1]["prompt"][1]["content"], demos[1]["reference"]])
        assert obs == demos[1]["prompt"][2]["content"] and obs.startswith("Your code passed 0 of 3 tests.")
        assert last[:3] == (None, 1.0, True)
    if name == "guess_number":  # each demonstrated guess is allowed by the replies so far
        for d in demos:
            lo, hi = 1, 16
            for prev, reply in zip(d["prompt"][1::2], d["prompt"][2::2]):
                g = int(prev["content"])
                lo, hi = (g + 1, hi) if reply["content"].startswith("Higher") else (lo, g - 1)
            assert lo <= int(d["reference"]) <= hi


def _tiny_chat_model(tmp_path):
    from rlft.envs import TOOL_CHAT_TEMPLATE
    from rlft.tiny import byte_tokenizer, save_tiny, tiny_causal_lm

    tok = byte_tokenizer(chat=True)
    tok.chat_template = TOOL_CHAT_TEMPLATE
    return save_tiny(tmp_path / "model", tiny_causal_lm(tok, hidden=32, layers=1, heads=2, max_positions=2048), tok)


@pytest.mark.parametrize("name", examples.NAMES)
def test_config_trains_one_step(tmp_path, name):
    """configs/env_<name>.yaml loads and runs one step on a tiny model (its data written by the documented
    command; the hub model and the sizes shrunk)."""
    from rlft.train import train

    data = tmp_path / "data"
    if name != "code_repair":  # code_repair reads the shipped data/code/bugfix.jsonl
        examples.write_data(name, data)
    files = [f"data.train={data / 'train.jsonl'}", f"data.eval={data / 'eval.jsonl'}"] if name != "code_repair" \
        else [f"data.train={ROOT / 'data/code/bugfix.jsonl'}"]
    cfg = Config.load(ROOT / f"configs/env_{name}.yaml", [
        f"model.path={_tiny_chat_model(tmp_path)}", "model.dtype=float32", f"train.out={tmp_path / 'run'}",
        "train.steps=1", "train.save_every=0", "rollout.batch_prompts=2", "rollout.num_generations=2",
        "rollout.max_new_tokens=8", "log.console=false", "train.eval_max_prompts=2", "env.max_turns=2"] + files)
    assert cfg.env.cls == name
    run = train(cfg)
    m = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    step = next(x for x in m if x.get("step") == 1 and "reward/mean" in x)
    assert step["rollout/samples"] == 4 and step["rollout/turns_mean"] >= 1 and step["rollout/env_errors"] == 0


def test_docs_quote_the_worked_examples():
    """docs/environments.md's output blocks are exactly what the records in docs/environments.json give."""
    records = json.loads((ROOT / "docs/environments.json").read_text())
    page = (ROOT / "docs/environments.md").read_text()
    assert set(records) == set(examples.NAMES)
    for name, rec in records.items():
        assert examples.docs_block(rec) in page, f"docs/environments.md's block for {name} is stale"
        assert rec["env"] == name and rec["steps"][1] == examples.EXAMPLES[name]["rl"]["steps"]


def test_example_config_is_valid():
    for name in examples.NAMES:
        for sft_only in (True, False):
            Config.from_dict(examples.example_config(name, Path("out"), Path("m"), Path("d"), sft_only=sft_only))
