"""`rlft demo`: the embedded default. No arguments, no network, a laptop CPU, a few minutes.

It writes a toy translation task (an invented source language, word-for-word into English, in reverse
word order), builds a tiny Llama and a byte-level BPE tokenizer from configs, warm-starts the model on the
task (a short supervised stage) and then improves it with policy gradients (GRPO advantages) against a
sentence-BLEU reward. It prints greedy BLEU and exact match on held-out sentences before RL (after the
warm start) and after, and writes `summary.json`.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

from .config import Config

SOURCE = ["dax", "wug", "fep", "blick", "zorp", "kiki", "mup", "tov", "grel", "snib", "yorp", "plon",
          "vask", "drim", "quel", "hoba", "nerf", "lisk", "trub", "wemb"]
TARGET = ["red", "blue", "cat", "dog", "runs", "sleeps", "big", "small", "tree", "river", "green", "eats",
          "old", "young", "bird", "house", "sees", "fast", "slow", "moon"]


def make_task(out: Path, seed: int = 0, n_train: int = 2000, n_eval: int = 128) -> tuple[Path, Path]:
    """Write train/eval JSONL of {"prompt", "reference"}: source words -> their translations, reversed."""
    rng = random.Random(seed)
    lex = dict(zip(SOURCE, TARGET))
    seen = set()

    def sentence():
        while True:
            words = [rng.choice(SOURCE) for _ in range(rng.randint(2, 5))]
            key = " ".join(words)
            if key not in seen:
                seen.add(key)
                return {"prompt": f"{key} =>", "reference": " ".join(lex[w] for w in reversed(words))}

    out.mkdir(parents=True, exist_ok=True)
    paths = out / "train.jsonl", out / "eval.jsonl"
    for path, n in zip(paths, (n_train, n_eval)):
        path.write_text("".join(json.dumps(sentence()) + "\n" for _ in range(n)))
    return paths


def demo_config(out: Path, model_dir: Path, train: Path, evals: Path, seed: int):
    return Config.from_dict({
        "model": {"path": str(model_dir)},
        "data": {"train": str(train), "eval": str(evals), "template": "{prompt}"},
        "rollout": {"batch_prompts": 16, "num_generations": 8, "max_new_tokens": 12, "temperature": 1.0},
        "rewards": [{"fn": "bleu", "weight": 1.0}, {"fn": "exact_match", "weight": 0.0}],
        "algo": {"estimator": "grpo"},
        "optim": {"lr": 2e-4, "micro_batch_size": 128, "max_grad_norm": 1.0},
        "sft": {"steps": 120, "lr": 3e-3, "batch_size": 32},
        "train": {"steps": 150, "seed": seed, "out": str(out), "eval_every": 50},
        "log": {"samples_every": 50, "num_samples": 3},
    })


def run(out: str | Path = "runs/demo", seed: int = 0, steps: int | None = None, sft_steps: int | None = None) -> dict:
    """Build everything, train, and return the summary {before, after, seconds}."""
    import torch

    from .tiny import byte_tokenizer, save_tiny, tiny_causal_lm
    from .train import train

    t0 = time.time()
    out = Path(out)
    train_path, eval_path = make_task(out / "data", seed=seed)
    rows = [json.loads(line) for line in train_path.read_text().splitlines()]
    texts = [r["prompt"] + " " + r["reference"] for r in rows]
    torch.manual_seed(seed)
    tok = byte_tokenizer(texts, vocab_size=320)
    model = tiny_causal_lm(tok, arch="llama", hidden=96, layers=2, heads=4, max_positions=64, seed=seed)
    model_dir = Path(save_tiny(out / "base-model", model, tok))
    cfg = demo_config(out / "run", model_dir, train_path, eval_path, seed)
    from dataclasses import replace

    if steps is not None:
        cfg = replace(cfg, train=replace(cfg.train, steps=steps))
    if sft_steps is not None:
        cfg = replace(cfg, sft=replace(cfg.sft, steps=sft_steps))
    run_dir = train(cfg, overwrite=True)
    evals = [json.loads(line) for line in (run_dir / "eval.jsonl").read_text().splitlines()]
    keys = ("eval/bleu", "eval/exact_match")
    summary = {"before": {k[5:]: evals[0][k] for k in keys}, "after": {k[5:]: evals[-1][k] for k in keys},
               "seconds": round(time.time() - t0, 1), "run": str(run_dir),
               "checkpoint": str(max(run_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1])))}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
