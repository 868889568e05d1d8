"""Backends: one object per way of running the model, chosen once, here, from the config.

| backend | when | module |
| --- | --- | --- |
| `Causal` | a decoder-only model (rlft's decode loop; ``rollout.engine: hf``: `generate`) | base.py, lean.py, hf.py |
| `Seq2Seq` | an encoder-decoder model (``model.kind``, or the checkpoint's ``is_encoder_decoder``) | seq2seq.py |
| `FSDP` | ``train.parallel: fsdp`` under torchrun with more than one process | fsdp.py |
| `VLLM` | ``rollout.engine: vllm`` (a CUDA GPU, the ``vllm`` extra) | vllm.py |

The rest of rlft calls the backend's methods and never asks which one it holds (docs/architecture.md).
"""

from __future__ import annotations

import torch

from ..config import Config, ModelConfig
from ..errors import ConfigError
from ..policy import check_path, eos_ids, load_causal
from . import fsdp
from .base import AdaptersOff, Causal
from .fsdp import FSDP
from .seq2seq import Seq2Seq, load_seq2seq, wants_seq2seq
from .vllm import VLLM

__all__ = ["AdaptersOff", "Causal", "FSDP", "Seq2Seq", "VLLM", "build", "load_policy", "plain", "prepare"]


def load_policy(cfg: ModelConfig, adapter: str | None = None):
    """(model, tokenizer) from a local folder or a hub id: an AutoModelForSeq2SeqLM when ``model.kind`` (or, with
    auto, the checkpoint) says encoder-decoder, else an AutoModelForCausalLM. ``adapter``: saved LoRA adapters."""
    check_path(cfg)
    return load_seq2seq(cfg, adapter) if wants_seq2seq(cfg) else load_causal(cfg, adapter)


def build(cfg: Config, model, tokenizer, world: int = 1):
    """The backend for this run's model, as the config says (FSDP shards the model in place)."""
    eos = eos_ids(tokenizer, model)
    engine = cfg.rollout.engine
    if model.config.is_encoder_decoder:
        if engine == "vllm":
            raise ConfigError("rollout.engine=vllm supports decoder-only models; use rollout.engine=rlft for "
                              "encoder-decoder ones")
        if fsdp.enabled(cfg):
            raise ConfigError("train.parallel=fsdp supports decoder-only models; use train.parallel=ddp for seq2seq")
        return Seq2Seq(model, tokenizer, eos, engine=engine)
    if fsdp.enabled(cfg):
        return FSDP(fsdp.shard(model, cfg), tokenizer, eos, cfg, engine=engine)
    if engine == "vllm":
        return VLLM(model, tokenizer, eos, cfg, world)
    return Causal(model, tokenizer, eos, engine=engine, decode=cfg.rollout.decode)


def plain(model, tokenizer):
    """The model run in this process by rlft's own code (no engine, no sharding): for the supervised warm start."""
    eos = eos_ids(tokenizer, model)
    return Seq2Seq(model, tokenizer, eos) if model.config.is_encoder_decoder else Causal(model, tokenizer, eos)


def prepare(model, cfg: Config) -> None:
    """What every policy needs before training: no dropout (sampling and training log-probs must come from the
    same function, and the ratio is exactly 1 at the first pass), and positions that fit the lengths."""
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    check_positions(model, cfg)


def check_positions(model, cfg: Config) -> None:
    """Models with learned absolute positions (GPT-2, OPT, BART, ...) cannot go past their table: say so at
    start-up instead of an IndexError mid-run."""
    limit = None
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Embedding) and name.split(".")[-1] in ("wpe", "embed_positions",
                                                                          "position_embeddings"):
            limit = m.num_embeddings - getattr(m, "offset", 0)
            break
    if limit is None:
        return
    d, r = cfg.data, cfg.rollout
    seq2seq = model.config.is_encoder_decoder
    need = max(d.max_prompt_tokens, r.max_new_tokens + 2) if seq2seq else d.max_prompt_tokens + r.max_new_tokens
    if need > limit:
        raise ConfigError(f"the model has {limit} learned positions, but data.max_prompt_tokens="
                          f"{d.max_prompt_tokens} {'and' if seq2seq else '+'} rollout.max_new_tokens={r.max_new_tokens}"
                          f" need {need}; lower them")
