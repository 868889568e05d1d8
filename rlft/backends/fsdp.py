"""Training state that does not fit one device: FSDP2 (`fully_shard`) under torchrun, ``train.parallel: fsdp``.

Every decoder layer, then the whole model, is sharded over the ranks: each rank keeps 1/world of every
parameter, gradient and optimizer state, and a layer's full weights exist only while it runs. The rest of
rlft's data parallelism stays as in rlft/distributed.py (whole prompt groups per rank, global advantages,
losses normalised by global counts), so FSDP must SUM the ranks' gradients, not average them: the divide
factor is 1 and the reduction a plain sum (which gloo supports too).

Three rules keep the ranks in lockstep (every FSDP collective must run on all ranks, in the same order):
* the loss and the reference / old log-probs go through the root module's forward (`FSDP.logprobs`),
  so FSDP's hooks gather and free the weights; calling submodules directly (rlft/backends/lean.py, the backbone
  alone) would see sharded weights, and `lean()` returns None while they are sharded;
* sampling runs inside `gathered(model)`: every rank all-gathers every layer once, samples with the full
  weights and no collective at all (rows may finish at different steps on different ranks; transformers'
  generate is told not to sync), then frees them -- so the full weights must fit one device while it samples;
  with ``train.fsdp_sampling: sharded`` they stay sharded instead, every decoding step gathers one layer at a
  time, and the ranks decode in `lockstep` (the same number of steps on every rank);
* every rank runs the same number of forward and backward passes (the update must not skip micro-batches).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from ..distributed import is_fsdp, is_sharded
from ..errors import ConfigError
from ..policy import TokenStats, pick_device, position_ids, token_logps
from ..step import MicroBatch
from .base import Causal


def enabled(cfg) -> bool:
    """``train.parallel: fsdp`` in a process group of more than one rank (else rlft's replicated data parallelism)."""
    d = torch.distributed
    return cfg.train.parallel == "fsdp" and d.is_available() and d.is_initialized() and d.get_world_size() > 1


def compute_device(cfg) -> torch.device:
    """Where the sharded model computes (``model.device``); with ``fsdp_offload`` its shards live on the CPU."""
    return pick_device(cfg.model.device)


def shard(model, cfg):
    """`fully_shard` each decoder layer, then the root, in place; returns the model.

    The layers are the classes transformers names in ``_no_split_modules`` (what a layer-wise split must keep
    whole). A frozen model (the KL reference) reshards its root after each forward too, since no backward
    follows to free it."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule, fully_shard

    device = compute_device(cfg)
    if model.config.is_encoder_decoder:
        raise ConfigError("train.parallel=fsdp supports decoder-only models; use train.parallel=ddp for seq2seq")
    mesh = init_device_mesh(device.type, (torch.distributed.get_world_size(),))
    kw = {"mesh": mesh}
    if cfg.train.fsdp_offload:  # shards, gradients and optimizer state stay in host memory between uses
        kw["offload_policy"] = CPUOffloadPolicy(pin_memory=device.type == "cuda")
    names = set(getattr(model, "_no_split_modules", None) or ())
    for m in model.modules():
        if type(m).__name__ in names:
            fully_shard(m, reshard_after_forward=True, **kw)
    frozen = not any(p.requires_grad for p in model.parameters())
    fully_shard(model, reshard_after_forward=frozen, **kw)
    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.set_gradient_divide_factor(1.0)           # each rank's loss is its share of the global loss: sum
            m.set_force_sum_reduction_for_comms(True)   # a plain SUM (no PREMUL_SUM, which gloo lacks)
    return model


@contextmanager
def gathered(model, cfg=None):
    """Full weights on every rank for the duration (one all-gather per layer, on every rank, in the same order);
    inside, forward passes run no collective, so ranks may run different numbers of them. A no-op unless the
    model is FSDP-sharded, and with ``train.fsdp_sampling: sharded`` (then the sampler runs in `lockstep`).
    Costs one full copy of the weights per rank while it lasts."""
    if not is_fsdp(model) or sharded_sampling(model, cfg):
        yield
        return
    from torch.distributed.fsdp import FSDPModule

    mods = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for m in mods:
        m.unshard()
    model.set_reshard_after_forward(False)  # the root forward (transformers' decoding) keeps them gathered
    try:
        yield
    finally:
        model.set_reshard_after_forward(True)
        model.set_reshard_after_forward(False, recurse=False)  # as `shard` left the policy's root
        for m in mods:
            m.reshard()  # local: frees the gathered weights


def sharded_sampling(model, cfg) -> bool:
    """``train.fsdp_sampling: sharded`` on a sharded model: sampling runs with the weights sharded."""
    return cfg is not None and cfg.train.fsdp_sampling == "sharded" and is_fsdp(model)


def lockstep(model, cfg):
    """With sharded sampling, every decoding step's forward all-gathers the layers on every rank, so all ranks must
    run the same number of steps: the sampler asks this function, at each of its host syncs, whether any rank still
    has a running row (one all-reduce). None otherwise (each rank stops when its own rows are done)."""
    if not sharded_sampling(model, cfg):
        return None
    device = compute_device(cfg)

    def any_live(live: bool) -> bool:
        flag = torch.tensor([1.0 if live else 0.0], device=device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())

    return any_live


def clip_grad_norm(params, max_norm: float) -> float:
    """Clip the gradients to a total norm of ``max_norm`` (inf: no clipping); returns the norm before clipping.

    Without sharded gradients this is `torch.nn.utils.clip_grad_norm_`. FSDP's are DTensors, and a replicated
    value head's are plain tensors, which torch's function cannot mix: the norm of each kind is taken apart
    (the sharded one summed over ranks) and combined."""
    grads = [p.grad for p in params if p.grad is not None]
    sharded = [g for g in grads if is_sharded(g)]
    if not sharded:
        return float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    plain = [g for g in grads if not is_sharded(g)]
    sq = float(torch.nn.utils.get_total_norm(sharded).full_tensor()) ** 2
    if plain:
        sq += float(torch.nn.utils.get_total_norm(plain)) ** 2
    total = sq ** 0.5
    coef = max_norm / (total + 1e-6)
    if coef < 1.0:  # as torch: scale by min(1, max_norm / (norm + 1e-6))
        for g in grads:
            g.mul_(coef)
    return total


def _owner(model, extra: torch.nn.Module | None):
    """The module whose parameters the optimizer holds (the policy, with a value head beside it when there is one)."""
    return model if extra is None else torch.nn.ModuleDict({"policy": model, "value_head": extra})


def full_state(model, opt, extra: torch.nn.Module | None = None) -> tuple[dict, dict]:
    """The full model and optimizer state dicts, on rank 0's CPU (other ranks get empty dicts). Every rank must
    call it (the shards are gathered). The optimizer's is keyed by parameter name, so it does not depend on the
    sharding."""
    from torch.distributed.checkpoint import state_dict as dcp

    options = dcp.StateDictOptions(full_state_dict=True, cpu_offload=True)
    return (dcp.get_model_state_dict(model, options=options),
            dcp.get_optimizer_state_dict(_owner(model, extra), opt, options=options))


def load_optimizer(model, opt, state: dict, extra: torch.nn.Module | None = None) -> None:
    """Load a full optimizer state dict (`full_state`'s) into the sharded optimizer: each rank keeps its shard."""
    from torch.distributed.checkpoint import state_dict as dcp

    dcp.set_optimizer_state_dict(_owner(model, extra), opt, state, options=dcp.StateDictOptions(full_state_dict=True))


class FSDP(Causal):
    """A decoder-only model sharded with FSDP2 over the ranks (``train.parallel: fsdp``)."""

    skip_zero_advantage = False  # every rank must run as many forward / backward passes

    def __init__(self, model, tokenizer, eos_ids, cfg, *, engine: str = "rlft"):
        super().__init__(model, tokenizer, eos_ids, engine=engine, device=compute_device(cfg),
                         decode=cfg.rollout.decode)
        self.cfg = cfg

    def with_model(self, model) -> FSDP:
        """The frozen reference, sharded like the policy."""
        return super().with_model(shard(model.requires_grad_(False), self.cfg))

    def lockstep(self):
        return lockstep(self.model, self.cfg)

    def gathered(self):
        return gathered(self.model, self.cfg)

    def logprobs(self, mb: MicroBatch, *, temperature: float = 1.0, with_entropy: bool = False,
                 entropy_grad: bool = True, with_hidden: bool = False, chunk_tokens: int = 4096) -> TokenStats:
        """The root forward (so FSDP's hooks gather the weights), with the logits of the T positions that predict
        the completion (``logits_to_keep=T+1`` keeps positions P-1 .. P+T-1; the last predicts past the end). Those
        [n, T, V] logits exist in the model's dtype; the log-softmax is float32 per chunk as elsewhere."""
        mb = mb.unshared()
        p, (n, t) = mb.prompt_ids.shape[1], mb.completion_ids.shape
        ids = torch.cat([mb.prompt_ids, mb.completion_ids], 1)                      # [n, P+T]
        mask = torch.cat([mb.prompt_mask, mb.completion_mask.to(mb.prompt_mask.dtype)], 1)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask), use_cache=False,
                         logits_to_keep=t + 1, output_hidden_states=with_hidden)
        flat = out.logits[:, :t].reshape(n * t, -1)                                 # [n*T, V]
        logp, entropy = token_logps(lambda a, b: flat[a:b], mb.completion_ids, temperature=temperature,
                                    with_entropy=with_entropy, entropy_grad=entropy_grad, chunk_tokens=chunk_tokens)
        hidden = out.hidden_states[-1][:, p - 1:p - 1 + t] if with_hidden else None  # after the final norm
        return TokenStats(logp, entropy, hidden)

    def clip_grad_norm(self, params, max_norm: float) -> float:
        return clip_grad_norm(params, max_norm)

    def checkpoint_state(self, opt, value_head=None):
        return full_state(self.model, opt, value_head)

    def load_optimizer(self, opt, state: dict, value_head=None) -> None:
        load_optimizer(self.model, opt, state, value_head)
