"""Sampling completions: the `Rollout` contract and a batched, KV-cached sampling loop.

The loop keeps everything on the device: no per-step host sync except every `sync_every` steps -- to stop
when all sequences have finished and to drop finished rows from the batch -- and when stop strings must be
checked on decoded text. Supported architectures decode through rlft/lean.py (the model's own modules, a KV
cache allocated once); others through transformers' forward. Each step draws one uniform number per row
(inverse-CDF sampling) and writes the token as drawn; cutting at EOS and padding happen once, at the end.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from .lean import lean
from .policy import output_head, position_ids


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
    (default: the model's full list), ``generator`` (a seeded torch.Generator makes it reproducible),
    ``lockstep`` (FSDP with sharded weights: `rlft.fsdp.lockstep`, so every rank decodes as many steps),
    ``on_done(rows, part)``: called at host syncs with the rows that finished since the last call and their final
    completions (``part``, a Rollout of those rows, as the returned one will hold them); rows still running at
    the end are not reported."""
    if model.config.is_encoder_decoder:  # prompt_ids are the encoder inputs: rlft/seq2seq.py
        from .seq2seq import sample as seq2seq_sample

        return seq2seq_sample(model, tokenizer, prompt_ids, prompt_mask, **kw)
    # FSDP's hooks keep the gathered weights between passes: they must not be inference tensors
    with torch.no_grad() if kw.get("lockstep") else torch.inference_mode():
        r = _sample(model, tokenizer, prompt_ids, prompt_mask, **kw)
    # inference tensors cannot enter autograd later; the copy is O(N*T), negligible next to sampling
    return replace(r, completion_ids=r.completion_ids.clone(), completion_mask=r.completion_mask.clone(),
                   logp=r.logp.clone())


def _buffers(tokenizer, n: int, max_new_tokens: int, eos_ids, device):
    """The sampling state, allocated once: pad id, EOS ids, and the per-row token / log-prob / end buffers."""
    pad = tokenizer.pad_token_id
    eos = torch.tensor(eos_ids if eos_ids is not None else tokenizer.rlft_eos_ids, dtype=torch.long, device=device)
    tokens = torch.full((n, max_new_tokens), pad, dtype=torch.long, device=device)      # [N, T] as drawn; cut below
    logps = torch.zeros((n, max_new_tokens), device=device)                               # [N, T]
    done = torch.zeros(n, dtype=torch.bool, device=device)                                # [N]
    stop_len = torch.zeros(n, dtype=torch.long, device=device)                            # [N] 0 = no stop string
    return pad, eos, tokens, logps, done, stop_len


def _sample(model, tokenizer, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, *, max_new_tokens: int,
            temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, stop: list[str] | tuple = (),
            eos_ids: list[int] | None = None, generator: torch.Generator | None = None,
            sync_every: int = 8, lockstep=None, on_done=None) -> Rollout:
    n = prompt_ids.shape[0]
    device = prompt_ids.device
    pad, eos, tokens, logps, done, stop_len = _buffers(tokenizer, n, max_new_tokens, eos_ids, device)
    pos = position_ids(prompt_mask)
    fast = lean(model, prompt_ids.shape[1] + max_new_tokens)  # own forward, preallocated KV cache (rlft/lean.py)
    dec = fast.decoder(prompt_ids, prompt_mask, pos, max_new_tokens, output_head(model)[1]) if fast is not None \
        else _Transformers(model, prompt_ids, prompt_mask, pos, max_new_tokens)
    logits = dec.logits
    rows = None  # the rows still decoded, once finished ones have been dropped from the batch (None: all)
    window = _stop_window(tokenizer, stop)
    steps = 0
    reported = torch.zeros(n, dtype=torch.bool, device=device)  # rows handed to on_done
    for t in range(max_new_tokens):
        tok, lp = _draw(logits, temperature, top_k, top_p, generator)                     # [n], [n]
        hit = torch.isin(tok, eos)
        if rows is None:
            tokens[:, t], logps[:, t] = tok, lp
            done |= hit
        else:
            tokens[rows, t], logps[rows, t] = tok, lp
            done[rows] |= hit
        steps = t + 1
        if stop:
            hit_stop = _ends_with_stop(tokenizer, tokens[:, max(0, t + 1 - window):t + 1], stop) & ~done
            stop_len = torch.where(hit_stop, t + 1, stop_len)
            done |= hit_stop
        if t == max_new_tokens - 1:
            break
        if (t + 1) % sync_every == 0:  # the only host sync: stop when all have finished, drop finished rows
            live = (~done).nonzero().squeeze(-1)
            running = live.numel() > 0
            if on_done is not None:
                reported = _report(on_done, reported, done, tokenizer, prompt_ids, prompt_mask, tokens[:, :t + 1],
                                   logps[:, :t + 1], eos, stop_len, stop, pad)
            if lockstep is not None:  # sharded FSDP weights: go on while any rank has a running row
                running = lockstep(running)
            if not running:
                break
            if dec.keep is not None and 0 < live.numel() <= 0.75 * (n if rows is None else rows.numel()):
                keep = live if rows is None else torch.searchsorted(rows, live)  # positions in the current batch
                dec.keep(keep)
                tok, rows = tok[keep], live
        logits = dec.step(tok)
    return _finish(tokenizer, prompt_ids, prompt_mask, tokens[:, :steps], logps[:, :steps], eos, stop_len, stop, pad)


def _report(on_done, reported, done, tokenizer, prompt_ids, prompt_mask, tokens, logps, eos, stop_len, stop, pad):
    """Hand the rows finished since the last report to ``on_done``; returns the updated reported mask. A finished
    row's completion is final: `_finish` cuts it at its EOS or stop string whatever was drawn after."""
    new = (done & ~reported).nonzero().squeeze(-1)
    if new.numel():
        on_done(new.tolist(), _finish(tokenizer, prompt_ids[new], prompt_mask[new], tokens[new], logps[new], eos,
                                      stop_len[new], stop, pad))
    return reported | done


def _draw(logits: torch.Tensor, temperature: float, top_k: int, top_p: float, generator):
    """One token per row ([N, V] logits) and its log-prob at the temperature, before top-k / top-p."""
    if temperature <= 0:
        return logits.argmax(-1), torch.log_softmax(logits, -1).amax(-1)
    lsm = torch.log_softmax(logits / temperature, -1)
    weights = filter_logits(lsm, top_k, top_p).exp()
    # inverse-CDF sampling: one uniform per row (torch.multinomial draws one exponential per vocabulary entry);
    # the running sum in float64 keeps a token's share of [0, total) exact to ~1e-16 even for large vocabularies
    cdf = weights.double().cumsum(-1)                                                       # [N, V]
    total = cdf[:, -1:]
    u = torch.rand(total.shape, generator=generator, dtype=cdf.dtype, device=cdf.device) * total
    u = torch.minimum(u, torch.nextafter(total, torch.zeros_like(total)))  # below the last step, never on it
    tok = torch.searchsorted(cdf, u, right=True).squeeze(-1)   # the first entry whose cdf exceeds u: weight > 0
    return tok, lsm.gather(-1, tok[:, None]).squeeze(-1)


def _finish(tokenizer, prompt_ids, prompt_mask, tokens, logps, eos, stop_len, stop, pad, drawn=None) -> Rollout:
    """Cut each row at its first EOS (kept) or stop string, pad the rest, decode the text the rewards see.
    ``drawn`` [N]: how many tokens each row holds (default: all T); past them a row ran out of length."""
    n, steps = tokens.shape
    is_eos = torch.isin(tokens, eos)                                                        # [N, T]
    never = steps + 1
    end_eos = torch.where(is_eos.any(-1), is_eos.long().argmax(-1) + 1, never)              # [N]
    end_stop = torch.where(stop_len > 0, stop_len, never)
    limit = torch.full_like(end_eos, steps) if drawn is None else drawn
    end_eos = torch.where(end_eos <= limit, end_eos, never)                 # an EOS id among the padding is not one
    lengths = torch.minimum(torch.minimum(end_eos, end_stop), limit)
    reason = torch.where(end_eos == lengths, 1, torch.where(end_stop == lengths, 2, 0))  # 0 length, 1 eos, 2 stop
    mask = (torch.arange(steps, device=tokens.device)[None] < lengths[:, None]).long()
    tokens = torch.where(mask.bool(), tokens, pad)
    logps = logps * mask
    finish = [("length", "eos", "stop")[r] for r in reason.tolist()]
    texts = tokenizer.batch_decode([row[:l] for row, l in zip(tokens.tolist(), lengths.tolist())],
                                   skip_special_tokens=True)
    texts = [_strip_stop(s, stop) if f == "stop" else s for s, f in zip(texts, finish)]
    return Rollout(prompt_ids, prompt_mask, tokens, mask, logps, finish, texts)


class _Transformers:
    """Decoding through transformers' forward and cache: the fallback for models rlft/lean.py does not cover."""

    keep = None  # finished rows stay in the batch

    def __init__(self, model, ids, mask, pos, max_new_tokens: int):
        self.model = model
        self.cache_in, self.cache_out = _cache_names(model)
        self.attn = torch.cat([mask, torch.ones((ids.shape[0], max_new_tokens), dtype=mask.dtype, device=ids.device)], 1)
        self.length = ids.shape[1]
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1)
        self.cache, self.pos = out[self.cache_out], pos[:, -1:] + 1
        self.logits = out.logits[:, -1].float()

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        self.length += 1
        out = self.model(input_ids=tokens[:, None], attention_mask=self.attn[:, :self.length], position_ids=self.pos,
                         use_cache=True, **{self.cache_in: self.cache})
        self.cache, self.pos = out[self.cache_out], self.pos + 1
        self.logits = out.logits[:, -1].float()
        return self.logits


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
                top_k: int = 0, top_p: float = 1.0, stop=(), generator=None, lockstep=None) -> Rollout:
    """The `transformers.generate` fallback (rollout.engine: hf), returning the same `Rollout`. ``lockstep``:
    FSDP with sharded weights, where generate must sync the ranks every step (`synced_gpus`)."""
    if model.config.is_encoder_decoder:
        from .seq2seq import hf_generate as seq2seq_generate

        return seq2seq_generate(model, tokenizer, prompt_ids, prompt_mask, max_new_tokens=max_new_tokens,
                                temperature=temperature, top_k=top_k, top_p=top_p, stop=stop, generator=generator)
    eos = tokenizer.rlft_eos_ids
    with torch.no_grad() if lockstep else torch.inference_mode():  # (no inference tensors in FSDP's hooks)
        # with FSDP, gathered weights need no per-step sync (rlft/fsdp.py); sharded ones do
        kw = dict(do_sample=temperature > 0, max_new_tokens=max_new_tokens, eos_token_id=eos,
                  pad_token_id=tokenizer.pad_token_id, output_scores=True, return_dict_in_generate=True,
                  stop_strings=list(stop) or None, tokenizer=tokenizer if stop else None,
                  synced_gpus=lockstep is not None)
        if temperature > 0:
            kw.update(temperature=temperature, top_k=top_k or None, top_p=top_p)
        out = model.generate(input_ids=prompt_ids, attention_mask=prompt_mask, **kw)
    return from_generated(model, tokenizer, prompt_ids, prompt_mask, out.sequences[:, prompt_ids.shape[1]:], eos,
                          stop, temperature)


def from_generated(model, tokenizer, prompt_ids, prompt_mask, tokens, eos, stop, temperature) -> Rollout:
    """A `Rollout` from the new tokens `generate` wrote ([N, T]); log-probs recomputed by `completion_logp`."""
    from .policy import completion_logp

    n, t = tokens.shape
    is_eos = torch.isin(tokens, torch.tensor(eos, device=tokens.device))
    # a completion ends at its first EOS (inclusive); generate pads the rest with pad (which may equal EOS)
    first = torch.where(is_eos.any(-1), is_eos.float().argmax(-1) + 1, torch.full((n,), t, device=tokens.device))
    mask = (torch.arange(t, device=tokens.device)[None] < first[:, None]).long()
    tokens = torch.where(mask.bool(), tokens, tokenizer.pad_token_id)
    with torch.no_grad():
        logp = completion_logp(model, prompt_ids, prompt_mask, tokens, mask, temperature=temperature).logp * mask
    finish = ["eos" if is_eos[i].any() else "length" for i in range(n)]
    texts = tokenizer.batch_decode([row[:m] for row, m in zip(tokens.tolist(), first.tolist())],
                                   skip_special_tokens=True)
    if stop:
        finish = ["stop" if f == "length" and any(s in tx for s in stop) else f for f, tx in zip(finish, texts)]
        texts = [_strip_stop(s, stop) for s in texts]
    return Rollout(prompt_ids, prompt_mask, tokens.clone(), mask, logp.clone(), finish, texts)
