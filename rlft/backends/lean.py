"""Lean forward passes for the common decoder-only architectures: the Llama family (llama, mistral, qwen2,
qwen3) and GPT-2.

transformers' forward builds masks, caches and output objects on every call, and its KV cache grows by
concatenation (a copy of the whole cache per layer per token). At the batch and model sizes of RL on a CPU
that bookkeeping costs as much as the matrix products. `Lean` runs the model's own modules (projections,
norms, MLPs, rotary embedding) with SDPA attention, one mask per call and, for sampling, a KV cache
allocated once. The arithmetic is transformers' own, in the same order (tests/test_lean.py checks hidden
states against transformers and greedy decoding against `generate`, token for token).

``lean(model)`` returns None for anything else -- another architecture or attention implementation,
gradient checkpointing, dropout while training, a sliding window shorter than the sequence, FSDP-sharded
weights (they are only whole inside the root forward, or inside `fsdp.gathered` for sampling) -- and the
callers use transformers' forward instead.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..distributed import is_sharded
from ..policy import position_ids, unwrap
from .graphs import Graphs

LLAMA_LIKE = ("llama", "mistral", "qwen2", "qwen3")
TANH_GELU = ("NewGELUActivation", "GELUTanh", "PytorchGELUTanh", "FastGELUActivation")
# transformers' RMSNorm of these models: weight * (x * rsqrt(mean(x^2) + eps)), upcast to float32 and back
RMS_NORMS = ("LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm")


def lean(model, length: int = 0) -> Lean | None:
    """A `Lean` view of ``model`` (a plain or PEFT-wrapped causal LM), or None when unsupported.
    ``length``: the longest sequence it will see (a sliding window must not cut it)."""
    m = unwrap(model)
    cfg = m.config
    # FSDP shards: only the root forward gathers them (rlft/backends/fsdp.py). Any parameter: the root's own stay
    # gathered between its forward and backward while the layers' are sharded again.
    if any(is_sharded(p) for p in m.parameters()):
        return None
    kind = getattr(cfg, "model_type", None)
    if kind not in LLAMA_LIKE + ("gpt2",) or getattr(cfg, "is_encoder_decoder", False):
        return None
    if getattr(cfg, "_attn_implementation", None) != "sdpa":
        return None
    window = getattr(cfg, "sliding_window", None)
    if window is not None and length >= window:
        return None
    ckpt = getattr(m, "is_activation_checkpointing", None)  # transformers >= 5.x; older: is_gradient_checkpointing
    if ckpt is None:
        ckpt = getattr(m, "is_gradient_checkpointing", False)
    if ckpt and torch.is_grad_enabled():
        return None
    if m.training and any(isinstance(x, torch.nn.Dropout) and x.p > 0 for x in m.modules()):
        return None
    if kind == "gpt2":
        if cfg.scale_attn_by_inverse_layer_idx or cfg.reorder_and_upcast_attn or cfg.add_cross_attention:
            return None
        if getattr(m.transformer, "wte", None) is None:
            return None
    elif getattr(cfg, "attention_dropout", 0.0) and m.training:
        return None
    return Lean(m, kind)


def _rotate_half(x):
    x1 = x[..., : x.shape[-1] // 2]
    x2 = x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


class Lean:
    """The backbone of a supported model as plain tensor code. ``hidden`` is the training / scoring forward
    (autograd works through it); ``decoder`` starts KV-cached sampling."""

    def __init__(self, model, kind: str):
        self.model, self.kind = model, kind
        cfg = model.config
        if kind == "gpt2":
            self.body = model.transformer
            self.layers = list(self.body.h)
            self.heads = self.kv_heads = cfg.n_head
            self.head_dim = cfg.n_embd // cfg.n_head
        else:
            self.body = model.model
            self.layers = list(self.body.layers)[:cfg.num_hidden_layers]
            att = self.layers[0].self_attn
            self.head_dim = att.head_dim
            self.heads = cfg.num_attention_heads
            self.kv_heads = cfg.num_key_value_heads
        self.groups = self.heads // self.kv_heads
        self.rms = kind != "gpt2" and type(self.body.norm).__name__ in RMS_NORMS

    # ------------------------------------------------------------------------------------------ pieces

    def _embed(self, ids, pos):
        if self.kind == "gpt2":
            b = self.body
            return b.drop(b.wte(ids) + b.wpe(pos)), None
        h = self.body.embed_tokens(ids)
        cos, sin = self.body.rotary_emb(h, position_ids=pos)          # [N, L, D] each
        return h, (cos[:, None], sin[:, None])

    def _qkv(self, layer, x, rope):
        """Queries [N, H, L, D], keys and values [N, Hkv, L, D] of one layer, rotary applied."""
        n, q = x.shape[:2]
        if self.kind == "gpt2":
            a = layer.attn
            qs, ks, vs = a.c_attn(x).split(a.split_size, dim=2)
            shape = (n, q, -1, self.head_dim)
            return (qs.view(shape).transpose(1, 2), ks.view(shape).transpose(1, 2), vs.view(shape).transpose(1, 2))
        a = layer.self_attn
        shape = (n, q, -1, self.head_dim)
        qs, ks = a.q_proj(x).view(shape), a.k_proj(x).view(shape)
        if hasattr(a, "q_norm"):  # qwen3: RMSNorm over each head
            qs, ks = self._norm(a.q_norm, qs), self._norm(a.k_norm, ks)
        qs, ks, vs = qs.transpose(1, 2), ks.transpose(1, 2), a.v_proj(x).view(shape).transpose(1, 2)
        cos, sin = rope
        qs = (qs * cos) + (_rotate_half(qs) * sin)
        ks = (ks * cos) + (_rotate_half(ks) * sin)
        return qs, ks, vs

    def _attend(self, layer, qs, ks, vs, mask):
        """SDPA as transformers calls it (grouped-query attention packed for one query, repeated otherwise)."""
        a = layer.attn if self.kind == "gpt2" else layer.self_attn
        n, _, q, d = qs.shape
        drop = a.attn_dropout.p if self.kind == "gpt2" else a.attention_dropout
        drop = drop if a.training else 0.0
        if self.groups > 1:
            if q == 1:
                qs = qs.reshape(n, self.kv_heads, self.groups, d)
            else:
                ks = ks[:, :, None].expand(n, self.kv_heads, self.groups, *ks.shape[2:]).reshape(
                    n, self.heads, *ks.shape[2:])
                vs = vs[:, :, None].expand(n, self.kv_heads, self.groups, *vs.shape[2:]).reshape(
                    n, self.heads, *vs.shape[2:])
        o = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask, dropout_p=drop, scale=a.scaling)
        o = o.reshape(n, -1, q, d).transpose(1, 2).reshape(n, q, -1)
        return a.c_proj(o) if self.kind == "gpt2" else a.o_proj(o)

    def _block(self, layer, h, rope, mask, cache=None, start: int = 0, prefix=None, keep=None):
        """One decoder layer. ``cache``: a preallocated (keys, values) pair to write at ``start`` and attend over
        (sampling; a [1] tensor ``start``: the fixed-shape step of `StaticDecoder`). ``prefix``: keys and values of
        earlier positions to attend over too, and ``keep``: a list that receives this
        call's keys and values (the shared-prompt forward; autograd flows through both)."""
        if self.kind == "gpt2":
            ln1, ln2, mlp = layer.ln_1, layer.ln_2, layer.mlp
            drop = layer.attn.resid_dropout
        else:
            ln1, ln2, mlp = layer.input_layernorm, layer.post_attention_layernorm, layer.mlp
            drop = None
        qs, ks, vs = self._qkv(layer, self._norm(ln1, h), rope)
        if keep is not None:
            keep.append((ks, vs))
        if cache is not None and isinstance(start, torch.Tensor):  # static shapes: write at a device-side index
            kc, vc = cache                                                 # and attend over the whole cache (the
            kc.index_copy_(2, start, ks)                                   # key mask hides what is not written)
            vc.index_copy_(2, start, vs)
            ks, vs = kc, vc
        elif cache is not None:  # write this call's keys and values, attend over everything so far
            kc, vc = cache
            end = start + ks.shape[2]
            kc[:, :, start:end] = ks
            vc[:, :, start:end] = vs
            ks, vs = kc[:, :, :end], vc[:, :, :end]
        elif prefix is not None:
            ks, vs = torch.cat([prefix[0], ks], 2), torch.cat([prefix[1], vs], 2)
        o = self._attend(layer, qs, ks, vs, mask)
        h = h + (drop(o) if drop is not None else o)
        return h + self._mlp(mlp, self._norm(ln2, h))

    def _mlp(self, mlp, x):
        # GPT-2's gelu_new, 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), is eight elementwise ops whose
        # outputs autograd keeps ([tokens, 4H] each); F.gelu(approximate="tanh") is the same function in one
        # kernel that keeps its input only (values agree to ~1e-7). Only where gradients flow: sampling keeps
        # transformers' arithmetic, so greedy decoding matches `generate` exactly.
        if self.kind == "gpt2" and torch.is_grad_enabled() and type(mlp.act).__name__ in TANH_GELU:
            return mlp.dropout(mlp.c_proj(F.gelu(mlp.c_fc(x), approximate="tanh")))
        return mlp(x)

    def _norm(self, norm, x):
        # in float32 transformers' RMSNorm (six kernels) is F.rms_norm (one), bit for bit, forward and backward
        # (tests/test_lean.py); in bfloat16 it rounds between its steps, so the module runs
        if self.rms and x.dtype == torch.float32:
            return F.rms_norm(x, norm.weight.shape, norm.weight, norm.variance_epsilon)
        return norm(x)

    def _final(self, h):
        return self.body.ln_f(h) if self.kind == "gpt2" else self._norm(self.body.norm, h)

    @staticmethod
    def _mask(valid: torch.Tensor) -> torch.Tensor:
        """[N, 1, L, L] bool: causal, padding keys hidden. Each position also sees itself, so a padding row is
        never fully masked (its output is unused; a fully masked row would give NaN)."""
        length = valid.shape[1]
        causal = torch.ones(length, length, dtype=torch.bool, device=valid.device).tril()
        m = (causal[None] & valid[:, None, :]) | torch.eye(length, dtype=torch.bool, device=valid.device)[None]
        return m[:, None]

    # -------------------------------------------------------------------------------------------- API

    def hidden(self, ids: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Final hidden states [N, L, H] (after the final norm), as ``model.base_model(...).last_hidden_state``."""
        h, rope = self._embed(ids, pos)
        m = self._mask(mask.bool())
        for layer in self.layers:
            h = self._block(layer, h, rope, m)
        return self._final(h)

    def completion_states(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, owner: torch.Tensor,
                          completion_ids: torch.Tensor, completion_mask: torch.Tensor) -> torch.Tensor:
        """The states s_t that predict each completion token, [N, T, H] (after the final norm), when rows share
        prompts: ``prompt_ids`` [U, P] holds each distinct prompt once (left-padded) and row i continues prompt
        ``owner[i]``.

        The prompts run once; their keys and values are then indexed out to the rows, which attend over them and
        over their own completion causally. The same function as `hidden` over prompt + completion: G samples of
        a prompt cost one prompt forward instead of G, in the backward pass too (the index's gradient sums the
        rows' contributions into their prompt)."""
        p, t = prompt_ids.shape[1], completion_ids.shape[1]
        h, rope = self._embed(prompt_ids, position_ids(prompt_mask))
        m = self._mask(prompt_mask.bool())
        kv: list = []
        for layer in self.layers:
            h = self._block(layer, h, rope, m, keep=kv)
        last = self._final(h[:, -1])[owner]                                   # [N, H] s_0: after the prompt
        if t == 1:
            return last[:, None]
        row_mask = prompt_mask[owner]                                         # [N, P]
        pos = position_ids(torch.cat([row_mask, completion_mask.to(row_mask.dtype)], 1))[:, p:p + t - 1]
        h, rope = self._embed(completion_ids[:, :t - 1], pos)                 # a_0 .. a_{T-2} give s_1 .. s_{T-1}
        own = completion_mask[:, :t - 1].bool()
        m = torch.cat([row_mask.bool()[:, None].expand(-1, t - 1, -1), self._mask(own)[:, 0]], 2)[:, None]
        for layer, (ks, vs) in zip(self.layers, kv):
            h = self._block(layer, h, rope, m, prefix=(ks[owner], vs[owner]))
        return torch.cat([last[:, None], self._final(h)], 1)

    def decoder(self, ids: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor, max_new_tokens: int,
                head, *, static: bool = False, capture: bool = False) -> Decoder:
        """A prefilled decoder: `Decoder`, or with ``static`` the fixed-shape `StaticDecoder` (``capture``: its
        step recorded as CUDA graphs; needs CUDA)."""
        if static:
            return StaticDecoder(self, ids, mask, pos, max_new_tokens, head, capture=capture)
        return Decoder(self, ids, mask, pos, max_new_tokens, head)


class Decoder:
    """KV-cached decoding: the cache ([layers] x [N, Hkv, P + T, D]) and the key mask are allocated once.

    ``logits`` [N, V] holds the next-token logits after the prompt, then after each ``step(tokens)``.
    Rows with the same prompt (the G samples of a group) share one prefill: each distinct prompt runs once and
    its keys, values and logits are copied to its rows."""

    share_prefill = True  # benchmarks/ablation.py switches it off to measure what it buys

    def __init__(self, lean: Lean, ids, mask, pos, max_new_tokens: int, head):
        self.lean, self.head = lean, head
        n, p = ids.shape
        self._alloc(n, p + max_new_tokens, ids.device)
        self.valid[:, :p] = mask.bool()
        self.pos = pos[:, -1:] + 1                                            # [N, 1] next position
        self.length = p
        self.logits = self._prefill(ids, mask, pos)

    def _alloc(self, n: int, size: int, device) -> None:
        """The cache (written before it is read) and the key mask (every generated position valid)."""
        lean = self.lean
        kw = {"dtype": self._dtype(), "device": device}
        self.cache = [(torch.empty(n, lean.kv_heads, size, lean.head_dim, **kw),
                       torch.empty(n, lean.kv_heads, size, lean.head_dim, **kw)) for _ in lean.layers]
        self.valid = torch.ones(n, size, dtype=torch.bool, device=device)

    def _dtype(self):
        lean = self.lean
        return (lean.body.wte.weight if lean.kind == "gpt2" else lean.body.embed_tokens.weight).dtype

    def _prefill(self, ids, mask, pos) -> torch.Tensor:
        """Run the prompts, write their keys and values at the cache's first P positions; the logits after them."""
        lean, (n, p) = self.lean, ids.shape
        kw = {"dtype": self._dtype(), "device": ids.device}
        distinct, owner = torch.unique(torch.cat([ids, mask], 1), dim=0, return_inverse=True)
        if distinct.shape[0] == n or not self.share_prefill:  # no prompt repeats: prefill straight into the cache
            prefill, owner = self.cache, None
        else:
            ids, mask, pos = distinct[:, :p], distinct[:, p:], position_ids(distinct[:, p:])
            prefill = [(torch.empty(len(ids), lean.kv_heads, p, lean.head_dim, **kw),
                        torch.empty(len(ids), lean.kv_heads, p, lean.head_dim, **kw)) for _ in lean.layers]
        h, rope = lean._embed(ids, pos)
        m = Lean._mask(mask.bool())
        for layer, cache in zip(lean.layers, prefill):
            h = lean._block(layer, h, rope, m, cache, 0)
        logits = self.head(lean._final(h[:, -1])).float()                      # [N or distinct, V]
        if owner is None:
            return logits
        for (kc, vc), (kp, vp) in zip(self.cache, prefill):
            kc[:, :, :p] = kp[owner]
            vc[:, :, :p] = vp[owner]
        return logits[owner]

    def keep(self, idx: torch.Tensor) -> None:
        """Go on with the rows ``idx`` only (finished rows leave the batch; their cache is freed)."""
        self.cache = [(k.index_select(0, idx), v.index_select(0, idx)) for k, v in self.cache]
        self.valid, self.pos, self.logits = self.valid[idx], self.pos[idx], self.logits[idx]

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed one token per row ([N]); returns the next logits [N, V]."""
        lean = self.lean
        h, rope = lean._embed(tokens[:, None], self.pos)
        start = self.length
        self.length += 1
        m = self.valid[:, None, None, :self.length]                            # [N, 1, 1, S]
        for layer, cache in zip(lean.layers, self.cache):
            h = lean._block(layer, h, rope, m, cache, start)
        self.pos = self.pos + 1
        self.logits = self.head(lean._final(h[:, -1])).float()
        return self.logits


class StaticDecoder(Decoder):
    """`Decoder` with a step of fixed shapes, for CUDA graphs (rlft/backends/graphs.py).

    The step reads and writes only buffers allocated before the first step: ``tokens`` [N], positions ``pos``
    [N, 1], the key mask ``valid`` [N, S], the write position ``index`` [1] and the cache [N, Hkv, S, D] (S = P + T
    rounded up to 64, zero-filled: a masked key's weight is exactly 0 after the softmax, and 0 x its zero value
    adds nothing). It attends over the whole cache under the mask and advances positions, mask and index on the
    device, so no shape and no Python number changes between steps.

    Finished rows: ``keep`` only remaps which rows are live while the batch stays in its bucket (finished rows are
    computed and ignored: on a GPU a decode step costs about the same for 64 rows as for 128 -- reading the weights
    dominates -- so a smaller batch buys little). When the live rows fit half the bucket, they move to the front
    of the buffers and the step runs over the first ``b`` rows only, b the next power of two (at least 8): one
    more graph to record, at most log2(N / 8) times per rollout, each saving the cache reads and compute of the
    rows left behind."""

    def __init__(self, lean: Lean, ids, mask, pos, max_new_tokens: int, head, *, capture: bool = False):
        self.rows: torch.Tensor | None = None   # the live rows' places in the buffers; None: the first len(tokens)
        super().__init__(lean, ids, mask, pos, max_new_tokens, head)
        self.bucket = ids.shape[0]
        self.tokens = torch.zeros(self.bucket, dtype=torch.long, device=ids.device)
        self.index = torch.tensor([ids.shape[1]], dtype=torch.long, device=ids.device)  # the next cache column
        self.graphs = Graphs(self._step, ids.device, capture)

    def _alloc(self, n: int, size: int, device) -> None:
        # whole 64-key blocks: aligned for the attention kernels, and rollouts whose prompt widths differ by a few
        # tokens get the same shapes (kernel choices and plans made for one serve the next)
        lean, size = self.lean, -(-size // 64) * 64
        kw = {"dtype": self._dtype(), "device": device}
        self.cache = [(torch.zeros(n, lean.kv_heads, size, lean.head_dim, **kw),
                       torch.zeros(n, lean.kv_heads, size, lean.head_dim, **kw)) for _ in lean.layers]
        self.valid = torch.zeros(n, size, dtype=torch.bool, device=device)  # set column by column as written

    def _step(self, b: int) -> torch.Tensor:
        """One step over the buffers' first ``b`` rows: the next logits [b, V]. Fixed shapes for a given ``b``."""
        lean, index = self.lean, self.index
        valid = self.valid[:b]
        valid.index_fill_(1, index, True)
        h, rope = lean._embed(self.tokens[:b, None], self.pos[:b])
        m = valid[:, None, None, :]                                             # [b, 1, 1, S]
        for layer, (kc, vc) in zip(lean.layers, self.cache):
            h = lean._block(layer, h, rope, m, (kc[:b], vc[:b]), index)
        self.pos[:b].add_(1)
        index.add_(1)
        return self.head(lean._final(h[:, -1])).float()

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.rows is None:
            self.tokens[:tokens.shape[0]].copy_(tokens)
        else:
            self.tokens.index_copy_(0, self.rows, tokens)
        out = self.graphs(self.bucket)                                          # [bucket, V]
        self.logits = out[:tokens.shape[0]] if self.rows is None else out.index_select(0, self.rows)
        return self.logits

    def keep(self, idx: torch.Tensor) -> None:
        """Go on with the rows ``idx`` (positions among the live rows); to a smaller bucket when they fit one."""
        rows = idx if self.rows is None else self.rows[idx]
        k = idx.numel()
        b = min(self.bucket, max(8, 1 << max(0, k - 1).bit_length()))
        if b < self.bucket:  # the live rows to the front; the step runs over the first b rows from now on
            for kc, vc in self.cache:
                kc[:k] = kc[rows]
                vc[:k] = vc[rows]
            self.valid[:k], self.pos[:k] = self.valid[rows], self.pos[rows]
            self.bucket, rows = b, None
        self.rows = rows
        self.logits = self.logits[idx]
