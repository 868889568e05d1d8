"""Sampling completions: the `Rollout` contract and a batched, KV-cached sampling loop.

The loop keeps everything on the device: no per-step host sync except every `sync_every` steps to stop
early when all sequences have finished, and when stop strings must be checked on decoded text.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from .policy import position_ids


@dataclass(frozen=True)
class Rollout:
    """N = B * G completions; consecutive groups of G share a prompt."""

    prompt_ids: torch.Tensor       # [N, P] left-padded
    prompt_mask: torch.Tensor      # [N, P]
    completion_ids: torch.Tensor   # [N, T] right-padded with pad_id
    completion_mask: torch.Tensor  # [N, T] 1 for sampled tokens (EOS / stop included)
    logp: torch.Tensor             # [N, T] sampling log-probs (temperature applied, before top-k/top-p)
    finish: list[str]              # [N] eos | stop | length
    completions: list[str]         # [N] decoded text the rewards see (special tokens and stop string removed)

    @property
    def lengths(self) -> torch.Tensor:  # [N]
        return self.completion_mask.sum(-1)

    def select(self, idx: list[int]) -> "Rollout":
        """The rows in ``idx`` (replace, don't mutate)."""
        ix = torch.tensor(idx, dtype=torch.long, device=self.prompt_ids.device)
        return replace(self, prompt_ids=self.prompt_ids[ix], prompt_mask=self.prompt_mask[ix],
                       completion_ids=self.completion_ids[ix], completion_mask=self.completion_mask[ix],
                       logp=self.logp[ix], finish=[self.finish[i] for i in idx],
                       completions=[self.completions[i] for i in idx])


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Set logits outside the top-k / nucleus (top-p) set to -inf. logits: [N, V]."""
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(-1)
        # drop a token when the tokens ranked above it already hold top_p of the mass
        drop_sorted = probs.cumsum(-1) - probs >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def _cache_names(model) -> tuple[str, str]:
    """The KV-cache keyword of this transformers version: `cache` (5.x) or `past_key_values` (4.x)."""
    import inspect

    from .policy import unwrap

    return ("cache", "cache") if "cache" in inspect.signature(unwrap(model).forward).parameters else \
        ("past_key_values", "past_key_values")


def sample(model, tokenizer, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, **kw) -> Rollout:
    """Sample one completion per row of ``prompt_ids`` ([N, P], left-padded). Temperature 0 is greedy.

    Keywords: ``max_new_tokens``, ``temperature``, ``top_k``, ``top_p``, ``stop`` (strings), ``eos_ids``
    (default: the model's full list), ``generator`` (a seeded torch.Generator makes it reproducible)."""
    if model.config.is_encoder_decoder:  # prompt_ids are the encoder inputs: rlft/seq2seq.py
        from .seq2seq import sample as seq2seq_sample

        return seq2seq_sample(model, tokenizer, prompt_ids, prompt_mask, **kw)
    with torch.inference_mode():
        r = _sample(model, tokenizer, prompt_ids, prompt_mask, **kw)
    # inference tensors cannot enter autograd later; the copy is O(N*T), negligible next to sampling
    return replace(r, completion_ids=r.completion_ids.clone(), completion_mask=r.completion_mask.clone(),
                   logp=r.logp.clone())


def _sample(model, tokenizer, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, *, max_new_tokens: int,
            temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, stop: list[str] | tuple = (),
            eos_ids: list[int] | None = None, generator: torch.Generator | None = None,
            sync_every: int = 8) -> Rollout:
    n = prompt_ids.shape[0]
    device = prompt_ids.device
    pad = tokenizer.pad_token_id
    eos = torch.tensor(eos_ids if eos_ids is not None else tokenizer.rlft_eos_ids, device=device)
    tokens = torch.full((n, max_new_tokens), pad, dtype=torch.long, device=device)      # [N, T]
    logps = torch.zeros((n, max_new_tokens), device=device)                               # [N, T]
    done = torch.zeros(n, dtype=torch.bool, device=device)                                # [N]
    lengths = torch.zeros(n, dtype=torch.long, device=device)                             # [N]
    reason = torch.zeros(n, dtype=torch.long, device=device)  # 0 length, 1 eos, 2 stop
    attn = torch.cat([prompt_mask, torch.ones((n, max_new_tokens), dtype=prompt_mask.dtype, device=device)], 1)
    pos = position_ids(prompt_mask)
    p = prompt_ids.shape[1]
    cache_in, cache_out = _cache_names(model)
    out = model(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=pos, use_cache=True,
                logits_to_keep=1)
    cache, next_pos = out[cache_out], pos[:, -1:] + 1
    logits = out.logits[:, -1].float()
    stop_ids = _stop_window(tokenizer, stop)
    steps = 0
    for t in range(max_new_tokens):
        if temperature > 0:
            logits = logits / temperature
            lsm = torch.log_softmax(logits, -1)
            filtered = filter_logits(lsm, top_k, top_p)
            tok = torch.multinomial(filtered.softmax(-1), 1, generator=generator).squeeze(-1)
        else:
            lsm = torch.log_softmax(logits, -1)
            tok = logits.argmax(-1)
        live = ~done
        tokens[:, t] = torch.where(live, tok, pad)
        logps[:, t] = torch.where(live, lsm.gather(-1, tok[:, None]).squeeze(-1), 0.0)
        lengths += live.long()
        hit_eos = live & torch.isin(tok, eos)
        reason = torch.where(hit_eos, 1, reason)
        done = done | hit_eos
        steps = t + 1
        if stop:
            hit_stop = _ends_with_stop(tokenizer, tokens[:, max(0, t + 1 - stop_ids):t + 1], stop) & ~done
            reason = torch.where(hit_stop, 2, reason)
            done = done | hit_stop
        if t == max_new_tokens - 1 or ((t + 1) % sync_every == 0 and bool(done.all())):
            break
        out = model(input_ids=tokens[:, t:t + 1], attention_mask=attn[:, :p + t + 1], position_ids=next_pos,
                    use_cache=True, **{cache_in: cache})
        cache, next_pos = out[cache_out], next_pos + 1
        logits = out.logits[:, -1].float()
    tokens, logps = tokens[:, :steps], logps[:, :steps]
    mask = (torch.arange(steps, device=device)[None] < lengths[:, None]).long()
    finish = [("length", "eos", "stop")[r] for r in reason.tolist()]
    texts = tokenizer.batch_decode([row[:l] for row, l in zip(tokens.tolist(), lengths.tolist())],
                                   skip_special_tokens=True)
    texts = [_strip_stop(s, stop) if f == "stop" else s for s, f in zip(texts, finish)]
    return Rollout(prompt_ids, prompt_mask, tokens, mask, logps, finish, texts)


def _stop_window(tokenizer, stop) -> int:
    """How many trailing tokens can hold a stop string (a token is at least one character)."""
    return max((len(s) for s in stop), default=0) + 1


def _ends_with_stop(tokenizer, tail: torch.Tensor, stop) -> torch.Tensor:
    texts = tokenizer.batch_decode(tail.tolist(), skip_special_tokens=False)
    return torch.tensor([any(s in tx for s in stop) for tx in texts], device=tail.device)


def _strip_stop(text: str, stop) -> str:
    cut = min((text.find(s) for s in stop if s in text), default=-1)
    return text[:cut] if cut >= 0 else text


def hf_generate(model, tokenizer, prompt_ids, prompt_mask, *, max_new_tokens: int, temperature: float = 1.0,
                top_k: int = 0, top_p: float = 1.0, stop=(), generator=None) -> Rollout:
    """The `transformers.generate` fallback (rollout.engine: hf), returning the same `Rollout`."""
    if model.config.is_encoder_decoder:
        from .seq2seq import hf_generate as seq2seq_generate

        return seq2seq_generate(model, tokenizer, prompt_ids, prompt_mask, max_new_tokens=max_new_tokens,
                                temperature=temperature, top_k=top_k, top_p=top_p, stop=stop, generator=generator)
    eos = tokenizer.rlft_eos_ids
    with torch.inference_mode():
        kw = dict(do_sample=temperature > 0, max_new_tokens=max_new_tokens, eos_token_id=eos,
                  pad_token_id=tokenizer.pad_token_id, output_scores=True, return_dict_in_generate=True,
                  stop_strings=list(stop) or None, tokenizer=tokenizer if stop else None)
        if temperature > 0:
            kw.update(temperature=temperature, top_k=top_k or None, top_p=top_p)
        out = model.generate(input_ids=prompt_ids, attention_mask=prompt_mask, **kw)
    tokens = out.sequences[:, prompt_ids.shape[1]:]
    n, t = tokens.shape
    eos_t = torch.tensor(eos, device=tokens.device)
    is_eos = torch.isin(tokens, eos_t)
    # a completion ends at its first EOS (inclusive); generate pads the rest with pad (which may equal EOS)
    first = torch.where(is_eos.any(-1), is_eos.float().argmax(-1) + 1, torch.full((n,), t, device=tokens.device))
    mask = (torch.arange(t, device=tokens.device)[None] < first[:, None]).long()
    from .policy import completion_logp
    with torch.inference_mode():
        logp = completion_logp(model, prompt_ids, prompt_mask, tokens, mask, temperature=temperature).logp * mask
    finish = ["eos" if is_eos[i].any() else "length" for i in range(n)]
    texts = tokenizer.batch_decode([row[:l] for row, l in zip(tokens.tolist(), first.tolist())],
                                   skip_special_tokens=True)
    if stop:
        finish = ["stop" if f == "length" and any(s in tx for s in stop) else f for f, tx in zip(finish, texts)]
        texts = [_strip_stop(s, stop) for s in texts]
    tokens = torch.where(mask.bool(), tokens, tokenizer.pad_token_id)
    return Rollout(prompt_ids, prompt_mask, tokens, mask, logp, finish, texts)
