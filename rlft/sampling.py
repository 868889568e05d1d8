"""Sampling completions: the `Rollout` contract, drawing, stop strings, finishing rows, and ONE decode loop.

`decode` runs over any `Decoder` -- an object holding ``logits`` [N, V] (after the prompt, then after each step),
``step(tokens) -> logits`` and, when it can drop finished rows from its batch, ``keep(idx)`` (else ``keep = None``).
The backends provide decoders: rlft/backends/lean.py (the model's own modules, a KV cache allocated once),
rlft/backends/hf.py (transformers' forward and cache), rlft/backends/seq2seq.py (an encoder-decoder's decoder).

The loop keeps everything on the device: no per-step host sync except every `sync_every` steps -- to stop
when all sequences have finished and to drop finished rows from the batch -- and when stop strings must be
checked on decoded text. Each step draws one uniform number per row (inverse-CDF sampling) and writes the token
as drawn; cutting at EOS and padding happen once, at the end (`finish`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

import torch
import torch.nn.functional as F


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
    # multi-turn episodes (rlft/episodes.py): the completion holds the model's turns and the environment's replies;
    # action_mask [N, T] is 1 on the model's tokens only (None: every completion token is the model's), and turns
    # [N] holds each conversation as chat messages [{role, content}] (None: single-turn)
    action_mask: torch.Tensor | None = None
    turns: list | None = None

    @property
    def lengths(self) -> torch.Tensor:  # [N]
        return self.completion_mask.sum(-1)

    @property
    def actions(self) -> torch.Tensor:  # [N, T] the model's own tokens: what is trained and counts as time steps
        return self.completion_mask if self.action_mask is None else self.action_mask

    def select(self, idx: list[int]) -> Rollout:
        """The rows in ``idx`` (replace, don't mutate)."""
        ix = torch.tensor(idx, dtype=torch.long, device=self.prompt_ids.device)
        return replace(self, prompt_ids=self.prompt_ids[ix], prompt_mask=self.prompt_mask[ix],
                       completion_ids=self.completion_ids[ix], completion_mask=self.completion_mask[ix],
                       logp=self.logp[ix], finish=[self.finish[i] for i in idx],
                       completions=[self.completions[i] for i in idx],
                       action_mask=None if self.action_mask is None else self.action_mask[ix],
                       turns=None if self.turns is None else [self.turns[i] for i in idx])

    @staticmethod
    def concat(parts: list[Rollout], pad_id: int) -> Rollout:
        """The rows of every part in order; prompts re-padded on the left, completions on the right."""
        if len(parts) == 1:
            return parts[0]
        p = max(x.prompt_ids.shape[1] for x in parts)
        t = max(x.completion_ids.shape[1] for x in parts)

        def left(x, v):  # pad on the left to width p
            return F.pad(x, (p - x.shape[1], 0), value=v)

        def right(x, v):
            return F.pad(x, (0, t - x.shape[1]), value=v)

        return Rollout(torch.cat([left(x.prompt_ids, pad_id) for x in parts]),
                       torch.cat([left(x.prompt_mask, 0) for x in parts]),
                       torch.cat([right(x.completion_ids, pad_id) for x in parts]),
                       torch.cat([right(x.completion_mask, 0) for x in parts]),
                       torch.cat([right(x.logp, 0.0) for x in parts]),
                       sum((x.finish for x in parts), []), sum((x.completions for x in parts), []),
                       None if all(x.action_mask is None for x in parts) else
                       torch.cat([right(x.actions, 0) for x in parts]),
                       None if all(x.turns is None for x in parts) else
                       sum((x.turns or [None] * len(x.finish) for x in parts), []))


@dataclass(frozen=True)
class SamplingParams:
    """How to sample: ``rollout.*`` keys of the config (temperature 0 is greedy)."""

    max_new_tokens: int
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    stop: tuple = ()

    @staticmethod
    def of(rollout_cfg, greedy: bool = False) -> SamplingParams:
        r = rollout_cfg
        return SamplingParams(r.max_new_tokens, 0.0 if greedy else r.temperature, r.top_k, r.top_p, tuple(r.stop))


class Decoder(Protocol):
    logits: torch.Tensor                      # [n, V] next-token logits of the rows still decoded
    keep: Callable[[torch.Tensor], None] | None  # go on with these rows only; None: rows stay in the batch

    def step(self, tokens: torch.Tensor) -> torch.Tensor: ...  # feed [n] tokens, get the next [n, V] logits


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


def draw(logits: torch.Tensor, params: SamplingParams, generator):
    """One token per row ([N, V] logits) and its log-prob at the temperature, before top-k / top-p."""
    if params.temperature <= 0:
        return logits.argmax(-1), torch.log_softmax(logits, -1).amax(-1)
    lsm = torch.log_softmax(logits / params.temperature, -1)
    weights = filter_logits(lsm, params.top_k, params.top_p).exp()
    # inverse-CDF sampling: one uniform per row (torch.multinomial draws one exponential per vocabulary entry);
    # the running sum in float64 keeps a token's share of [0, total) exact to ~1e-16 even for large vocabularies
    cdf = weights.double().cumsum(-1)                                                       # [N, V]
    total = cdf[:, -1:]
    u = torch.rand(total.shape, generator=generator, dtype=cdf.dtype, device=cdf.device) * total
    u = torch.minimum(u, torch.nextafter(total, torch.zeros_like(total)))  # below the last step, never on it
    tok = torch.searchsorted(cdf, u, right=True).squeeze(-1)   # the first entry whose cdf exceeds u: weight > 0
    return tok, lsm.gather(-1, tok[:, None]).squeeze(-1)


@dataclass
class _State:
    """The per-row sampling buffers, allocated once."""

    tokens: torch.Tensor     # [N, T] as drawn; cut in `finish`
    logps: torch.Tensor      # [N, T]
    done: torch.Tensor       # [N] bool
    stop_len: torch.Tensor   # [N] 0 = no stop string
    reported: torch.Tensor   # [N] bool: rows handed to on_done

    @staticmethod
    def alloc(n: int, max_new_tokens: int, pad: int, device) -> _State:
        return _State(torch.full((n, max_new_tokens), pad, dtype=torch.long, device=device),
                      torch.zeros((n, max_new_tokens), device=device), torch.zeros(n, dtype=torch.bool, device=device),
                      torch.zeros(n, dtype=torch.long, device=device), torch.zeros(n, dtype=torch.bool, device=device))


@dataclass(frozen=True)
class Finisher:
    """Everything `finish` needs besides the tokens: the tokenizer (decoding), EOS ids, stop strings, pad id."""

    tokenizer: object
    eos: torch.Tensor        # [E] EOS ids
    stop: tuple
    pad: int

    def __call__(self, prompt_ids, prompt_mask, tokens, logps, stop_len, drawn=None) -> Rollout:
        return finish(self, prompt_ids, prompt_mask, tokens, logps, stop_len, drawn)


def decode(decoder: Decoder, tokenizer, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, params: SamplingParams,
           eos_ids: list[int], *, generator: torch.Generator | None = None, sync_every: int = 8,
           lockstep: Callable[[bool], bool] | None = None, on_done=None) -> Rollout:
    """Sample one completion per row of ``prompt_ids`` ([N, P], left-padded) from ``decoder`` (already prefilled).

    ``lockstep(running) -> bool``: FSDP with sharded weights, every rank decodes as many steps (asked at each host
    sync). ``on_done(rows, part)``: called at host syncs with the rows that finished since the last call and their
    final completions (``part``, a Rollout of those rows, as the returned one will hold them); rows still running at
    the end are not reported."""
    n, device = prompt_ids.shape[0], prompt_ids.device
    fin = Finisher(tokenizer, torch.tensor(eos_ids, dtype=torch.long, device=device), tuple(params.stop),
                   tokenizer.pad_token_id)
    st = _State.alloc(n, params.max_new_tokens, fin.pad, device)
    logits, rows, steps = decoder.logits, None, 0  # rows: those still decoded once finished ones left (None: all)
    window = max((len(s) for s in fin.stop), default=0) + 1  # trailing tokens that can hold a stop string
    for t in range(params.max_new_tokens):
        tok, lp = draw(logits, params, generator)                                          # [n], [n]
        hit = torch.isin(tok, fin.eos)
        if rows is None:
            st.tokens[:, t], st.logps[:, t] = tok, lp
            st.done |= hit
        else:
            st.tokens[rows, t], st.logps[rows, t] = tok, lp
            st.done[rows] |= hit
        steps = t + 1
        if fin.stop:
            hit_stop = _ends_with_stop(tokenizer, st.tokens[:, max(0, t + 1 - window):t + 1], fin.stop) & ~st.done
            st.stop_len = torch.where(hit_stop, t + 1, st.stop_len)
            st.done |= hit_stop
        if t == params.max_new_tokens - 1:
            break
        if (t + 1) % sync_every == 0:  # the only host sync: stop when all have finished, drop finished rows
            live = (~st.done).nonzero().squeeze(-1)
            if on_done is not None:
                _report(on_done, st, fin, prompt_ids, prompt_mask, t + 1)
            running = live.numel() > 0 if lockstep is None else lockstep(live.numel() > 0)
            if not running:
                break
            if decoder.keep is not None and 0 < live.numel() <= 0.75 * (n if rows is None else rows.numel()):
                keep = live if rows is None else torch.searchsorted(rows, live)  # positions in the current batch
                decoder.keep(keep)
                tok, rows = tok[keep], live
        logits = decoder.step(tok)
    return fin(prompt_ids, prompt_mask, st.tokens[:, :steps], st.logps[:, :steps], st.stop_len)


def _report(on_done, st: _State, fin: Finisher, prompt_ids, prompt_mask, steps: int) -> None:
    """Hand the rows finished since the last report to ``on_done``. A finished row's completion is final: `finish`
    cuts it at its EOS or stop string whatever was drawn after."""
    new = (st.done & ~st.reported).nonzero().squeeze(-1)
    if new.numel():
        on_done(new.tolist(), fin(prompt_ids[new], prompt_mask[new], st.tokens[new, :steps], st.logps[new, :steps],
                                  st.stop_len[new]))
    st.reported = st.reported | st.done


def finish(fin: Finisher, prompt_ids, prompt_mask, tokens, logps, stop_len, drawn=None) -> Rollout:
    """Cut each row at its first EOS (kept) or stop string, pad the rest, decode the text the rewards see.
    ``drawn`` [N]: how many tokens each row holds (default: all T); past them a row ran out of length."""
    steps = tokens.shape[1]
    is_eos = torch.isin(tokens, fin.eos)                                                    # [N, T]
    never = steps + 1
    end_eos = torch.where(is_eos.any(-1), is_eos.long().argmax(-1) + 1, never)              # [N]
    end_stop = torch.where(stop_len > 0, stop_len, never)
    limit = torch.full_like(end_eos, steps) if drawn is None else drawn
    end_eos = torch.where(end_eos <= limit, end_eos, never)                 # an EOS id among the padding is not one
    lengths = torch.minimum(torch.minimum(end_eos, end_stop), limit)
    reason = torch.where(end_eos == lengths, 1, torch.where(end_stop == lengths, 2, 0))  # 0 length, 1 eos, 2 stop
    mask = (torch.arange(steps, device=tokens.device)[None] < lengths[:, None]).long()
    tokens = torch.where(mask.bool(), tokens, fin.pad)
    logps = logps * mask
    reasons = [("length", "eos", "stop")[r] for r in reason.tolist()]
    texts = fin.tokenizer.batch_decode([row[:k] for row, k in zip(tokens.tolist(), lengths.tolist())],
                                       skip_special_tokens=True)
    texts = [strip_stop(s, fin.stop) if f == "stop" else s for s, f in zip(texts, reasons)]
    return Rollout(prompt_ids, prompt_mask, tokens, mask, logps, reasons, texts)


def _ends_with_stop(tokenizer, tail: torch.Tensor, stop) -> torch.Tensor:
    texts = tokenizer.batch_decode(tail.tolist(), skip_special_tokens=False)
    return torch.tensor([any(s in tx for s in stop) for tx in texts], device=tail.device)


def strip_stop(text: str, stop) -> str:
    cut = min((text.find(s) for s in stop if s in text), default=-1)
    return text[:cut] if cut >= 0 else text


def from_generated(tokenizer, prompt_ids, prompt_mask, tokens, eos: list[int], stop, logp_of) -> Rollout:
    """A `Rollout` from the new tokens `generate` (or another engine) wrote ([N, T]); ``logp_of(tokens, mask)``
    recomputes their log-probs ([N, T]) with the backend's own forward."""
    n, t = tokens.shape
    is_eos = torch.isin(tokens, torch.tensor(eos, device=tokens.device))
    # a completion ends at its first EOS (inclusive); generate pads the rest with pad (which may equal EOS)
    first = torch.where(is_eos.any(-1), is_eos.float().argmax(-1) + 1, torch.full((n,), t, device=tokens.device))
    mask = (torch.arange(t, device=tokens.device)[None] < first[:, None]).long()
    tokens = torch.where(mask.bool(), tokens, tokenizer.pad_token_id)
    with torch.no_grad():
        logp = logp_of(tokens, mask) * mask
    finish = ["eos" if is_eos[i].any() else "length" for i in range(n)]
    texts = tokenizer.batch_decode([row[:m] for row, m in zip(tokens.tolist(), first.tolist())],
                                   skip_special_tokens=True)
    if stop:
        finish = ["stop" if f == "length" and any(s in tx for s in stop) else f for f, tx in zip(finish, texts)]
        texts = [strip_stop(s, stop) for s in texts]
    return Rollout(prompt_ids, prompt_mask, tokens.clone(), mask, logp.clone(), finish, texts)
