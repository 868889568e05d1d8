"""The backend contract, and the backend for a decoder-only transformers model (the common case).

A backend is one object per way of running the model, chosen once at start-up (`rlft.backends.build`); the rest
of rlft never asks "which backend?" again. It samples (`sample`), computes per-token log-probs of given completions
(`logprobs`: for the loss, the old policy and the reference), and owns what differs between ways of running the
model: gathering sharded weights, clipping gradients, the optimizer state of a checkpoint, syncing an inference
engine after an update. The subclasses: `Seq2Seq` (rlft/backends/seq2seq.py), `FSDP` (fsdp.py), `VLLM` (vllm.py).

`Causal` runs transformers' modules; where rlft/backends/lean.py covers the architecture, it runs them through
lean's forward passes (the same arithmetic without transformers' per-call bookkeeping, a KV cache allocated once,
shared prompts in the update), else through transformers' forward.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import replace

import torch

from ..policy import TokenStats, output_head, position_ids, token_logps, unwrap
from ..sampling import Rollout, SamplingParams, decode, from_generated
from ..step import MicroBatch
from . import hf
from .lean import lean


class Causal:
    """A decoder-only transformers model and its tokenizer. ``engine``: rlft (own decode loop) or hf
    (`transformers.generate`)."""

    seq2seq = False
    skip_zero_advantage = True  # the update may leave out samples that add exactly 0 (not under FSDP)

    def __init__(self, model, tokenizer, eos_ids: list[int], *, engine: str = "rlft", device=None,
                 decode: str = "auto"):
        self.model, self.tokenizer, self.eos_ids, self.engine = model, tokenizer, list(eos_ids), engine
        self.decode = decode  # rollout.decode: auto, eager or graph (`decoder`)
        self.device = device if device is not None else next(model.parameters()).device

    def with_model(self, model) -> Causal:
        """The same way of running another model of the same architecture (the frozen reference policy)."""
        other = copy.copy(self)
        other.model = model
        return other

    # ----------------------------------------------------------------------------------------- sampling

    def sample(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, params: SamplingParams, *,
               generator: torch.Generator | None = None, on_done=None) -> Rollout:
        """One completion per row of ``prompt_ids`` ([N, P], left-padded); temperature 0 is greedy. ``on_done``:
        rows reported as they finish (`rlft.sampling.decode`; rlft's own loop only)."""
        self.model.eval()
        if self.engine == "hf":
            return self._generate(prompt_ids, prompt_mask, params)
        lock = self.lockstep()
        # FSDP's hooks keep the gathered weights between passes: they must not be inference tensors
        with torch.no_grad() if lock is not None else torch.inference_mode():
            dec = self.decoder(prompt_ids, prompt_mask, params.max_new_tokens)
            r = decode(dec, self.tokenizer, prompt_ids, prompt_mask, params, self.eos_ids, generator=generator,
                       lockstep=lock, on_done=on_done)
        # inference tensors cannot enter autograd later; the copy is O(N*T), negligible next to sampling
        return replace(r, completion_ids=r.completion_ids.clone(), completion_mask=r.completion_mask.clone(),
                       logp=r.logp.clone())

    def decoder(self, ids: torch.Tensor, mask: torch.Tensor, max_new_tokens: int):
        """A prefilled `rlft.sampling.Decoder`: lean's (own forward, preallocated KV cache) where it covers the
        model, else transformers' forward and cache. ``decode`` (rollout.decode) chooses lean's kind: the
        fixed-shape step recorded as CUDA graphs (graph; auto on a CUDA device), else the eager one."""
        pos = position_ids(mask)
        fast = lean(self.model, ids.shape[1] + max_new_tokens)
        if fast is not None:
            static = self.decode == "graph" or (self.decode == "auto" and ids.is_cuda)
            return fast.decoder(ids, mask, pos, max_new_tokens, output_head(self.model)[1], static=static,
                                capture=static and ids.is_cuda)
        return hf.TransformersDecoder(self.model, ids, mask, pos, max_new_tokens)

    def _generate(self, prompt_ids, prompt_mask, params: SamplingParams) -> Rollout:
        seqs = hf.generate(self.model, self.tokenizer, prompt_ids, prompt_mask, params, self.eos_ids,
                           synced=self.lockstep() is not None)
        return self._from_generated(prompt_ids, prompt_mask, seqs[:, prompt_ids.shape[1]:], params)

    def _from_generated(self, prompt_ids, prompt_mask, tokens, params: SamplingParams) -> Rollout:
        def logp_of(ids, mask):
            mb = MicroBatch(torch.arange(len(ids)), prompt_ids, prompt_mask, None, ids, mask)
            return self.logprobs(mb, temperature=params.temperature).logp

        return from_generated(self.tokenizer, prompt_ids, prompt_mask, tokens, self.eos_ids, params.stop, logp_of)

    def lockstep(self):
        """FSDP with sharded weights: the function the decode loop asks whether any rank still runs; else None."""
        return None

    # ---------------------------------------------------------------------------------------- log-probs

    def logprobs(self, mb: MicroBatch, *, temperature: float = 1.0, with_entropy: bool = False,
                 entropy_grad: bool = True, with_hidden: bool = False, chunk_tokens: int = 4096) -> TokenStats:
        """Per-token log-probs [n, T] of the micro-batch's completions (and entropies, hidden states [n, T, H]).

        One backbone forward over prompt + completion; the head runs only on the T completion positions,
        ``chunk_tokens`` at a time, the log-softmax in float32 per chunk. ``entropy_grad=False``: the entropy is for
        logging only, so no graph is kept for it. Shared prompts (``mb.owner``) run once for all their rows where
        lean covers the model (`Lean.completion_states`); elsewhere each row gets its own."""
        p, (n, t) = mb.prompt_ids.shape[1], mb.completion_ids.shape
        fast = lean(self.model, p + t)
        if fast is None:
            mb = mb.unshared()
        backbone, head = output_head(self.model)
        if mb.owner is not None:
            h = fast.completion_states(mb.prompt_ids, mb.prompt_mask, mb.owner, mb.completion_ids,
                                       mb.completion_mask)                                 # [n, T, H]
        else:
            ids = torch.cat([mb.prompt_ids, mb.completion_ids], 1)                         # [n, P+T]
            mask = torch.cat([mb.prompt_mask, mb.completion_mask.to(mb.prompt_mask.dtype)], 1)
            if fast is not None:
                h = fast.hidden(ids, mask, position_ids(mask))                             # [n, P+T, H]
            else:
                h = backbone(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask),
                             use_cache=False).last_hidden_state                            # [n, P+T, H]
            h = h[:, p - 1:p - 1 + t]                                  # states s_t predicting a_t: [n, T, H]
        flat_h = h.reshape(n * t, -1)
        logp, entropy = token_logps(lambda a, b: head(flat_h[a:b]), mb.completion_ids, temperature=temperature,
                                    with_entropy=with_entropy, entropy_grad=entropy_grad, chunk_tokens=chunk_tokens)
        return TokenStats(logp, entropy, h if with_hidden else None)

    # -------------------------------------------------------------------------------- training support

    def gathered(self):
        """A context in which the full weights are usable for sampling (FSDP gathers them); else nothing."""
        return contextlib.nullcontext()

    def clip_grad_norm(self, params, max_norm: float) -> float:
        """Clip the gradients to a total norm of ``max_norm`` (inf: no clipping); the norm before clipping."""
        return float(torch.nn.utils.clip_grad_norm_(params, max_norm))

    def checkpoint_state(self, opt, value_head=None) -> tuple[dict | None, dict]:
        """(the model's full weights when the model itself holds shards, else None; the optimizer's state)."""
        return None, opt.state_dict()

    def load_optimizer(self, opt, state: dict, value_head=None) -> None:
        opt.load_state_dict(state)

    def before_update(self) -> None:
        """Called after sampling, before the update (an inference engine may free its memory)."""

    def after_update(self) -> None:
        """Called after each update (an inference engine loads the new weights)."""

    def base_model(self):
        """The transformers model inside any wrapper (PEFT)."""
        return unwrap(self.model)


class AdaptersOff:
    """The reference policy of a LoRA run: the same model with its adapters switched off (no second copy)."""

    def __init__(self, backend: Causal):
        self.backend = backend

    def logprobs(self, mb: MicroBatch, **kw) -> TokenStats:
        with self.backend.model.disable_adapter():
            return self.backend.logprobs(mb, **kw)
