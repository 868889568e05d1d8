"""The training loop: sample, score, reference, advantages, update, log -- top to bottom in `train`.

`build_run` (rlft/run.py) makes everything the loop needs from the config, once; each numbered phase below takes
and returns a typed `StepBatch` (rlft/step.py). docs/architecture.md draws the modules and one step's data flow.

How it departs from the papers, on purpose:
* log-probs (sampling and training) are taken at the sampling temperature, so with one iteration the ratio
  is exactly 1 and the update is REINFORCE on the distribution that produced the samples;
* a reward that does not apply (``None``) counts as 0 in the sum; a sample whose reward failed (with
  ``rewards.on_error: drop``) stays in its group's statistics as 0 but gets no gradient.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

from . import estimators
from .collect import collect, greedy_baseline
from .config import Config
from .errors import RunError  # noqa: F401 -- the loop's errors, importable from here
from .evaluate import evaluate_greedy
from .run import Run, build_run
from .step import StepBatch
from .update import logprobs_of, update, values_of


def train(cfg: Config, rewards: list[Callable] | None = None, *, env: Callable | None = None, resume: bool = False,
          overwrite: bool = False) -> Path:
    """Run policy-gradient training as configured; returns the run folder. ``rewards``: Python callables scored
    in addition to the config's ``rewards`` (their weighted sum is the reward). ``env``: an environment class or
    factory for multi-turn episodes (instead of ``env.cls``; docs/environments.md), one instance per episode.

    Under torchrun every rank runs this function; rank 0 writes the run folder."""
    run = build_run(cfg, rewards, resume=resume, overwrite=overwrite, env=env)
    if run.start == 0:
        evaluate(run, 0)
    for step in range(run.start + 1, cfg.train.steps + 1):
        times = {"start": time.perf_counter()}
        # 1-3. prompts, rollout, rewards (filter_groups samples again for groups with no signal)
        with run.backend.gathered():  # FSDP: full weights for sampling (rlft/backends/fsdp.py)
            batch, sample_s, filter_stats = collect(run.backend, run.stream, run.rewards, cfg, run.generator, step,
                                                    run.ctx, run.env)
        run.backend.before_update()  # with rollout.vllm_sleep: vLLM's GPU memory is free during the update
        times["collected"] = time.perf_counter()
        # 4. the loss mask, reference log-probs (only when the KL is on), the KL in the reward (kl_in: reward)
        batch = with_reference(run, batch)
        times["reference"] = time.perf_counter()
        # 5. advantages, over the global batch
        batch = with_advantages(run, batch, step)
        times["advantages"] = time.perf_counter()
        # 6. update
        upd = update(run.backend, run.optim, batch, cfg, run.ctx)
        run.backend.after_update()  # an inference engine samples from the updated policy next
        times["update"] = time.perf_counter()
        # 7. log, evaluate, checkpoint
        metrics = step_metrics(run, batch, upd, filter_stats, sample_s, times)
        run.logger.step(step, run.ctx.mean_metrics(metrics), batch)
        if cfg.train.eval_every and step % cfg.train.eval_every == 0 and step != cfg.train.steps:
            evaluate(run, step)
        if step == cfg.train.steps or (cfg.train.save_every and step % cfg.train.save_every == 0):
            run.save(step)
    if run.start < cfg.train.steps:
        evaluate(run, cfg.train.steps)
    run.logger.finish()
    run.ctx.barrier()
    return run.out


def with_reference(run: Run, batch: StepBatch) -> StepBatch:
    """The tokens the loss trains (the model's own tokens of valid samples -- never an environment's reply; not
    truncated ones with algo.mask_truncated), the reference log-probs when kl_coef > 0, and the rewards the
    estimator sees (minus kl_coef * k1 with kl_in: reward)."""
    a, ro = run.cfg.algo, batch.rollout
    loss_mask = ro.actions * batch.valid[:, None]                                          # [N, T]
    if a.mask_truncated:
        loss_mask = loss_mask * torch.tensor([f != "length" for f in ro.finish], device=ro.logp.device)[:, None]
    ref_logp = None if run.reference is None else logprobs_of(run.reference, ro, run.cfg)
    kl_rewards = batch.token_rewards
    if ref_logp is not None and a.kl_in == "reward":
        kl_rewards = kl_rewards - a.kl_coef * (ro.logp - ref_logp) * ro.actions
    return replace(batch, loss_mask=loss_mask, ref_logp=ref_logp, kl_rewards=kl_rewards)


def with_advantages(run: Run, batch: StepBatch, step: int) -> StepBatch:
    """Advantages [N, T] from the estimator, over every rank's groups (batch statistics are global)."""
    cfg, ctx, ro = run.cfg, run.ctx, batch.rollout
    a, g = cfg.algo, cfg.rollout.num_generations
    values = greedy_rewards = None
    if run.optim.value_head is not None:
        values = values_of(run.backend, run.optim.value_head, ro, cfg)
    if a.estimator == "remax":
        with run.backend.gathered():
            greedy_rewards = greedy_baseline(run.backend, batch.examples[::g], run.rewards, cfg, step, run.env)
    all_rewards, mine = ctx.gather_rows(batch.kl_rewards)
    gathered = [None if x is None else ctx.gather_rows(x)[0] for x in (values, greedy_rewards)]
    adv = estimators.advantages(a.estimator, estimators.Inputs(
        all_rewards, ctx.gather_rows(ro.actions)[0], g, a.gamma, *gathered, run.est_state),
        baseline=a.baseline, ema_decay=a.ema_decay, scale=a.scale, group_baseline=a.group_baseline)
    return replace(batch, advantages=adv[mine, :ro.completion_mask.shape[1]])


def step_metrics(run: Run, batch: StepBatch, upd: dict, filter_stats: dict, sample_s: float, times: dict) -> dict:
    """One line of metrics.jsonl: rewards, rollout shape, the update's losses, time per phase."""
    ro, ctx = batch.rollout, run.ctx
    seq_all = ctx.gather_rows((batch.token_rewards * ro.completion_mask).sum(-1))[0]
    valid_all = ctx.gather_rows(batch.valid)[0]
    seq_r = seq_all[valid_all] if valid_all.any() else torch.zeros(1)
    zero_adv = (batch.advantages.abs() * ro.completion_mask).sum(-1) == 0
    n_tok = int(ro.actions.sum())  # sampled tokens (an environment's replies are not)
    t = times
    return {
        "reward/mean": float(seq_r.mean()), "reward/std": float(seq_r.std()) if seq_r.numel() > 1 else 0.0,
        **batch.reward_metrics,
        "rollout/len_mean": float(ro.lengths.float().mean()),
        "rollout/truncated_frac": sum(f == "length" for f in ro.finish) / len(ro.finish),
        "rollout/eos_frac": sum(f == "eos" for f in ro.finish) / len(ro.finish),
        "rollout/zero_advantage_frac": float(zero_adv.float().mean()),
        "rollout/samples": len(seq_all), **filter_stats,
        **upd, "lr": run.optim.sched.get_last_lr()[0],
        "perf/step_seconds": t["update"] - t["start"], "perf/sample_seconds": sample_s,
        "perf/reference_seconds": t["reference"] - t["collected"],
        "perf/advantage_seconds": t["advantages"] - t["reference"],
        "perf/update_seconds": t["update"] - t["advantages"],
        "perf/tokens_per_second": n_tok / max(sample_s, 1e-9),
    }


def evaluate(run: Run, step: int) -> None:
    """Greedy evaluation on the eval split: rank 0 alone, or every rank in lockstep when FSDP keeps the weights
    sharded while sampling."""
    if not run.eval_examples:
        return
    with run.backend.gathered():
        if run.ctx.is_main or run.backend.lockstep() is not None:
            res = evaluate_greedy(run.backend, run.eval_examples, run.rewards, run.cfg, run.env)
            if run.ctx.is_main:
                run.logger.eval(step, res)
