"""Encoder-decoder policies (T5, BART, Marian, NLLB: any ``AutoModelForSeq2SeqLM``) behind the same contract as
causal ones: `load_policy`, `sample` (and the `hf_generate` fallback) return a `Rollout`, `completion_logp`
returns per-token log-probs of the decoder tokens. `policy.load_policy`, `policy.completion_logp`,
`rollout.sample` and `rollout.hf_generate` hand encoder-decoder models to the functions here, so the loop,
estimators and loss are the same.

The `Rollout` contract for seq2seq:

* ``prompt_ids`` / ``prompt_mask`` [N, P] are the *encoder* inputs, left-padded like causal prompts (so the
  trainer slices micro-batches the same way). They are moved to right padding before the encoder, because
  BART / Marian / NLLB add learned absolute positions that left padding would shift.
* ``completion_ids`` [N, T] are the decoder tokens after the decoder prefix (``decoder_start_token_id`` and,
  when the model has one, the forced first token: NLLB / mBART's target-language code, BART's BOS). The prefix
  is never sampled and never in the loss.

The encoder runs once per distinct prompt: the G samples of a prompt share one encoder pass (duplicate rows
are found with ``torch.unique``) in sampling and in each micro-batch of the update. The decoder samples with
its KV cache (self-attention cache grows, the cross-attention cache is computed once).

Prompts are encoded with the tokenizer's own special tokens (T5 and Marian append ``</s>``, BART wraps in
``<s> ... </s>``, NLLB adds the source-language code): that is how these models were trained.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from .config import ConfigError, ModelConfig


def wants_seq2seq(cfg: ModelConfig) -> bool:
    """``model.kind``: seq2seq, causal, or auto (the checkpoint's ``config.is_encoder_decoder``)."""
    if cfg.kind != "auto":
        return cfg.kind == "seq2seq"
    from transformers import AutoConfig

    kw = dict(trust_remote_code=cfg.trust_remote_code, **({"revision": cfg.revision} if cfg.revision else {}))
    try:
        mcfg = AutoConfig.from_pretrained(cfg.path, **kw)
    except (OSError, ValueError):
        return False  # the causal loader reports the problem in its own words
    return bool(getattr(mcfg, "is_encoder_decoder", False))


def load_policy(cfg: ModelConfig, adapter: str | None = None):
    """An ``AutoModelForSeq2SeqLM`` and its tokenizer, ready for `sample` and `completion_logp`; gradient
    checkpointing and LoRA as for causal models (`policy.load_policy`)."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from .policy import DTYPES, memory_savers, pick_device, prepare_tokenizer

    kw = dict(trust_remote_code=cfg.trust_remote_code, **({"revision": cfg.revision} if cfg.revision else {}))
    try:
        tokenizer = AutoTokenizer.from_pretrained(cfg.tokenizer or cfg.path, **kw)
        model = AutoModelForSeq2SeqLM.from_pretrained(cfg.path, dtype=DTYPES[cfg.dtype], **kw)
    except (OSError, ValueError) as e:
        where = "from the local folder" if Path(cfg.path).expanduser().exists() else "(tried it as a hub id)"
        raise ConfigError(f"cannot load model.path {cfg.path!r} as a sequence-to-sequence model {where}: {e}. "
                          f"For a decoder-only model set model.kind to auto or causal.") from None
    model.to(pick_device(cfg.device))
    if cfg.forced_bos_token:
        tid = tokenizer.convert_tokens_to_ids(cfg.forced_bos_token)
        if tid is None or tid == tokenizer.unk_token_id:
            raise ConfigError(f"model.forced_bos_token {cfg.forced_bos_token!r} is not a token of the tokenizer")
        model.generation_config.forced_bos_token_id = tid  # saved with every checkpoint
    prepare_tokenizer(tokenizer, model)
    tokenizer.rlft_seq2seq = True  # policy.encode_prompt: keep the tokenizer's own special tokens
    decoder_prefix(model)  # fail now, not at step 1, when the model has no decoder start token
    return memory_savers(model, cfg, adapter), tokenizer


def decoder_prefix(model) -> list[int]:
    """The decoder tokens before the first sampled one: decoder_start (+ the forced first token, if any)."""
    gc, mc = getattr(model, "generation_config", None), model.config
    start = getattr(gc, "decoder_start_token_id", None)
    if start is None:
        start = getattr(mc, "decoder_start_token_id", None)
    if start is None:
        raise ConfigError("this encoder-decoder model has no decoder_start_token_id (config.json or "
                          "generation_config.json); set it in the checkpoint")
    forced = getattr(gc, "forced_bos_token_id", None)
    return [int(start)] + ([int(forced)] if forced is not None else [])


def right_align(ids: torch.Tensor, mask: torch.Tensor, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, P] left- (or any-) padded rows -> the same tokens, in order, padded on the right."""
    order = torch.sort((mask == 0).long(), dim=1, stable=True).indices   # real tokens first, order kept
    mask = mask.gather(1, order)
    ids = torch.where(mask.bool(), ids.gather(1, order), pad_id)
    return ids, mask


def encode(model, ids: torch.Tensor, mask: torch.Tensor, pad_id: int):
    """Encoder outputs for [N, P] left-padded prompts, the encoder run once per distinct row.
    Returns (encoder outputs with last_hidden_state [N, P, H], right-padded mask [N, P])."""
    from transformers.modeling_outputs import BaseModelOutput

    ids, mask = right_align(ids, mask, pad_id)
    uniq, inverse = torch.unique(torch.cat([ids, mask], 1), dim=0, return_inverse=True)   # [U, 2P], [N]
    p = ids.shape[1]
    h = model.get_encoder()(input_ids=uniq[:, :p], attention_mask=uniq[:, p:]).last_hidden_state   # [U, P, H]
    return BaseModelOutput(last_hidden_state=h[inverse]), mask


def _prefix(model, n: int, device) -> torch.Tensor:
    return torch.tensor(decoder_prefix(model), device=device).expand(n, -1)             # [N, k]


def completion_logp(model, prompt_ids, prompt_mask, completion_ids, completion_mask, *, temperature: float = 1.0,
                    with_entropy: bool = False, with_hidden: bool = False, chunk_tokens: int = 4096):
    """Per-token log-probs [N, T] of the decoder tokens given the encoder inputs (teacher forcing): one
    encoder pass per distinct prompt, one decoder pass over prefix + completion. The log-softmax runs in
    float32, ``chunk_tokens`` positions at a time (the model's own head gives the logits: T5's scaling and
    BART's final bias included)."""
    from .policy import TokenStats, token_logps

    n, t = completion_ids.shape
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    enc, enc_mask = encode(model, prompt_ids, prompt_mask, pad)
    prefix = _prefix(model, n, completion_ids.device)
    k = prefix.shape[1]
    dec_in = torch.cat([prefix, completion_ids[:, :-1]], 1)                              # [N, k+T-1]
    out = model(encoder_outputs=enc, attention_mask=enc_mask, decoder_input_ids=dec_in, use_cache=False,
                output_hidden_states=with_hidden)
    logits = out.logits[:, k - 1:]                                                        # [N, T, V]: a_t given s_t
    flat = logits.reshape(n * t, -1)
    logp, entropy = token_logps(lambda a, b: flat[a:b], completion_ids, temperature=temperature,
                                with_entropy=with_entropy, chunk_tokens=chunk_tokens)
    hidden = out.decoder_hidden_states[-1][:, k - 1:] if with_hidden else None            # [N, T, H]
    return TokenStats(logp, entropy, hidden)


def sample(model, tokenizer, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, **kw):
    """`rollout.sample` for encoder-decoder models: same keywords, same `Rollout`."""
    with torch.inference_mode():
        r = _sample(model, tokenizer, prompt_ids, prompt_mask, **kw)
    return replace(r, completion_ids=r.completion_ids.clone(), completion_mask=r.completion_mask.clone(),
                   logp=r.logp.clone())


def _sample(model, tokenizer, prompt_ids, prompt_mask, *, max_new_tokens: int, temperature: float = 1.0,
            top_k: int = 0, top_p: float = 1.0, stop=(), eos_ids: list[int] | None = None,
            generator: torch.Generator | None = None, sync_every: int = 8, on_done=None):
    # tokens are drawn, finished and reported (on_done) exactly as in the causal sampler (rollout._draw, _finish)
    from .rollout import _buffers, _draw, _ends_with_stop, _finish, _report, _stop_window

    n, device = prompt_ids.shape[0], prompt_ids.device
    pad, eos, tokens, logps, done, stop_len = _buffers(tokenizer, n, max_new_tokens, eos_ids, device)
    enc, enc_mask = encode(model, prompt_ids, prompt_mask, pad)
    out = model(encoder_outputs=enc, attention_mask=enc_mask, decoder_input_ids=_prefix(model, n, device),
                use_cache=True)
    cache, logits = out.cache, out.logits[:, -1].float()
    window = _stop_window(tokenizer, stop)
    steps = 0
    reported = torch.zeros(n, dtype=torch.bool, device=device)  # rows handed to on_done
    for t in range(max_new_tokens):
        tok, lp = _draw(logits, temperature, top_k, top_p, generator)                     # [N], [N]
        tokens[:, t], logps[:, t] = tok, lp
        done |= torch.isin(tok, eos)
        steps = t + 1
        if stop:
            hit_stop = _ends_with_stop(tokenizer, tokens[:, max(0, t + 1 - window):t + 1], stop) & ~done
            stop_len = torch.where(hit_stop, t + 1, stop_len)
            done |= hit_stop
        if t == max_new_tokens - 1:
            break
        if (t + 1) % sync_every == 0:
            if on_done is not None:
                reported = _report(on_done, reported, done, tokenizer, prompt_ids, prompt_mask, tokens[:, :t + 1],
                                   logps[:, :t + 1], eos, stop_len, stop, pad)
            if bool(done.all()):
                break
        out = model(encoder_outputs=enc, attention_mask=enc_mask, decoder_input_ids=tok[:, None], cache=cache,
                    use_cache=True)
        cache, logits = out.cache, out.logits[:, -1].float()
    return _finish(tokenizer, prompt_ids, prompt_mask, tokens[:, :steps], logps[:, :steps], eos, stop_len, stop, pad)


def hf_generate(model, tokenizer, prompt_ids, prompt_mask, *, max_new_tokens: int, temperature: float = 1.0,
                top_k: int = 0, top_p: float = 1.0, stop=(), generator=None):
    """`rollout.hf_generate` (rollout.engine: hf) for encoder-decoder models."""
    from .rollout import from_generated

    eos, pad = tokenizer.rlft_eos_ids, tokenizer.pad_token_id
    ids, mask = right_align(prompt_ids, prompt_mask, pad)
    k = len(decoder_prefix(model))
    with torch.inference_mode():  # generate counts a forced first token as a new one
        kw = dict(do_sample=temperature > 0, max_new_tokens=max_new_tokens + k - 1, eos_token_id=eos, pad_token_id=pad,
                  stop_strings=list(stop) or None, tokenizer=tokenizer if stop else None)
        if temperature > 0:
            kw.update(temperature=temperature, top_k=top_k or None, top_p=top_p)
        seqs = model.generate(input_ids=ids, attention_mask=mask, **kw)
    # generate writes the decoder prefix, then the new tokens
    return from_generated(model, tokenizer, prompt_ids, prompt_mask, seqs[:, k:], eos, stop, temperature)


def tiny_seq2seq_lm(tokenizer, arch: str = "t5", hidden: int = 32, layers: int = 2, heads: int = 2,
                    max_positions: int = 512, seed: int = 0):
    """A randomly initialised ``t5`` or ``bart`` sized for a CPU test (no dropout, so train and eval agree).
    The BART one forces BOS as the decoder's first token, as facebook/bart-large does."""
    from transformers import AutoConfig, AutoModelForSeq2SeqLM

    pad, bos, eos = tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id
    if arch == "t5":
        cfg = AutoConfig.for_model("t5", d_model=hidden, num_layers=layers, num_decoder_layers=layers,
                                   num_heads=heads, d_kv=hidden // heads, d_ff=hidden * 2, vocab_size=len(tokenizer),
                                   decoder_start_token_id=pad, pad_token_id=pad, eos_token_id=eos, dropout_rate=0.0)
    elif arch == "bart":
        cfg = AutoConfig.for_model("bart", d_model=hidden, encoder_layers=layers, decoder_layers=layers,
                                   encoder_attention_heads=heads, decoder_attention_heads=heads,
                                   encoder_ffn_dim=hidden * 2, decoder_ffn_dim=hidden * 2,
                                   max_position_embeddings=max_positions, vocab_size=len(tokenizer),
                                   pad_token_id=pad, bos_token_id=bos, eos_token_id=eos, decoder_start_token_id=eos,
                                   dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)
    else:
        raise ValueError(f"tiny_seq2seq_lm: arch must be t5 or bart, got {arch!r}")
    torch.manual_seed(seed)
    model = AutoModelForSeq2SeqLM.from_config(cfg)
    if arch == "bart":
        model.generation_config.forced_bos_token_id = bos
        model.generation_config.forced_eos_token_id = None  # rlft never forces EOS at the length limit
    return model
