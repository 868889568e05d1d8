"""Reward models fitted on the ratings in a feedback store (``rlft reward-model train``), and scoring with them.

The model is any ``AutoModelForSequenceClassification`` with one output, read on the text ``prompt +
completion`` (the same text when training and when scoring). Two losses, summed per batch:

* pairs (``pair`` ratings): Bradley-Terry, ``-log sigmoid(r_chosen - r_rejected)``; a tie is the target 1/2,
  ``-(log sigmoid(d) + log sigmoid(-d)) / 2``;
* scores (``score`` ratings): mean squared error to ``(score - 3) / 2``, the ``human`` reward's scale.

So its outputs are on the ``human`` reward's scales: rewards in [-1, 1] for scores, log-odds for pairs.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

from .scale import score_to_reward
from .store import Store


def load(path, device: str | None = None):
    """``(model, tokenizer)`` from a folder, in eval mode; the tokenizer truncates from the left (keeping the
    end of the completion) and has a pad token."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id
    tok.truncation_side = "left"
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device).eval(), tok


def _forward(model, tok, prompts: list[str], completions: list[str], max_length: int):
    """One scalar per (prompt, completion): ``[B]``."""
    texts = [p + c or (tok.eos_token or " ") for p, c in zip(prompts, completions)]
    enc = tok(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    enc = {k: v.to(model.device) for k, v in enc.items()}
    return model(**enc).logits[:, 0]  # [B]


def score(model, tok, prompts: list[str], completions: list[str], *, batch_size: int = 16,
          max_length: int = 512) -> list[float]:
    """The reward model's value for each (prompt, completion)."""
    import torch

    out: list[float] = []
    with torch.no_grad():
        for k in range(0, len(prompts), batch_size):
            out += _forward(model, tok, prompts[k:k + batch_size], completions[k:k + batch_size],
                            max_length).float().tolist()
    return out


def examples(store, run_id: str | None = None) -> tuple[list[tuple], list[tuple]]:
    """The training examples in a store: ``pairs`` as (prompt, chosen, rejected, y) with y = 1 (or 1/2 for a
    tie) and ``scores`` as (prompt, completion, target)."""
    pairs, scores = [], []
    for r in store.ratings(run_id=run_id):
        if r["kind"] == "score":
            scores.append((r["prompt"], r["completion"], score_to_reward(r["score"])))
        elif r["choice"] == "b":
            pairs.append((r["prompt"], r["completion_b"], r["completion_a"], 1.0))
        else:
            pairs.append((r["prompt"], r["completion_a"], r["completion_b"], 1.0 if r["choice"] == "a" else 0.5))
    return pairs, scores


def evaluate(model, tok, pairs, scores, *, max_length: int = 512) -> dict[str, float]:
    """Held-in metrics: pairwise accuracy (chosen scored above rejected, ties left out) and score MSE."""
    out = {}
    strict = [p for p in pairs if p[3] == 1.0]
    if strict:
        rc = score(model, tok, [p[0] for p in strict], [p[1] for p in strict], max_length=max_length)
        rr = score(model, tok, [p[0] for p in strict], [p[2] for p in strict], max_length=max_length)
        out["pair_accuracy"] = sum(a > b for a, b in zip(rc, rr)) / len(strict)
    if scores:
        r = score(model, tok, [s[0] for s in scores], [s[1] for s in scores], max_length=max_length)
        out["score_mse"] = sum((a - s[2]) ** 2 for a, s in zip(r, scores)) / len(scores)
    return out


def _loss(model, tok, batch, max_length: int):
    import torch
    import torch.nn.functional as F

    pairs = [x for kind, x in batch if kind == "pair"]
    scores = [x for kind, x in batch if kind == "score"]
    loss = torch.zeros((), device=model.device)
    if pairs:
        # chosen and rejected in one forward pass: [2P]
        r = _forward(model, tok, [p[0] for p in pairs] * 2, [p[1] for p in pairs] + [p[2] for p in pairs],
                     max_length)
        d = r[:len(pairs)] - r[len(pairs):]
        y = torch.tensor([p[3] for p in pairs], device=d.device, dtype=d.dtype)
        loss = loss - (y * F.logsigmoid(d) + (1 - y) * F.logsigmoid(-d)).mean()
    if scores:
        r = _forward(model, tok, [s[0] for s in scores], [s[1] for s in scores], max_length)
        target = torch.tensor([s[2] for s in scores], device=r.device, dtype=r.dtype)
        loss = loss + F.mse_loss(r, target)
    return loss


def train(db, base, out, *, epochs: int = 3, lr: float = 2e-5, batch_size: int = 8, max_length: int = 512,
          seed: int = 0, run_id: str | None = None, device: str | None = None, log=print) -> dict:
    """Fit a reward model on the ratings in ``db``, starting from the model+tokenizer folder ``base``, and save
    it (``save_pretrained``, with the tokenizer and ``rlft_reward_model.json``) to ``out``. Returns metrics:
    the examples used, the mean loss of each epoch, held-in accuracy/MSE before and after."""
    import torch

    with Store(db) as store:
        pairs, scores = examples(store, run_id)
    if not pairs and not scores:
        raise ValueError(f"{db} holds no ratings to train on")
    random.seed(seed)
    torch.manual_seed(seed)
    model, tok = load(base, device)
    before = evaluate(model, tok, pairs, scores, max_length=max_length)
    log(f"reward-model: {len(pairs)} pairs, {len(scores)} scores; before: {_fmt(before)}")
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    data = [("pair", p) for p in pairs] + [("score", s) for s in scores]
    rng = random.Random(seed)
    epoch_loss = []
    for epoch in range(epochs):
        model.train()
        rng.shuffle(data)
        total = 0.0
        for k in range(0, len(data), batch_size):
            batch = data[k:k + batch_size]
            loss = _loss(model, tok, batch, max_length)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            total += loss.item() * len(batch)
        epoch_loss.append(total / len(data))
        log(f"reward-model: epoch {epoch + 1}/{epochs} loss {epoch_loss[-1]:.4f}")
    model.eval()
    after = evaluate(model, tok, pairs, scores, max_length=max_length)
    log(f"reward-model: after: {_fmt(after)}")
    metrics = {"pairs": len(pairs), "scores": len(scores), "epoch_loss": epoch_loss,
               "before": before, "after": after}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    meta = {"base": os.fspath(base), "db": os.fspath(db), "run_id": run_id, "epochs": epochs, "lr": lr,
            "batch_size": batch_size, "max_length": max_length, "seed": seed, **metrics}
    (out / "rlft_reward_model.json").write_text(json.dumps(meta, indent=2) + "\n")
    log(f"reward-model: saved to {out}")
    return metrics


def _fmt(m: dict) -> str:
    return ", ".join(f"{k} {v:.3f}" for k, v in m.items()) or "-"
