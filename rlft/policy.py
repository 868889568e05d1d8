"""The model layer's shared pieces, below every backend: loading a causal LM and its tokenizer, LoRA, prompt
formatting and encoding, padding, positions, the output head, and `token_logps` -- the chunked float32 log-softmax
every backend's log-probs go through (no float32 [N, T, V] tensor exists at once).

Nothing here decides which backend runs the model: `rlft.backends.build` does that once (docs/architecture.md).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .config import ModelConfig
from .errors import ConfigError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def check_path(cfg: ModelConfig) -> None:
    """A model.path that looks local must exist (hub ids look like 'org/name')."""
    if not cfg.path:
        raise ConfigError("model.path is empty: give a local model folder or a hub id")
    looks_local = cfg.path.startswith((".", "/", "~")) or cfg.path.count("/") > 1
    if looks_local and not Path(cfg.path).expanduser().exists():
        raise ConfigError(f"model.path {cfg.path} does not exist (a local folder was expected; hub ids look "
                          f"like 'org/name')")


def hub_kwargs(cfg: ModelConfig) -> dict:
    return dict(trust_remote_code=cfg.trust_remote_code, **({"revision": cfg.revision} if cfg.revision else {}))


def load_causal(cfg: ModelConfig, adapter: str | None = None):
    """An AutoModelForCausalLM and its tokenizer from a local folder or a hub id; fix what real checkpoints lack.

    With ``model.lora.r > 0`` the model is wrapped with LoRA adapters: new ones, or those saved in
    ``adapter`` (a checkpoint folder)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    local = Path(cfg.path).expanduser()
    kw = hub_kwargs(cfg)
    try:
        tokenizer = AutoTokenizer.from_pretrained(cfg.tokenizer or cfg.path, **kw)
        model = AutoModelForCausalLM.from_pretrained(cfg.path, dtype=DTYPES[cfg.dtype], **kw)
    except OSError as e:
        where = "from the local folder" if local.exists() else "(not a local folder; tried it as a hub id)"
        raise ConfigError(f"cannot load model.path {cfg.path!r} {where}: {e}") from None
    model.to(pick_device(cfg.device))
    prepare_tokenizer(tokenizer)
    return memory_savers(model, cfg, adapter), tokenizer


def memory_savers(model, cfg: ModelConfig, adapter: str | None = None):
    """Gradient checkpointing and LoRA, as configured (causal and seq2seq models alike)."""
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False  # the sampler passes use_cache=True explicitly
    if cfg.lora.r > 0:
        model = add_lora(model, cfg, adapter)
    return model


def add_lora(model, cfg: ModelConfig, adapter: str | None = None):
    """Wrap the model with PEFT LoRA adapters (new ones, or trainable ones loaded from ``adapter``)."""
    try:
        from peft import LoraConfig, PeftModel, get_peft_model
    except ImportError:
        raise ConfigError("model.lora.r > 0 needs PEFT: pip install 'rlft[lora]'") from None
    if adapter is not None:
        return PeftModel.from_pretrained(model, adapter, is_trainable=True)
    tm = cfg.lora.target_modules
    target = "all-linear" if tm == ["all-linear"] else list(tm)
    lcfg = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                      target_modules=target,
                      task_type="SEQ_2_SEQ_LM" if model.config.is_encoder_decoder else "CAUSAL_LM")
    return get_peft_model(model, lcfg)


def is_lora(model) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "get_base_model")


def unwrap(model):
    """The transformers model inside a PEFT wrapper (its layers carry the adapters), else the model."""
    return model.get_base_model() if is_lora(model) else model


def prepare_tokenizer(tokenizer) -> None:
    """Pad token (many checkpoints have none: reuse EOS) and left padding for prompts."""
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token if tokenizer.eos_token is not None else tokenizer.unk_token
    tokenizer.padding_side = "left"


def eos_ids(tokenizer, model) -> list[int]:
    """The model's full list of EOS ids: generation_config.json may list several, then config, then tokenizer."""
    ids: list[int] = []
    for src in (getattr(model, "generation_config", None), model.config, tokenizer):
        v = getattr(src, "eos_token_id", None)
        for i in ([v] if isinstance(v, int) else (v or [])):
            if i not in ids:
                ids.append(int(i))
    return ids


def uses_chat_template(tokenizer, chat_template: str = "auto") -> bool:
    """Whether prompts go through the tokenizer's chat template (``model.chat_template``: auto, on, off)."""
    has_template = getattr(tokenizer, "chat_template", None) is not None
    return chat_template == "on" or (chat_template == "auto" and has_template)


def format_prompt(tokenizer, text_or_messages, *, chat_template: str = "auto", system: str = "",
                  tools: list | None = None) -> str:
    """The prompt as the model sees it: through the chat template for chat models (with ``tools`` offered to the
    model, when given), else as given."""
    if chat_template == "on" and getattr(tokenizer, "chat_template", None) is None:
        raise ConfigError("model.chat_template=on but the tokenizer has no chat template")
    if not uses_chat_template(tokenizer, chat_template):
        if not isinstance(text_or_messages, str):
            raise ConfigError("a prompt is a list of chat messages but the tokenizer has no chat template")
        return text_or_messages
    messages = text_or_messages
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    if system and not any(m.get("role") == "system" for m in messages):
        messages = [{"role": "system", "content": system}] + list(messages)
    return tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=True)


def encode_prompt(tokenizer, text: str, add_bos: str = "auto", *, encoder: bool = False) -> list[int]:
    """Token ids of a formatted prompt, with BOS exactly once when the model expects one.

    Encoding without special tokens and adding BOS ourselves avoids the double BOS of a chat template that
    already writes it in the text. ``encoder``: the encoder inputs of a seq2seq model, which take the tokenizer's
    own special tokens (T5 and Marian append ``</s>``, BART wraps in ``<s> ... </s>``): how they were trained."""
    if encoder:
        return tokenizer(text)["input_ids"]
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    bos = tokenizer.bos_token_id
    if bos is None or add_bos == "off":
        return ids
    if add_bos == "auto":
        probe = tokenizer("a", add_special_tokens=True)["input_ids"]
        if not probe or probe[0] != bos:
            return ids
    return ids if ids[:1] == [bos] else [bos] + ids


def left_pad(seqs: list[list[int]], pad_id: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, P] ids and mask, padded on the left so every prompt ends at the same column."""
    width = max(1, max(len(s) for s in seqs))
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            ids[i, width - len(s):] = torch.tensor(s)
            mask[i, width - len(s):] = 1
    return ids.to(device), mask.to(device)


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding (as transformers.generate computes them)."""
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)


def output_head(model):
    """The backbone, the LM head, and the model's logit post-processing (soft-capping, scaling)."""
    model = unwrap(model)
    cfg = model.config
    scale = getattr(cfg, "logit_scale", None)
    cap = getattr(cfg, "final_logit_softcapping", None)

    def head(h):
        logits = model.get_output_embeddings()(h)
        if scale is not None:
            logits = logits * scale
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
        return logits

    return model.base_model, head


@dataclass
class TokenStats:
    logp: torch.Tensor               # [N, T] log pi(a_t | s_t) at the sampling temperature
    entropy: torch.Tensor | None     # [N, T] entropy of pi(. | s_t), when asked for
    hidden: torch.Tensor | None      # [N, T, H] last hidden state at s_t, when asked for (value head)


def token_logps(logits_of, tokens: torch.Tensor, *, temperature: float, with_entropy: bool, entropy_grad: bool = True,
                chunk_tokens: int = 4096) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs [N, T] of ``tokens`` and, when asked, the entropies, from ``logits_of(a, b)``: the logits
    [b - a, V] of flat positions a..b-1 (row-major over [N, T]). Computed ``chunk_tokens`` positions at a time,
    the log-softmax in float32 per chunk, so no float32 [N*T, V] tensor exists at once."""
    n, t = tokens.shape
    flat_y = tokens.reshape(-1)
    temp = temperature if temperature > 0 else 1.0
    logps, ents = [], []
    for s in range(0, n * t, chunk_tokens):
        lsm = F.log_softmax(logits_of(s, s + chunk_tokens).float() / temp, -1)      # [chunk, V]
        logps.append(lsm.gather(-1, flat_y[s:s + chunk_tokens, None]).squeeze(-1))
        if with_entropy:
            with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
                ents.append(-(lsm.exp() * lsm).sum(-1))
    if not logps:  # no positions (T = 0)
        zeros = torch.zeros((n, t), device=tokens.device)
        return zeros, (zeros if with_entropy else None)
    return torch.cat(logps).view(n, t), (torch.cat(ents).view(n, t) if with_entropy else None)


def frozen_copy(model):
    """The reference policy: a frozen copy of the initial weights."""
    ref = copy.deepcopy(model)
    ref.eval()
    ref.requires_grad_(False)
    return ref


class ValueHead(torch.nn.Module):
    """V(s_t): a linear layer on the policy's last hidden state (the learned state baseline)."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.proj = torch.nn.Linear(hidden_size, 1)
        torch.nn.init.zeros_(self.proj.weight)
        torch.nn.init.zeros_(self.proj.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # [N, T, H] -> [N, T]
        return self.proj(h.float()).squeeze(-1)
