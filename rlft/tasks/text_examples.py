"""Example datasets for the text tasks, and the worked examples of docs/tasks/, all built offline from code.

    python -m rlft.tasks.text_examples write translation data/translation   # or: write all data
    python -m rlft.tasks.text_examples example translation runs/ex-translation [--write-docs] [--short]

``write`` writes ``train.jsonl`` and ``eval.jsonl`` (for dialogue also ``reward-model/``, a tiny classifier it
trains to tell helpful replies from bad ones). ``example`` writes the data, builds a tiny model from a config
(T5 for translation, BART for summarization, a chat Llama for dialogue and creative writing) and a byte-level
BPE tokenizer learnt from the data, trains it with the task's preset (a supervised warm start, then RL),
compares the warm start with the RL checkpoint through ``rlft eval`` and writes the figures to
``OUT/example.json``. ``--write-docs`` also puts them in docs/tasks/<task>.json and the output block of
docs/tasks/<task>.md (the only source of the figures those pages quote; tests/test_worked_examples.py checks
it); ``--short`` runs a schedule of a few seconds (``short_schedule``), whose figures the reproducibility
test compares with docs/tasks/<task>.short.json.

The data are small synthetic worlds, generated from a seed: a toy language to translate, news items to
summarise, requests for suggestions, short poems with constraints. Tiny models learn them in minutes on a CPU.
"""

from __future__ import annotations

import json
import platform
import random
import sys
import time
from pathlib import Path

from .. import evaluate
from ..config import Config
from .text import conversation_text, dialogue_preset

TASK_NAMES = ("translation", "summarization", "dialogue", "creative_writing")


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _split(rows: list[dict], n_eval: int) -> tuple[list[dict], list[dict]]:
    return rows[n_eval:], rows[:n_eval]


# ------------------------------------------------------------------------------------- translation

NOUNS = {"cat": "miro", "dog": "tasu", "bird": "pelo", "fish": "kuna", "horse": "soba", "child": "lini",
         "farmer": "gara", "teacher": "dopo", "river": "reka", "tree": "vani", "house": "hosu", "boat": "bele"}
ADJS = {"big": "oma", "small": "ito", "red": "ruza", "old": "sen", "young": "nuvi", "happy": "pala",
        "quiet": "sima", "fast": "vek"}
VERBS_T = {"sees": "mira", "likes": "ama", "follows": "sega", "finds": "tova", "carries": "porta", "hears": "oda",
           "feeds": "nuta", "paints": "pinga"}
VERBS_I = {"sleeps": "dorm", "runs": "kura", "sings": "kanta", "waits": "sta"}


def translation_rows(n: int, rng: random.Random) -> list[dict]:
    """A toy language with verb-final order, adjectives after nouns and an object marker ``ko``:
    ``miro-oma tasu ko mira`` = ``the big cat sees the dog``."""
    rows, seen = [], set()
    nouns, adjs = list(NOUNS), list(ADJS)
    while len(rows) < n:
        subj, obj = rng.sample(nouns, 2)
        adj = rng.choice(adjs) if rng.random() < 0.6 else None
        if rng.random() < 0.7:
            verb = rng.choice(list(VERBS_T))
            src = f"{NOUNS[subj]}{'-' + ADJS[adj] if adj else ''} {NOUNS[obj]} ko {VERBS_T[verb]}"
            eng = f"the {adj + ' ' if adj else ''}{subj} {verb} the {obj}"
        else:
            verb = rng.choice(list(VERBS_I))
            src = f"{NOUNS[subj]}{'-' + ADJS[adj] if adj else ''} {VERBS_I[verb]}"
            eng = f"the {adj + ' ' if adj else ''}{subj} {verb}"
        if src in seen:
            continue
        seen.add(src)
        rows.append({"prompt": src, "reference": eng, "target_lang": "English"})
    return rows


# ----------------------------------------------------------------------------------- summarization

NAMES = ["Anna", "Ben", "Clara", "David", "Ella", "Felix", "Grace", "Henry", "Iris", "Jack", "Kate", "Leo"]
JOBS = ["baker", "teacher", "farmer", "nurse", "painter", "pilot"]
TOWNS = ["Millford", "Eastport", "Ashby", "Brookdale", "Westfield", "Oakridge"]
EVENTS = ["the chess final", "the spring marathon", "the baking contest", "the poetry prize", "the sailing race",
          "the quiz night"]
RESULTS = ["won", "lost", "finished second in", "organised"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
FILLERS = ["The weather in {town} was {weather} all week.", "About {n} people came to watch.",
           "Tickets cost {m} dollars.", "The organisers thanked the volunteers.",
           "A local band played after the event.", "Next year the event moves to a larger hall.",
           "{other} said it was the best day of the year.", "The mayor of {town} gave a short speech.",
           "Parking near the hall was difficult.", "Photos of the day are on the town website."]


def summarization_rows(n: int, rng: random.Random) -> list[dict]:
    """A short news item (the key sentence among 2-4 filler sentences) -> a one-line summary of the key
    sentence: ``Clara won the chess final.``"""
    rows = []
    for _ in range(n):
        name, other = rng.sample(NAMES, 2)
        job, town, event, result, day = (rng.choice(x) for x in (JOBS, TOWNS, EVENTS, RESULTS, DAYS))
        key = f"{name}, a {job} from {town}, {result} {event} on {day}."
        fill = [f.format(town=town, other=other, n=rng.randint(2, 9) * 50, m=rng.randint(2, 20),
                         weather=rng.choice(["sunny", "wet", "cold", "windy"]))
                for f in rng.sample(FILLERS, rng.randint(2, 4))]
        fill.insert(rng.randint(0, len(fill)), key)
        rows.append({"prompt": " ".join(fill), "reference": f"{name} {result} {event}."})
    return rows


# ---------------------------------------------------------------------------------------- dialogue

DOMAINS = {
    "food": (["What should I cook for dinner tonight?", "I need a quick lunch idea.",
              "Any dessert I could bake this weekend?"],
             ["a tomato soup", "a mushroom risotto", "a lentil curry", "a lemon cake", "a green salad"],
             "It is simple to make and tastes great."),
    "books": (["Can you suggest a novel for my holiday?", "I want a book to read on the train.",
               "What should I read next?"],
              ["a detective story", "a short fantasy novel", "a travel memoir", "a classic romance"],
              "It is easy to get into and hard to put down."),
    "music": (["What music helps me focus?", "I need something to listen to while I work.",
               "Any music for a rainy afternoon?"],
              ["some calm jazz", "a piano playlist", "a cello suite", "soft acoustic songs"],
              "It is gentle and keeps you in the flow."),
    "exercise": (["How can I stay active this week?", "I sit all day. What exercise can I do?",
                  "Give me an idea for a morning workout."],
                 ["a short morning run", "twenty minutes of yoga", "a bike ride", "a swim"],
                 "It wakes you up and is kind to your body."),
    "gifts": (["What could I give my friend for her birthday?", "I need a small gift for a colleague.",
               "Any present idea for my brother?"],
              ["a scented candle", "a warm scarf", "a board game", "a house plant"],
              "It is thoughtful and easy to find."),
}
OPENERS = ["How about {item}?", "I would suggest {item}.", "You could try {item}."]


def good_reply(domain: str, rng: random.Random) -> str:
    _, items, why = DOMAINS[domain]
    return rng.choice(OPENERS).format(item=rng.choice(items)) + " " + why


def dialogue_rows(n: int, rng: random.Random) -> list[dict]:
    """A request (sometimes after a greeting turn), as chat messages -> a helpful suggestion from the right
    domain. ``reference`` is one good reply (for the warm start); ``topic`` names the domain."""
    rows = []
    for _ in range(n):
        domain = rng.choice(list(DOMAINS))
        ask = rng.choice(DOMAINS[domain][0])
        msgs = [{"role": "user", "content": ask}]
        if rng.random() < 0.4:
            greeting = [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello! How can I help?"}]
            msgs = greeting + msgs
        rows.append({"prompt": msgs, "reference": good_reply(domain, rng), "topic": domain})
    return rows


def bad_reply(domain: str, rng: random.Random) -> str:
    """A reply a helpful assistant would not give: another domain's suggestion, a loop, a shrug, a cut-off."""
    kind = rng.randrange(4)
    if kind == 0:
        return good_reply(rng.choice([d for d in DOMAINS if d != domain]), rng)
    if kind == 1:
        w = rng.choice(["how about", "it is", "you could", "a"])
        return " ".join([w] * rng.randint(3, 8))
    if kind == 2:
        return rng.choice(["I do not know.", "No idea.", "Maybe.", "Ask someone else.", ""])
    reply = good_reply(domain, rng)
    return reply[:rng.randint(1, max(1, len(reply) // 2))]


def train_reward_model(rows: list[dict], out: Path, tokenizer, seed: int = 0, steps: int = 300) -> Path:
    """A tiny classifier (one logit) trained to score helpful replies above bad ones, on the same text the
    ``chat_reward_model`` reward gives it (``conversation_text(prompt) + reply``)."""
    import torch

    from ..tiny import save_tiny, tiny_classifier

    rng = random.Random(seed + 7)
    torch.manual_seed(seed)
    model = tiny_classifier(tokenizer, num_labels=1, hidden=48, layers=2, heads=4, seed=seed)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    tokenizer.padding_side = "right"
    model.train()
    for _ in range(steps):
        batch = rng.sample(rows, 16)
        texts = [conversation_text(r["prompt"]) + good_reply(r["topic"], rng) for r in batch] + \
                [conversation_text(r["prompt"]) + bad_reply(r["topic"], rng) for r in batch]
        enc = tokenizer(texts, padding=True, return_tensors="pt")
        logits = model(**enc).logits[:, 0]
        labels = torch.tensor([1.0] * 16 + [0.0] * 16)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    return Path(save_tiny(out, model, tokenizer))


# -------------------------------------------------------------------------------- creative writing

TOPICS = {
    "sea": ["waves", "salt", "shell", "tide", "gull", "foam"],
    "forest": ["moss", "pine", "owl", "shade", "fern", "bark"],
    "city": ["lights", "traffic", "tower", "crowd", "street", "neon"],
    "winter": ["snow", "frost", "fire", "ice", "breath", "wool"],
    "rain": ["clouds", "puddles", "umbrella", "drops", "thunder", "grey"],
    "garden": ["roses", "bees", "soil", "seeds", "petals", "sun"],
    "night": ["stars", "moon", "dreams", "silence", "candle", "dark"],
    "mountains": ["peaks", "wind", "stone", "eagle", "snowfields", "sky"],
}
LINE_TEMPLATES = ["the {w} {verb} in the {topic}", "i watch the {w} and {verb2}", "{w} and {x} under the {topic} sky",
                  "slowly the {w} {verb}", "all the {w} {verb} for me"]
VERBS = ["sleeps", "sings", "waits", "turns", "shines", "falls"]
VERBS2 = ["smile", "wait", "listen", "breathe", "stay"]


def poem(topic: str, words: list[str], lines: int, rng: random.Random) -> str:
    """A small poem on ``topic`` that uses ``words`` and has ``lines`` lines."""
    pool = TOPICS[topic]
    out = []
    for i in range(lines):
        w = words[i] if i < len(words) else rng.choice(pool)
        x = rng.choice([p for p in pool if p != w])
        out.append(rng.choice(LINE_TEMPLATES).format(w=w, x=x, topic=topic, verb=rng.choice(VERBS),
                                                      verb2=rng.choice(VERBS2)))
    return "\n".join(out)


def creative_writing_rows(n: int, rng: random.Random) -> list[dict]:
    """A poem request with constraints -> an example poem. Columns: ``must_include`` (two words), ``lines``,
    ``min_words``, ``max_words`` (the ``form`` reward), ``theme`` (for ``theme_similarity``), ``reference``
    (one poem that meets them, for the warm start)."""
    rows = []
    for _ in range(n):
        topic = rng.choice(list(TOPICS))
        words = rng.sample(TOPICS[topic], 2)
        lines = rng.choice([2, 3])
        prompt = f'Write a {lines}-line poem about the {topic}. Use the words "{words[0]}" and "{words[1]}".'
        rows.append({"prompt": prompt, "must_include": words, "lines": lines, "min_words": 3 * lines,
                     "max_words": 8 * lines, "theme": f"a poem about the {topic}",
                     "reference": poem(topic, words, lines, rng)})
    return rows


# ------------------------------------------------------------------------------------------ writing

ROWS = {"translation": translation_rows, "summarization": summarization_rows, "dialogue": dialogue_rows,
        "creative_writing": creative_writing_rows}
SIZES = {"translation": (1200, 64), "summarization": (1200, 64), "dialogue": (800, 64),
         "creative_writing": (800, 64)}


def all_text(rows: list[dict]) -> list[str]:
    """Every prompt and reference as text (to learn a tokenizer from)."""
    out = []
    for r in rows:
        out.append(conversation_text(r["prompt"]))
        ref = r.get("reference")
        out += [ref] if isinstance(ref, str) else list(ref or [])
    return out


def write_example(task: str, folder: str | Path, seed: int = 0, tokenizer=None, rm_steps: int = 300) -> list[Path]:
    """Write ``task``'s example dataset (train.jsonl, eval.jsonl; for dialogue also reward-model/, trained for
    ``rm_steps`` steps) into ``folder``. ``tokenizer``: the reward model's (default: a byte-level BPE learnt
    from the data)."""
    if task not in ROWS:
        raise ValueError(f"no example data for task {task!r} (text tasks: {', '.join(ROWS)}; code tasks: "
                         f"python -m rlft.tasks.code data/code)")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    n_train, n_eval = SIZES[task]
    rows = ROWS[task](n_train + n_eval, rng)
    train, evals = _split(rows, n_eval)
    paths = [_write(folder / "train.jsonl", train), _write(folder / "eval.jsonl", evals)]
    if task == "dialogue":
        from ..tiny import byte_tokenizer

        tok = tokenizer or byte_tokenizer(all_text(rows), vocab_size=400)
        paths.append(train_reward_model(train, folder / "reward-model", tok, seed, steps=rm_steps))
    return paths


# ------------------------------------------------------------------------------------ worked examples

EXAMPLES = {  # model, tokenizer and schedule of each worked example (docs/tasks/<task>.md)
    "translation": dict(arch="t5", hidden=64, vocab=320, sft=dict(steps=100, lr=3e-3, batch_size=32),
                        rl=dict(steps=60, lr=2e-4, prompts=16, group=8, temperature=0.7), max_new_tokens=20),
    # BART has 512 learned positions, under the preset's max_prompt_tokens (1024): the example's prompts are
    # at most 138 tokens, so 256 truncates none and fits the model.
    "summarization": dict(arch="bart", hidden=64, vocab=400, sft=dict(steps=45, lr=3e-3, batch_size=32),
                          rl=dict(steps=60, lr=2e-4, prompts=16, group=8, temperature=0.7), max_new_tokens=16,
                          max_prompt_tokens=256),
    "dialogue": dict(arch="llama", hidden=64, vocab=400, sft=dict(steps=60, lr=3e-3, batch_size=32),
                     rl=dict(steps=30, lr=3e-4, prompts=8, group=4), max_new_tokens=24),
    "creative_writing": dict(arch="llama", hidden=64, vocab=400, sft=dict(steps=250, lr=3e-3, batch_size=32),
                             rl=dict(steps=40, lr=3e-4, prompts=8, group=4), max_new_tokens=40),
}


def example_config(task: str, out: Path, model_dir: Path, data: Path, seed: int = 0, **over) -> dict:
    """The worked example's config as a dict (``task`` preset underneath)."""
    e = {**EXAMPLES[task], **over}
    cfg = {"task": task, "model": {"path": str(model_dir)},
           "data": {"train": str(data / "train.jsonl"), "eval": str(data / "eval.jsonl"),
                    **({"max_prompt_tokens": e["max_prompt_tokens"]} if "max_prompt_tokens" in e else {})},
           "rollout": {"batch_prompts": e["rl"]["prompts"], "num_generations": e["rl"]["group"],
                       "max_new_tokens": e["max_new_tokens"], "temperature": e["rl"].get("temperature", 1.0)},
           "algo": {"estimator": "grpo"},
           "optim": {"lr": e["rl"]["lr"], "micro_batch_size": 64},
           "sft": e["sft"],
           "train": {"steps": e["rl"]["steps"], "seed": seed, "out": str(out), "eval_every": 0,
                     "eval_max_prompts": 64},
           "log": {"console": False, "samples_every": 0}}
    if task == "dialogue":  # the reward model written next to the data
        rewards = dialogue_preset()["rewards"]["components"]
        rewards[0]["args"]["path"] = str(data / "reward-model")
        cfg["rewards"] = rewards
    return cfg


def example_model(e: dict, tok, seed: int = 0):
    """The worked example's tiny policy (``e``: an ``EXAMPLES`` entry), built from a config."""
    from ..tiny import tiny_causal_lm, tiny_seq2seq_lm

    if e["arch"] in ("t5", "bart"):
        return tiny_seq2seq_lm(tok, e["arch"], hidden=e["hidden"], layers=2, heads=4, seed=seed)
    return tiny_causal_lm(tok, arch=e["arch"], hidden=e["hidden"], layers=2, heads=4, max_positions=256, seed=seed)


def run_example(task: str, out: str | Path, seed: int = 0, **over) -> dict:
    """The worked example of docs/tasks/<task>.md: data, tiny model, warm start + RL, then ``rlft eval`` of
    the warm start (baseline) against the last RL checkpoint. Returns ``rlft.evaluate.run``'s summary."""
    import torch

    from ..tiny import byte_tokenizer, save_tiny
    from ..train import train

    out = Path(out)
    e = {**EXAMPLES[task], **over}
    torch.manual_seed(seed)
    rows = ROWS[task](sum(SIZES[task]), random.Random(seed))
    chat = task in ("dialogue", "creative_writing")
    tok = byte_tokenizer(all_text(rows), vocab_size=e["vocab"], chat=chat)
    data = out / "data"
    write_example(task, data, seed, tokenizer=byte_tokenizer(all_text(rows), vocab_size=e["vocab"]))
    model = example_model(e, tok, seed)
    model_dir = Path(save_tiny(out / "base-model", model, tok))
    cfg = Config.from_dict(example_config(task, out / "run", model_dir, data, seed, **over))
    run = train(cfg, overwrite=True)
    last = max(run.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    summary = evaluate.run([str(run / "sft-model"), str(last)], str(data / "eval.jsonl"), samples=4,
                           out=str(out / "eval"))
    cfg.save(out / "config.yaml")
    return summary


# ------------------------------------------------------------------------- figures quoted in the docs

DOCS = Path(__file__).resolve().parents[2] / "docs" / "tasks"  # in a source checkout
BEGIN = "<!-- example-output: written by `python -m rlft.tasks.text_examples example {task} OUT --write-docs` -->"
END = "<!-- /example-output -->"
N_SHOWN = 4  # held-out items shown before and after RL


def example_record(task: str, summary: dict, seed: int, wall_s: float) -> dict:
    """What a worked example produced, as JSON: the ``rlft eval`` table and figures, the first greedy outputs
    of each checkpoint, and where and how long it ran (``OUT/example.json``; docs/tasks/<task>.json)."""
    import torch

    def lines(path: Path) -> list[dict]:
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]

    rows = lines(Path(summary["data"]))
    outs = [lines(Path(summary["out"]) / f"outputs-{i}.jsonl") for i in range(len(summary["checkpoints"]))]
    shown = [{"prompt": rows[k]["prompt"], "reference": outs[0][k]["reference"],
              "greedy": [o[k]["greedy"] for o in outs]} for k in range(min(N_SHOWN, len(outs[0])))]
    return {"task": task, "seed": seed, "title": summary["title"], "header": summary["header"],
            "rows": summary["rows"], "metrics": [c["metrics"] for c in summary["checkpoints"]], "shown": shown,
            "wall_s": round(wall_s, 1), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "machine": f"{platform.machine()} {torch.backends.cpu.get_cpu_capability()}"}


def _cell(value) -> str:
    """A prompt, reference or output as one Markdown table cell: lines (and chat turns) joined by `` / ``."""
    if isinstance(value, list):  # several references, or chat messages
        value = " / ".join(m["content"] if isinstance(m, dict) else str(m) for m in value)
    return str(value or "").replace("\n", " / ").replace("|", "\\|") or " "


def docs_block(record: dict) -> str:
    """The block of docs/tasks/<task>.md between ``BEGIN`` and ``END``, from a record."""
    lines = [BEGIN.format(task=record["task"]), "",
             f"Output (seed {record['seed']}; torch {record['torch']}, {record['threads']} "
             f"thread{'s' if record['threads'] != 1 else ''}, {record['machine']}; {record['wall_s']:.0f} s wall "
             "in all, data to table, on this project's shared 2-core machine):", "",
             "```", record["title"], "", evaluate.markdown(record["header"], record["rows"]).rstrip(), "```", "",
             f"Greedy outputs for the first {len(record['shown'])} held-out items (`eval/outputs-{{0,1}}.jsonl`):",
             "", "| prompt | reference | warm start | after RL |", "| --- | --- | --- | --- |"]
    lines += [f"| {_cell(s['prompt'])} | {_cell(s['reference'])} | {_cell(s['greedy'][0])} | {_cell(s['greedy'][-1])} |"
              for s in record["shown"]]
    return "\n".join(lines + ["", END])


def write_docs(record: dict, docs: Path = DOCS) -> list[Path]:
    """Put a record's figures in ``docs/<task>.json`` and its block in ``docs/<task>.md``."""
    page = docs / f"{record['task']}.md"
    if not page.exists():
        raise FileNotFoundError(f"--write-docs: {page} does not exist (run from a source checkout of rlft)")
    text = page.read_text(encoding="utf-8")
    begin = BEGIN.format(task=record["task"])
    if begin not in text or END not in text:
        raise ValueError(f"{page} has no example-output block: add the lines {begin!r} and {END!r} where the "
                         "output goes")
    head, rest = text.split(begin, 1)
    tail = rest.split(END, 1)[1]
    page.write_text(head + docs_block(record) + tail, encoding="utf-8")
    figures = docs / f"{record['task']}.json"
    figures.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return [page, figures]


def short_schedule(task: str) -> dict:
    """Overrides that shorten a worked example to seconds (30 warm-start steps, 4 RL steps of 8 prompts x 4):
    the reproducibility test runs it and compares with ``docs/tasks/<task>.short.json``."""
    e = EXAMPLES[task]
    return {"sft": {**e["sft"], "steps": 30}, "rl": {**e["rl"], "steps": 4, "prompts": 8, "group": 4}}


def example_main(task: str, where: str | Path, *, write_docs_too: bool = False, short: bool = False) -> dict:
    """``example``: run the worked example on one thread, write ``OUT/example.json``, print the table; with
    ``write_docs_too`` put the figures in docs/tasks/ (``short``: only ``docs/tasks/<task>.short.json``)."""
    import torch

    torch.set_num_threads(1)  # tiny models: one thread is as fast, and the numbers do not depend on the core count
    t0 = time.monotonic()
    s = run_example(task, where, **(short_schedule(task) if short else {}))
    record = example_record(task, s, 0, time.monotonic() - t0)
    record["schedule"] = "short" if short else "full"
    (Path(where) / "example.json").write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    print(s["title"] + "\n\n" + evaluate.markdown(s["header"], s["rows"]))
    print(f"{record['wall_s']:.0f} s; figures in {Path(where) / 'example.json'}")
    if write_docs_too and short:
        path = DOCS / f"{task}.short.json"
        path.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"wrote {path}")
    elif write_docs_too:
        for p in write_docs(record):
            print(f"wrote {p}")
    return record


def main(argv: list[str]) -> int:
    usage = ("usage: python -m rlft.tasks.text_examples write {task|all} FOLDER\n"
             "       python -m rlft.tasks.text_examples example TASK OUT [--write-docs] [--short]")
    flags = {a for a in argv if a.startswith("--")}
    argv = [a for a in argv if not a.startswith("--")]
    if len(argv) != 3 or argv[0] not in ("write", "example") or not flags <= {"--write-docs", "--short"} \
            or (flags and argv[0] != "example") or (argv[0] == "example" and argv[1] not in EXAMPLES):
        print(usage + f"\n(tasks with a worked example: {', '.join(EXAMPLES)})", file=sys.stderr)
        return 2
    cmd, task, where = argv
    if cmd == "write":
        for t in TASK_NAMES if task == "all" else (task,):
            for p in write_example(t, Path(where) / t if task == "all" else where):
                print(p)
        return 0
    example_main(task, where, write_docs_too="--write-docs" in flags, short="--short" in flags)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
