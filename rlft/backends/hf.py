"""Running a causal LM through transformers itself: the decoder over transformers' forward and cache (the fallback
for models rlft/backends/lean.py does not cover) and `transformers.generate` (``rollout.engine: hf``)."""

from __future__ import annotations

import inspect

import torch

from ..policy import unwrap
from ..sampling import SamplingParams


def cache_names(model) -> tuple[str, str]:
    """The KV-cache keyword of this transformers version: `cache` (5.x) or `past_key_values` (4.x)."""
    return ("cache", "cache") if "cache" in inspect.signature(unwrap(model).forward).parameters else \
        ("past_key_values", "past_key_values")


class TransformersDecoder:
    """A `rlft.sampling.Decoder` through transformers' forward and cache."""

    keep = None  # finished rows stay in the batch

    def __init__(self, model, ids, mask, pos, max_new_tokens: int):
        self.model = model
        self.cache_in, self.cache_out = cache_names(model)
        more = torch.ones((ids.shape[0], max_new_tokens), dtype=mask.dtype, device=ids.device)
        self.attn = torch.cat([mask, more], 1)
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


def generate(model, tokenizer, ids, mask, params: SamplingParams, eos: list[int], *, synced: bool = False,
             extra_new_tokens: int = 0) -> torch.Tensor:
    """`model.generate` as rlft samples; returns its sequences (a causal model's begin with ``ids``).
    ``synced``: FSDP with sharded weights, every rank steps together (`synced_gpus`); gathered weights need no
    per-step sync. ``extra_new_tokens``: tokens generate writes that rlft does not count (a seq2seq forced BOS)."""
    with torch.no_grad() if synced else torch.inference_mode():  # (no inference tensors in FSDP's hooks)
        kw = dict(do_sample=params.temperature > 0, max_new_tokens=params.max_new_tokens + extra_new_tokens,
                  eos_token_id=eos, pad_token_id=tokenizer.pad_token_id, stop_strings=list(params.stop) or None,
                  tokenizer=tokenizer if params.stop else None, synced_gpus=synced)
        if params.temperature > 0:
            kw.update(temperature=params.temperature, top_k=params.top_k or None, top_p=params.top_p)
        return model.generate(input_ids=ids, attention_mask=mask, **kw)
