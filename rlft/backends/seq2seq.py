"""Encoder-decoder policies (T5, BART, Marian, NLLB: any ``AutoModelForSeq2SeqLM``) as a backend (`Seq2Seq`):
`sample` returns a `Rollout` from the same decode loop as causal models (rlft/sampling.py) over the decoder here,
`logprobs` gives per-token log-probs of the decoder tokens, so the loop, estimators and loss are the same.

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

from pathlib import Path

import torch

from ..config import ModelConfig
from ..errors import ConfigError
from ..policy import DTYPES, TokenStats, hub_kwargs, memory_savers, pick_device, prepare_tokenizer, token_logps
from ..sampling import Rollout, SamplingParams
from ..step import MicroBatch
from . import hf
from .base import Causal


def wants_seq2seq(cfg: ModelConfig) -> bool:
    """``model.kind``: seq2seq, causal, or auto (the checkpoint's ``config.is_encoder_decoder``)."""
    if cfg.kind != "auto":
        return cfg.kind == "seq2seq"
    from transformers import AutoConfig

    try:
        mcfg = AutoConfig.from_pretrained(cfg.path, **hub_kwargs(cfg))
    except (OSError, ValueError):
        return False  # the causal loader reports the problem in its own words
    return bool(getattr(mcfg, "is_encoder_decoder", False))


def load_seq2seq(cfg: ModelConfig, adapter: str | None = None):
    """An ``AutoModelForSeq2SeqLM`` and its tokenizer; gradient checkpointing and LoRA as for causal models."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    kw = hub_kwargs(cfg)
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
    prepare_tokenizer(tokenizer)
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


class Seq2Seq(Causal):
    """An encoder-decoder model: the encoder runs once per distinct prompt, the decoder samples with its KV cache."""

    seq2seq = True

    def logprobs(self, mb: MicroBatch, *, temperature: float = 1.0, with_entropy: bool = False,
                 entropy_grad: bool = True, with_hidden: bool = False, chunk_tokens: int = 4096) -> TokenStats:
        """Per-token log-probs [n, T] of the decoder tokens given the encoder inputs (teacher forcing): one
        encoder pass per distinct prompt, one decoder pass over prefix + completion. The log-softmax runs in
        float32, ``chunk_tokens`` positions at a time (the model's own head gives the logits: T5's scaling and
        BART's final bias included)."""
        mb = mb.unshared()  # `encode` finds the repeated prompts itself
        model, ids = self.model, mb.completion_ids
        n, t = ids.shape
        pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0
        enc, enc_mask = encode(model, mb.prompt_ids, mb.prompt_mask, pad)
        prefix = _prefix(model, n, ids.device)
        k = prefix.shape[1]
        dec_in = torch.cat([prefix, ids[:, :-1]], 1)                                          # [n, k+T-1]
        out = model(encoder_outputs=enc, attention_mask=enc_mask, decoder_input_ids=dec_in, use_cache=False,
                    output_hidden_states=with_hidden)
        flat = out.logits[:, k - 1:].reshape(n * t, -1)                      # [n*T, V]: a_t given s_t
        logp, entropy = token_logps(lambda a, b: flat[a:b], ids, temperature=temperature, with_entropy=with_entropy,
                                    chunk_tokens=chunk_tokens)
        hidden = out.decoder_hidden_states[-1][:, k - 1:] if with_hidden else None            # [n, T, H]
        return TokenStats(logp, entropy, hidden)

    def decoder(self, ids: torch.Tensor, mask: torch.Tensor, max_new_tokens: int):
        return Seq2SeqDecoder(self.model, ids, mask, self.tokenizer.pad_token_id)

    def _generate(self, prompt_ids, prompt_mask, params: SamplingParams) -> Rollout:
        ids, mask = right_align(prompt_ids, prompt_mask, self.tokenizer.pad_token_id)
        k = len(decoder_prefix(self.model))
        # generate writes the decoder prefix, then the new tokens; it counts a forced first token as a new one
        seqs = hf.generate(self.model, self.tokenizer, ids, mask, params, self.eos_ids, extra_new_tokens=k - 1)
        return self._from_generated(prompt_ids, prompt_mask, seqs[:, k:], params)


class Seq2SeqDecoder:
    """A `rlft.sampling.Decoder` over an encoder-decoder model: the self-attention cache grows, the cross-attention
    cache is computed once; finished rows stay in the batch."""

    keep = None

    def __init__(self, model, ids, mask, pad: int):
        self.model = model
        self.enc, self.enc_mask = encode(model, ids, mask, pad)
        out = model(encoder_outputs=self.enc, attention_mask=self.enc_mask,
                    decoder_input_ids=_prefix(model, ids.shape[0], ids.device), use_cache=True)
        self.cache, self.logits = out.cache, out.logits[:, -1].float()

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        out = self.model(encoder_outputs=self.enc, attention_mask=self.enc_mask, decoder_input_ids=tokens[:, None],
                         cache=self.cache, use_cache=True)
        self.cache, self.logits = out.cache, out.logits[:, -1].float()
        return self.logits
