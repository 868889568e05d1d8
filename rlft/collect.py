"""Steps 1-3 of a training step: the next prompts, their completions, and the rewards -- this rank's share of the
B prompt groups, as a `StepBatch`. With ``algo.filter_groups`` (DAPO's dynamic sampling) groups whose rewards are
all equal are dropped and new prompts sampled; with ``rewards.overlap`` finished rows are scored in a background
thread while the rest still decode (`Overlap`)."""

from __future__ import annotations

import contextlib
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from .config import Config
from .distributed import Dist
from .episodes import EpisodeStats, run_episodes, score_episodes
from .errors import RunError
from .policy import left_pad
from .rewards import Reward, RewardResult
from .sampling import Rollout, SamplingParams
from .step import Example, StepBatch, rollout_ids, run_rewards, score


def sample_examples(backend, examples: list[Example], cfg: Config, generator=None, *, greedy: bool = False,
                    on_done=None) -> Rollout:
    """One completion per example (examples already repeated G times for sampling)."""
    ids, mask = left_pad([e.ids for e in examples], backend.tokenizer.pad_token_id, backend.device)
    return backend.sample(ids, mask, SamplingParams.of(cfg.rollout, greedy), generator=generator, on_done=on_done)


class Overlap:
    """rewards.overlap: rows are scored as the sampler reports them finished, in one background thread, while the
    rest still decode. Rows go in parts (with rewards.normalize=group only whole groups: their statistics need
    all G); `finish` scores what is left once sampling is done and puts the parts together."""

    def __init__(self, examples: list[Example], rewards: list[Reward], cfg: Config, step: int, pad_id: int):
        self.examples, self.rewards, self.cfg, self.step, self.pad_id = examples, rewards, cfg, step, pad_id
        self.g = cfg.rollout.num_generations if cfg.rewards.normalize == "group" else 1
        self.ready: dict[int, Rollout] = {}   # finished rows not sent yet: row -> its one-row Rollout
        self.parts: list = []                 # (row indices, future of their RewardResult)
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="rlft-rewards")

    def done(self, idx: list[int], part: Rollout) -> None:  # the sampler's on_done
        for j, i in enumerate(idx):
            self.ready[i] = part.select([j])
        g = self.g
        send = sorted(i for i in self.ready if all(k in self.ready for k in range(i // g * g, i // g * g + g)))
        if send:
            self._send(send, Rollout.concat([self.ready.pop(i) for i in send], self.pad_id))

    def _send(self, idx: list[int], ro: Rollout) -> None:
        ex = [self.examples[i] for i in idx]
        self.parts.append((idx, self.pool.submit(run_rewards, self.rewards, ex, ro.completions, rollout_ids(ro),
                                                 self.cfg, step=self.step)))

    def finish(self, ro: Rollout) -> RewardResult:
        """Score the rows not sent yet (from the whole rollout ``ro``), wait for every part, merge them in row
        order. A reward's error surfaces here, as it would have without overlap."""
        sent = {i for idx, _ in self.parts for i in idx}
        rest = [i for i in range(len(self.examples)) if i not in sent]
        if rest:
            self._send(rest, ro.select(rest))
        return RewardResult.merge([(idx, f.result()) for idx, f in self.parts], len(self.examples))

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:  # also when sampling or a reward failed: no thread outlives the rollout
        self.pool.shutdown(wait=True, cancel_futures=True)


@dataclass
class _Kept:
    """What the sampling rounds of one step keep."""

    examples: list
    rollouts: list
    rewards: list
    valid: list
    metrics: list    # (rows scored, their reward metrics) per round
    episodes: EpisodeStats | None = None  # multi-turn episodes (an environment): their counts over the rounds
    sample_seconds: float = 0.0
    dropped: int = 0
    rounds: int = 0


def collect(backend, stream, rewards: list[Reward], cfg: Config, generator, step: int,
            ctx: Dist | None = None, env=None) -> tuple[StepBatch, float, dict]:
    """This rank's share of the B prompt groups, sampled and scored: (batch, sampling seconds, filter and episode
    stats). Every rank draws the same prompts from the stream and takes its own slice, so the streams never
    diverge. ``env``: the environment factory of multi-turn episodes (rlft/episodes.py), else one completion each."""
    r, a, ctx = cfg.rollout, cfg.algo, ctx or Dist()
    g = r.num_generations
    kept = _Kept([], [], [], [], [])
    need = r.batch_prompts // ctx.world
    while True:
        needs = ctx.gather_objects(need)
        if sum(needs) == 0:
            break
        drawn = stream.next(sum(needs))
        first = sum(needs[:ctx.rank])
        examples = [e for e in drawn[first:first + need] for _ in range(g)]
        if examples:
            need -= _round(backend, examples, rewards, cfg, generator, step, kept, env)
        kept.rounds += 1  # a full rank waits while the others sample again
        if not a.filter_groups or kept.rounds > a.max_filter_rounds:
            break
    if not kept.examples:
        raise RunError(f"step {step}: filter_groups dropped every group (all rewards equal within each group for "
                       f"{kept.rounds} rounds); the reward gives no signal here")
    ro = Rollout.concat(kept.rollouts, backend.tokenizer.pad_token_id)
    t = ro.completion_ids.shape[1]
    token_rewards = torch.cat([torch.nn.functional.pad(x, (0, t - x.shape[1])) for x in kept.rewards])
    stats = {"rollout/filtered_groups": kept.dropped, "rollout/filter_rounds": kept.rounds} if a.filter_groups else {}
    if env is not None:  # counts over every rank's episodes (the metrics are then averaged over equal values)
        stats.update((kept.episodes or EpisodeStats()).metrics(ctx.sum))
    batch = StepBatch(kept.examples, ro, token_rewards, torch.cat(kept.valid), _merge_metrics(kept.metrics))
    return batch, kept.sample_seconds, stats


def _round(backend, examples: list[Example], rewards, cfg: Config, generator, step: int, kept: _Kept,
           env=None) -> int:
    """Sample and score ``examples`` once; keep the groups with signal (all of them without filter_groups).
    Returns how many groups were kept."""
    t0 = time.perf_counter()
    if env is not None:  # multi-turn episodes; every episode counts, kept or not
        ep = run_episodes(backend, examples, env, cfg, generator, step)
        kept.sample_seconds += time.perf_counter() - t0 - ep.stats.seconds
        kept.episodes = ep.stats if kept.episodes is None else kept.episodes.add(ep.stats)
        ro, sc = ep.rollout, score_episodes(rewards, examples, ep, cfg, step)
        return _keep(examples, ro, sc, cfg, kept)
    overlap = Overlap(examples, rewards, cfg, step, backend.tokenizer.pad_token_id) if cfg.rewards.overlap else None
    with overlap or contextlib.nullcontext():  # rewards.overlap: finished rows are scored while the rest decode
        ro = sample_examples(backend, examples, cfg, generator, on_done=overlap and overlap.done)
        kept.sample_seconds += time.perf_counter() - t0
        sc = score(rewards, examples, ro, cfg, step, result=overlap.finish(ro) if overlap else None)
    return _keep(examples, ro, sc, cfg, kept)


def _keep(examples: list[Example], ro: Rollout, sc, cfg: Config, kept: _Kept) -> int:
    """Keep a round's groups with signal (all of them without filter_groups); how many were kept."""
    a, g = cfg.algo, cfg.rollout.num_generations
    kept.metrics.append((len(examples), sc.result.metrics()))
    keep = list(range(len(examples)))
    if a.filter_groups and kept.rounds < a.max_filter_rounds:
        seq = (sc.token_rewards * ro.completion_mask).sum(-1).view(-1, g)
        informative = (seq.max(-1).values - seq.min(-1).values) > 1e-9
        keep = [i for i in range(len(examples)) if informative[i // g]]
        kept.dropped += (len(examples) - len(keep)) // g
    kept.examples += [examples[i] for i in keep]
    kept.rollouts.append(ro.select(keep))
    kept.rewards.append(sc.token_rewards[keep])
    kept.valid.append(sc.valid[keep])
    return len(keep) // g


def _merge_metrics(parts: list[tuple[int, dict]]) -> dict:
    """The rounds' reward metrics, weighted by rows scored; a round where a reward applied to no sample (NaN) is
    left out, and a reward that applied in no round stays NaN (logged as null, not as a measured 0). Reward seconds
    are summed."""
    merged = {}
    for k in parts[0][1]:
        if k == "perf/reward_seconds":
            continue
        seen = [(n, m[k]) for n, m in parts if not math.isnan(m[k])]
        merged[k] = sum(n * v for n, v in seen) / sum(n for n, _ in seen) if seen else float("nan")
    merged["perf/reward_seconds"] = sum(m["perf/reward_seconds"] for _, m in parts)
    return merged


def greedy_baseline(backend, examples: list[Example], rewards, cfg: Config, step: int, env=None) -> torch.Tensor:
    """ReMax: the summed reward of each prompt's greedy completion (greedy episode with ``env``), [B]."""
    if env is not None:
        ep = run_episodes(backend, examples, env, cfg, None, step, greedy=True)
        ro, sc = ep.rollout, score_episodes(rewards, examples, ep, cfg, step)
    else:
        ro = sample_examples(backend, examples, cfg, greedy=True)
        sc = score(rewards, examples, ro, cfg, step)
    return (sc.token_rewards * ro.completion_mask).sum(-1) * sc.valid
