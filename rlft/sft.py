"""The supervised warm start: maximise log p(reference | prompt) on the same data, before RL."""

from __future__ import annotations

import random

import torch

from . import backends
from .policy import left_pad
from .step import Example, MicroBatch


def _reference_ids(tok, example: Example, column: str, eos: int) -> list[int]:
    ref = example.row.columns.get(column)
    if isinstance(ref, list):  # several references: learn the first
        ref = ref[0]
    return tok(str(ref), add_special_tokens=False)["input_ids"] + [eos]


def supervised(model, tok, examples: list[Example], cfg, logger=None) -> list[float]:
    """`cfg.sft.steps` AdamW steps of `cfg.sft.batch_size` (prompt, reference) pairs; returns the losses.

    The loss is the mean negative log-likelihood per reference token (EOS included, so it learns to stop)."""
    s = cfg.sft
    backend = backends.plain(model, tok)
    device = backend.device
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=s.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min(1.0, (i + 1) / s.warmup_steps) if s.warmup_steps else 1.0)
    rng = random.Random(cfg.train.seed + 1)
    order: list[int] = []
    losses = []
    model.train()
    for step in range(1, s.steps + 1):
        if len(order) < s.batch_size:
            more = list(range(len(examples)))
            rng.shuffle(more)
            order += more
        batch = [examples[i] for i in order[:s.batch_size]]
        del order[:s.batch_size]
        p_ids, p_mask = left_pad([e.ids for e in batch], tok.pad_token_id, device)
        refs = [_reference_ids(tok, e, cfg.data.reference_column, backend.eos_ids[0]) for e in batch]
        t = max(len(x) for x in refs)
        c_ids = torch.full((len(batch), t), tok.pad_token_id, dtype=torch.long, device=device)
        c_mask = torch.zeros((len(batch), t), dtype=torch.long, device=device)
        for i, x in enumerate(refs):
            c_ids[i, :len(x)] = torch.tensor(x)
            c_mask[i, :len(x)] = 1
        logp = backend.logprobs(MicroBatch(torch.arange(len(batch)), p_ids, p_mask, None, c_ids, c_mask)).logp
        loss = -(logp * c_mask).sum() / c_mask.sum()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        if logger is not None and (step % 50 == 0 or step == s.steps):
            logger.note(f"sft step {step}/{s.steps}  loss {sum(losses[-50:]) / len(losses[-50:]):.4f}")
    return losses
