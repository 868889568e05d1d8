"""Data for the shipped environments, and their worked examples (docs/environments.md), all built offline from code.

    python -m rlft.envs write calculator data/calculator        # train.jsonl, eval.jsonl, warm.jsonl
    python -m rlft.envs example guess_number runs/ex-guess [--write-docs]

``write`` writes the environment's rows (``train.jsonl``, ``eval.jsonl``; for code_repair the toy bug-fixing rows of
its worked example, `toy_bugfix_rows` -- its config reads the shipped data/code/bugfix.jsonl) and ``warm.jsonl``:
scripted demonstrations, one row per model turn (``prompt`` = the conversation so far as chat messages,
``reference`` = the turn), for a supervised warm start (``rlft sft``). ``example`` writes them, builds a tiny chat
Llama and a byte-level BPE tokenizer learnt from the data, warm-starts it on the demonstrations (``sft.steps``, the
environment not involved), then trains it with RL in the environment (``env.cls``); the run's greedy evaluation
episodes at step 0 (the warm start) and at the last step give the before -> after figures, written to
``OUT/example.json`` -- and with ``--write-docs`` to docs/environments.json and the page's output block for that
environment (the only source of the figures the page quotes; tests/test_envs.py checks it).

The demonstrations are deliberately imperfect -- a guesser that bisects sloppily, a warm start too short to learn
every problem -- so RL has something to improve.
"""

from __future__ import annotations

import json
import platform
import random
import sys
import time
from pathlib import Path

from ..config import Config
from ..tasks.code import BUGFIX_PROMPT
from . import calculator, guess_number
from .code_repair import feedback
from .tools import TOOL_CHAT_TEMPLATE
from .tools import calculator as calc

NAMES = ("calculator", "guess_number", "code_repair")
SIZES = {"calculator": (400, 32), "guess_number": (400, 32), "code_repair": (200, 32)}


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------- demonstrations

def calculator_demos(rows: list[dict]) -> list[dict]:
    """Two turns per problem: the tool call, then (after the tool's reply) the answer."""
    out = []
    for r in rows:
        call = calculator.tool_call_text(r["expression"])
        first = [{"role": "user", "content": r["prompt"]}]
        out.append({"prompt": first, "reference": call})
        second = first + [{"role": "assistant", "content": call},
                          {"role": "tool", "name": "calculator", "content": calc(r["expression"])}]
        out.append({"prompt": second, "reference": f"The answer is {r['answer']}."})
    return out


def guess_demos(rows: list[dict], rng: random.Random, low: int = 1, high: int = 16, max_guesses: int = 6,
                show_range: bool = True):
    """Games of a sloppy bisecting player -- the middle of what the replies so far allow, give or take up to 3 (kept
    inside it) -- one row per guess."""
    out = []
    for r in rows:
        env = guess_number.GuessNumberEnv(low, high, max_guesses, show_range)
        obs, _ = env.reset(options={"row": r})
        msgs, lo, hi = [{"role": "user", "content": obs}], low, high
        while True:
            g = min(hi, max(lo, (lo + hi) // 2 + rng.randint(-3, 3)))
            out.append({"prompt": list(msgs), "reference": str(g)})
            obs, _, done, _, _ = env.step(str(g))
            if done:
                break
            lo, hi = (g + 1, hi) if obs.startswith("Higher") else (lo, g - 1)
            msgs += [{"role": "assistant", "content": str(g)}, {"role": "user", "content": obs}]
    return out


def toy_bugfix_rows(n: int, seed: int = 0) -> list[dict]:
    """Bug-fixing rows small enough for a tiny model: ``f(x) = a * x + b`` with ``b`` off by one; the prompt shows
    the buggy function and a failing test (rlft.tasks.code's BUGFIX_PROMPT), the tests check three values."""
    rng, rows = random.Random(seed), []
    for _ in range(n):
        a, b = rng.randint(2, 9), rng.randint(1, 8)
        bad = b + rng.choice([-1, 1])
        code = "def f(x):\n    return {a} * x + {b}\n"
        tests = [f"assert f(0) == {b}", f"assert f(1) == {a + b}", f"assert f(2) == {2 * a + b}"]
        rows.append({"prompt": BUGFIX_PROMPT.format(failing_test=tests[0], buggy_code=code.format(a=a, b=bad)),
                     "buggy_code": code.format(a=a, b=bad), "failing_test": tests[0], "tests": tests,
                     "entry_point": "f", "reference": code.format(a=a, b=b)})
    return rows


def code_demos(rows: list[dict], rng: random.Random) -> list[dict]:
    """A sloppy fixer: its first answer is the fixed function only half the time (else the buggy one again); after
    the sandbox's report (computed here as the environment computes it) it answers with the fixed function."""
    from ..sandbox import Job, run_batch

    results = run_batch([Job(r["buggy_code"], r["tests"], r["entry_point"]) for r in rows], timeout_s=5)
    out = []
    for r, res in zip(rows, results):
        fixed, tried = f"```python\n{r['reference']}```", f"```python\n{r['buggy_code']}```"
        first = [{"role": "user", "content": r["prompt"]}]
        out.append({"prompt": first, "reference": fixed if rng.random() < 0.5 else tried})
        reply = feedback(res.passed, res.total, res.status, res.detail)
        out.append({"prompt": first + [{"role": "assistant", "content": tried}, {"role": "user", "content": reply}],
                    "reference": fixed})
    return out


def write_data(name: str, folder: str | Path, seed: int = 0) -> list[Path]:
    """``name``'s rows (train.jsonl, eval.jsonl) and demonstrations (warm.jsonl) in ``folder``."""
    if name not in NAMES:
        raise ValueError(f"no data for environment {name!r} (shipped: {', '.join(NAMES)})")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    n_train, n_eval = SIZES[name]
    make = {"calculator": calculator.rows, "guess_number": guess_number.rows, "code_repair": toy_bugfix_rows}[name]
    rows = make(n_train + n_eval, seed)
    evals, train = rows[:n_eval], rows[n_eval:]
    if name == "calculator":
        demos = calculator_demos(train)
    else:
        demos = guess_demos(train, rng) if name == "guess_number" else code_demos(train, rng)
    return [_write(folder / "train.jsonl", train), _write(folder / "eval.jsonl", evals),
            _write(folder / "warm.jsonl", demos)]


# ------------------------------------------------------------------------------------ worked examples

EXAMPLES = {  # tiny model, warm start and RL schedule of each worked example
    "calculator": dict(hidden=96, vocab=400, sft=dict(steps=800, lr=3e-3, batch_size=32),
                       rl=dict(steps=40, lr=1e-3, prompts=8, group=8), max_new_tokens=40,
                       env=dict(max_turns=3, max_tokens=160, args=dict(describe_tools="none"))),
    "guess_number": dict(hidden=64, vocab=300, sft=dict(steps=300, lr=3e-3, batch_size=32),
                         rl=dict(steps=80, lr=1e-3, prompts=8, group=8), max_new_tokens=4,
                         env=dict(max_turns=6, max_tokens=200, args=dict(show_range=True))),
    "code_repair": dict(hidden=96, vocab=400, sft=dict(steps=200, lr=3e-3, batch_size=32),
                        rl=dict(steps=30, lr=5e-4, prompts=8, group=4), max_new_tokens=40,
                        env=dict(max_turns=2, max_tokens=160, args=dict(max_attempts=2))),
}


def example_config(name: str, out: Path, model_dir: Path, data: Path, seed: int = 0, *, sft_only: bool = False):
    """The worked example's config as a dict: the warm start (``sft_only``: on warm.jsonl, no environment) or RL
    in the environment."""
    e = EXAMPLES[name]
    common = {"model": {"path": str(model_dir)},
              "rollout": {"batch_prompts": e["rl"]["prompts"], "num_generations": e["rl"]["group"],
                          "max_new_tokens": e["max_new_tokens"], "temperature": 1.0},
              "optim": {"lr": e["rl"]["lr"], "micro_batch_size": 64},
              "log": {"console": False, "samples_every": 0}}
    if sft_only:
        return {**common, "data": {"train": str(data / "warm.jsonl"), "max_prompt_tokens": 1024},
                "rewards": [{"fn": "exact_match", "weight": 1.0}], "sft": e["sft"],
                "train": {"steps": 0, "seed": seed, "out": str(out)}}
    return {**common, "data": {"train": str(data / "train.jsonl"), "eval": str(data / "eval.jsonl"),
                               "max_prompt_tokens": 512},
            "env": {"cls": name, **e["env"]}, "algo": {"estimator": "grpo"},
            "train": {"steps": e["rl"]["steps"], "seed": seed, "out": str(out), "eval_every": 0,
                      "eval_max_prompts": 32}}


def _texts(folder: Path) -> list[str]:
    """Every prompt, demonstration and scripted reply (to learn the tokenizer from)."""
    out = []
    for line in (folder / "warm.jsonl").read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        out += [m["content"] for m in r["prompt"]] + [r["reference"]]
    return out + ["Higher. Lower. It is from 1 to 16. guesses left. Please answer with one whole number"]


def run_example(name: str, out: str | Path, seed: int = 0) -> dict:
    """Data, tiny model, warm start, RL in the environment; returns the record (see `example_record`)."""
    import torch

    from ..tiny import byte_tokenizer, save_tiny, tiny_causal_lm
    from ..train import train

    t0 = time.monotonic()
    out, e = Path(out), EXAMPLES[name]
    data = out / "data"
    write_data(name, data, seed)
    torch.manual_seed(seed)
    tok = byte_tokenizer(_texts(data), vocab_size=e["vocab"], chat=True)
    tok.chat_template = TOOL_CHAT_TEMPLATE
    model = tiny_causal_lm(tok, arch="llama", hidden=e["hidden"], layers=2, heads=4, max_positions=1024, seed=seed)
    base = Path(save_tiny(out / "base-model", model, tok))
    train(Config.from_dict(example_config(name, out / "warm", base, data, seed, sft_only=True)), overwrite=True)
    cfg = Config.from_dict(example_config(name, out / "run", out / "warm" / "sft-model", data, seed))
    run = train(cfg, overwrite=True)
    cfg.save(out / "config.yaml")
    return example_record(name, run, seed, time.monotonic() - t0)


def example_record(name: str, run: Path, seed: int, wall_s: float) -> dict:
    """The figures: greedy evaluation episodes before RL (the warm start, step 0) and after (the last step), two
    conversations of each, where and how long it ran."""
    import torch

    evals = [json.loads(line) for line in (run / "eval.jsonl").read_text(encoding="utf-8").splitlines()]
    first, last = evals[0], evals[-1]
    keys = ["eval/reward/mean", "eval/turns_mean", "eval/len_mean"]
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    sampled = [m["reward/mean"] for m in steps if "reward/mean" in m]
    n = min(5, len(sampled))
    return {"env": name, "seed": seed, "steps": [first["step"], last["step"]],
            "before": {k: first[k] for k in keys}, "after": {k: last[k] for k in keys},
            "sampled_reward": [sum(sampled[:n]) / n, sum(sampled[-n:]) / n],
            "wall_s": round(wall_s, 1), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "machine": f"{platform.machine()} {torch.backends.cpu.get_cpu_capability()}"}


# ------------------------------------------------------------------------- figures quoted in the docs

DOCS = Path(__file__).resolve().parents[2] / "docs"
BEGIN = "<!-- env-example: {name}, written by `python -m rlft.envs example {name} OUT --write-docs` -->"
END = "<!-- /env-example -->"


def docs_block(record: dict) -> str:
    """The block of docs/environments.md between ``BEGIN`` and ``END`` for one record."""
    b, a = record["before"], record["after"]
    rows = [("mean reward (greedy)", "eval/reward/mean"), ("model turns per episode", "eval/turns_mean"),
            ("model tokens per episode", "eval/len_mean")]
    lines = [BEGIN.format(name=record["env"]), "",
             f"Output (seed {record['seed']}; torch {record['torch']}, {record['threads']} thread"
             f"{'s' if record['threads'] != 1 else ''}, {record['machine']}; {record['wall_s']:.0f} s wall in all, "
             "data to figures, on this project's shared 2-core machine):", "",
             f"| greedy evaluation episodes | warm start (step {record['steps'][0]}) | after RL (step "
             f"{record['steps'][1]}) |", "| --- | --- | --- |"]
    lines += [f"| {label} | {b[k]:.4f} | {a[k]:.4f} |" for label, k in rows]
    first, last = record["sampled_reward"]
    lines += ["", f"Mean reward of the sampled training episodes (temperature 1, training rows): {first:.4f} over "
                  f"the first five RL steps, {last:.4f} over the last five."]
    return "\n".join(lines + ["", END])


def write_docs(record: dict, docs: Path = DOCS) -> list[Path]:
    """Put a record in docs/environments.json (keyed by environment) and its block in docs/environments.md."""
    page, figures = docs / "environments.md", docs / "environments.json"
    text = page.read_text(encoding="utf-8")
    begin = BEGIN.format(name=record["env"])
    if begin not in text:
        raise ValueError(f"{page} has no output block for {record['env']}: add the lines {begin!r} and {END!r}")
    head, rest = text.split(begin, 1)
    page.write_text(head + docs_block(record) + rest.split(END, 1)[1], encoding="utf-8")
    known = json.loads(figures.read_text(encoding="utf-8")) if figures.exists() else {}
    known[record["env"]] = record
    figures.write_text(json.dumps(known, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return [page, figures]


def main(argv: list[str]) -> int:
    usage = ("usage: python -m rlft.envs write {calculator|guess_number|code_repair} FOLDER\n"
             "       python -m rlft.envs example {calculator|guess_number|code_repair} OUT [--write-docs]")
    flags = {a for a in argv if a.startswith("--")}
    argv = [a for a in argv if not a.startswith("--")]
    if len(argv) != 3 or argv[0] not in ("write", "example") or argv[1] not in NAMES or \
            not flags <= {"--write-docs"} or (flags and argv[0] != "example"):
        print(usage, file=sys.stderr)
        return 2
    cmd, name, where = argv
    if cmd == "write":
        for p in write_data(name, where):
            print(p)
        return 0
    import torch

    torch.set_num_threads(1)  # tiny models: one thread is as fast, and the figures do not depend on the core count
    record = run_example(name, where)
    (Path(where) / "example.json").write_text(json.dumps(record, indent=2) + "\n")
    print(docs_block(record))
    if "--write-docs" in flags:
        for p in write_docs(record):
            print(f"wrote {p}")
    return 0
