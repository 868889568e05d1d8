"""The update: `num_iterations` passes over a step's rollout in `mini_batches` optimizer steps, each accumulated
exactly over micro-batches (sorted by length to cut padding; whole prompt groups together when they share one
forward pass over their prompt). The loss is rlft/loss.py's, normalised by counts over the global mini-batch, so
micro-batch 1 x accumulation 8 == 8 x 1 and 2 processes == 1.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from . import estimators
from .config import Config
from .distributed import Dist
from .loss import Norm, aggregate, kl_penalty, pg_loss, tis_weights
from .policy import ValueHead
from .step import MicroBatch, StepBatch


@dataclass
class Optim:
    """What the update steps: the optimizer over ``params`` (the policy's trainable weights and the value head's),
    its schedule, and the value head (estimator value) or None."""

    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    params: list
    value_head: ValueHead | None = None


def shared_group(cfg: Config) -> int:
    """Rows per shared prompt in the update's forward passes (1: no sharing)."""
    return cfg.rollout.num_generations if cfg.optim.share_prompts else 1


def in_micro_batches(fn, ro, micro: int, group: int = 1) -> torch.Tensor:
    """``fn(mb) -> [n, T]`` over the whole rollout in micro-batches, as one [N, T] tensor (zero past each end)."""
    out = torch.zeros_like(ro.logp)
    n = ro.prompt_ids.shape[0]
    for s in range(0, n, micro):
        mb = MicroBatch.of(ro, list(range(s, min(n, s + micro))), group)
        out[mb.rows, :mb.width] = fn(mb) * mb.completion_mask
    return out


def logprobs_of(policy, ro, cfg: Config) -> torch.Tensor:
    """Per-token log-probs [N, T] of the rollout under ``policy`` (a backend, or the reference), no gradient."""
    t = cfg.rollout.temperature
    with torch.no_grad():
        return in_micro_batches(lambda mb: policy.logprobs(mb, temperature=t).logp, ro, cfg.optim.micro_batch_size,
                                shared_group(cfg))


def values_of(backend, head: ValueHead, ro, cfg: Config) -> torch.Tensor:
    """V(s_t) [N, T] of the rollout's states, no gradient."""
    t = cfg.rollout.temperature
    with torch.no_grad():
        return in_micro_batches(lambda mb: head(backend.logprobs(mb, temperature=t, with_hidden=True).hidden), ro,
                                cfg.optim.micro_batch_size, shared_group(cfg))


def _order(idx: list[int], lengths: list[int], group: int):
    """Sort key for micro-batching: longest completions first to cut padding; with shared prompts, whole
    groups stay together (ordered by their longest member), so a micro-batch holds few distinct prompts."""
    if group == 1:
        return lambda i: -lengths[i]
    longest: dict[int, int] = {}
    for i in idx:
        longest[i // group] = max(longest.get(i // group, 0), lengths[i])
    return lambda i: (-longest[i // group], i // group, -lengths[i])


@dataclass
class _Pass:
    """What every micro-batch of one update needs."""

    backend: object
    optim: Optim
    batch: StepBatch
    cfg: Config
    old_logp: torch.Tensor | None   # [N, T] when the policy moves between optimizer steps
    returns: torch.Tensor | None    # [N, T] discounted returns, for the value head
    tis: bool                       # reweight by the trainer / engine ratio (rollout.engine vllm)
    skip: bool                      # samples with zero advantage are not run


def update(backend, optim: Optim, batch: StepBatch, cfg: Config, ctx: Dist | None = None) -> dict:
    """Run the update on ``batch`` (advantages, loss mask, reference log-probs set); returns its metrics."""
    a, ctx = cfg.algo, ctx or Dist()
    ro, n = batch.rollout, batch.rollout.prompt_ids.shape[0]
    old_logp = None
    if a.num_iterations > 1 or a.mini_batches > 1:  # the policy moves between optimizer steps
        backend.model.eval()
        old_logp = logprobs_of(backend, ro, cfg)
    backend.model.train()
    returns = estimators.discounted_returns(batch.kl_rewards, ro.actions, a.gamma) \
        if optim.value_head is not None else None
    # A sample whose advantage is 0 at every token adds exactly 0 to the gradient when nothing else is in the loss
    # (no KL or entropy term, no value head): it stays in the counts that normalise the loss but is not run.
    skip = backend.skip_zero_advantage and a.entropy_coef == 0 and optim.value_head is None and \
        (batch.ref_logp is None or a.kl_in != "loss" or a.kl_coef == 0)
    run = _Pass(backend, optim, batch, cfg, old_logp, returns, cfg.rollout.engine == "vllm" and
                cfg.rollout.tis_cap > 0, skip)
    signal = ((batch.advantages * batch.loss_mask) != 0).any(-1).tolist() if skip else None
    sums: dict = {}  # statistic -> its sum over micro-batches, on the device (read once, in `_summary`)
    grad_norms = []
    per_mb = n // a.mini_batches
    clock = Clock(backend.device)
    for _ in range(a.num_iterations):
        for m in range(a.mini_batches):
            idx = list(range(m * per_mb, (m + 1) * per_mb))
            grad_norms.append(_optimizer_step(run, idx, signal, sums, ctx, clock))
    return {**_summary(run, sums, grad_norms, ctx), "perf/optimizer_seconds": clock.seconds()}


class Clock:
    """Seconds spent in spans of the update (the optimizer steps) without a host sync of its own: CUDA events on
    a GPU (the kernels' time, read once at the end), the wall clock elsewhere."""

    def __init__(self, device):
        self.cuda = torch.device(device).type == "cuda"
        self.spans: list = []  # (start, end) events, or seconds
        self.t0 = None

    def start(self) -> None:
        if self.cuda:
            self.t0 = torch.cuda.Event(enable_timing=True)
            self.t0.record()
        else:
            self.t0 = time.perf_counter()

    def stop(self) -> None:
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self.spans.append((self.t0, end))
        else:
            self.spans.append(time.perf_counter() - self.t0)

    def seconds(self) -> float:
        if self.cuda:
            torch.cuda.current_stream().synchronize()
            return sum(a.elapsed_time(b) for a, b in self.spans) / 1000
        return float(sum(self.spans))


def _optimizer_step(run: _Pass, idx: list[int], signal, sums: dict, ctx: Dist, clock: Clock) -> float:
    """One optimizer step over the mini-batch ``idx``, accumulated over micro-batches; returns the gradient norm."""
    cfg, b, optim = run.cfg, run.batch, run.optim
    r, o = cfg.rollout, cfg.optim
    # counts over the global mini-batch: each rank's loss is its share of the one-process loss
    norm = Norm(int(ctx.sum(len(idx))), int(ctx.sum(b.loss_mask[idx].sum())), r.max_new_tokens)
    seen = norm
    if run.skip:
        idx = [i for i in idx if signal[i]]
        seen = Norm(int(ctx.sum(len(idx))), int(ctx.sum(b.loss_mask[idx].sum())), r.max_new_tokens)
    g = shared_group(cfg)
    idx.sort(key=_order(idx, b.rollout.lengths.tolist(), g))
    for s in range(0, len(idx), o.micro_batch_size):
        loss, stats = _micro_loss(run, MicroBatch.of(b.rollout, idx[s:s + o.micro_batch_size], g), norm, seen)
        loss.backward()
        for k, v in stats.items():  # float64 on the device: the same sums as adding Python floats, no sync
            sums[k] = sums.get(k, 0.0) + (v.detach().double() if isinstance(v, torch.Tensor) else float(v))
    clock.start()
    if run.skip and (not idx or ctx.on):  # a rank with no signal still takes part: zero gradients, as if run
        for p in optim.params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
    ctx.all_reduce_grads(optim.params)  # sum of the ranks' shares = the global gradient
    norm_before = run.backend.clip_grad_norm(optim.params, o.max_grad_norm if o.max_grad_norm > 0 else float("inf"))
    optim.opt.step()
    optim.sched.step()
    optim.opt.zero_grad(set_to_none=True)
    clock.stop()
    return norm_before


def _micro_loss(run: _Pass, mb: MicroBatch, norm: Norm, seen: Norm):
    """The loss of one micro-batch (its share of the mini-batch loss) and its statistics."""
    a, b, head = run.cfg.algo, run.batch, run.optim.value_head
    ix, t = mb.rows, mb.width
    st = run.backend.logprobs(mb, temperature=run.cfg.rollout.temperature, with_entropy=True,
                              entropy_grad=a.entropy_coef > 0, with_hidden=head is not None)
    lm = b.loss_mask[ix, :t]
    old = st.logp.detach() if run.old_logp is None else run.old_logp[ix, :t]
    w, tis_sums = tis_weights(old, b.rollout.logp[ix, :t], lm, run.cfg.rollout.tis_cap) if run.tis else (None, {})
    loss, stats = pg_loss(st.logp, old, b.advantages[ix, :t], lm, norm, agg=a.agg, eps_low=a.eps_low,
                          eps_high=a.eps_high, ref_logp=None if b.ref_logp is None else b.ref_logp[ix, :t],
                          kl_coef=a.kl_coef if a.kl_in == "loss" else 0.0, kl_estimator=a.kl_estimator,
                          entropy=st.entropy, entropy_coef=a.entropy_coef, weights=w)
    stats.update(tis_sums)
    if head is not None:
        v_loss = aggregate((head(st.hidden) - run.returns[ix, :t]) ** 2, lm, "token_mean", norm)
        loss = loss + a.value_coef * v_loss
        stats["value"] = v_loss.detach()
    if run.skip:  # the logged entropy: over the samples the update ran
        stats["entropy"] = aggregate(st.entropy.detach(), lm, a.agg, seen)
    return loss, stats


def _host(sums: dict) -> dict[str, float]:
    """The accumulated statistics as Python floats, in one device-to-host copy."""
    held = [k for k, v in sums.items() if isinstance(v, torch.Tensor)]
    got = torch.stack([sums[k].reshape(()) for k in held]).tolist() if held else []
    return {**{k: float(v) for k, v in sums.items() if k not in held}, **dict(zip(held, got))}


def _summary(run: _Pass, sums: dict, grad_norms: list[float], ctx: Dist) -> dict:
    """The update's metrics: losses averaged over optimizer steps, summed over ranks."""
    a, ro, ref_logp = run.cfg.algo, run.batch.rollout, run.batch.ref_logp
    k = a.num_iterations * a.mini_batches
    # every rank sums the same keys (a rank that skipped every sample has none), or the all-reduces would pair up
    sums = _host(sums)
    keys = sorted(set().union(*ctx.gather_objects(sorted(sums)))) if ctx.on else sorted(sums)
    sums = {key: ctx.sum(sums.get(key, 0.0)) for key in keys}
    out = {"loss/pg": sums.get("pg", 0.0) / k, "loss/kl": sums.get("kl", 0.0) / k,
           "loss/entropy": sums.get("entropy", 0.0) / k, "clip_frac": sums.get("clip_frac", 0.0) / k,
           "grad_norm": sum(grad_norms) / len(grad_norms)}
    if ref_logp is not None:
        kl_tok = kl_penalty(ro.logp, ref_logp, a.kl_estimator) * ro.actions  # the model's tokens
        out["kl/mean"] = float(kl_tok.sum() / ro.actions.sum().clamp(min=1))
    else:
        out["kl/mean"] = 0.0
    if run.optim.value_head is not None:
        out["loss/value"] = sums.get("value", 0.0) / k
    if run.tis:  # means over the completion tokens the update ran
        n_tis = max(sums.get("tis_tokens", 0.0), 1.0)
        out.update({"tis/weight_mean": sums.get("tis_weight", 0.0) / n_tis,
                    "tis/clipped_frac": sums.get("tis_clipped", 0.0) / n_tis,
                    "tis/logp_abs_diff": sums.get("tis_abs_diff", 0.0) / n_tis})
    return out
