"""The training loop: sample, score, advantages, update -- top to bottom in `train`.

How it departs from the papers, on purpose:
* log-probs (sampling and training) are taken at the sampling temperature, so with one iteration the ratio
  is exactly 1 and the update is REINFORCE on the distribution that produced the samples;
* a reward that does not apply (``None``) counts as 0 in the sum; a sample whose reward failed (with
  ``rewards.on_error: drop``) stays in its group's statistics as 0 but gets no gradient.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from . import checkpoint, distributed, estimators, fsdp
from .config import Config, ConfigError
from .errors import RunError  # noqa: F401 -- raised here, importable from here
from .data import PromptStream, Row, columns_of, load_splits
from .log import NullLogger, RunLogger
from .loss import Norm, aggregate, kl_penalty, pg_loss, tis_weights
from .policy import (ValueHead, completion_logp, encode_prompt, format_prompt, frozen_copy, left_pad,
                     load_policy)
from .rewards import Reward, RewardResult, check_columns, compute, resolve
from .rollout import Rollout, hf_generate, sample


@dataclass
class Batch:
    rows: list[dict]          # [N] the dataset rows, each repeated G times in a row
    rollout: Rollout
    token_rewards: torch.Tensor  # [N, T]
    valid: torch.Tensor       # [N] bool: every reward was usable
    reward_metrics: dict


# ---------------------------------------------------------------------------------------------- set-up

def prepare_out(cfg: Config, resume: bool, overwrite: bool) -> Path:
    out = Path(cfg.train.out)
    if out.exists() and any(out.iterdir()) and not resume:
        if not overwrite:
            raise RunError(f"the output folder {out} already holds a run. Pass --resume to continue it, "
                           f"--overwrite to replace it, or choose another train.out.")
        shutil.rmtree(out)
    if resume and checkpoint.latest(out) is None:
        raise RunError(f"--resume: {out} holds no complete checkpoint to continue from")
    out.mkdir(parents=True, exist_ok=True)
    return out


def build_rewards(cfg: Config, extra: list[Callable] | None) -> list[Reward]:
    comps = []
    for spec in cfg.rewards.components:
        try:
            fn = resolve(spec.fn)
        except ValueError as e:
            raise ConfigError(f"rewards: {e}") from None
        comps.append(Reward(spec.name or getattr(fn, "__name__", spec.fn), fn, spec.weight, dict(spec.args)))
    for fn in extra or []:
        comps.append(Reward(getattr(fn, "__name__", "reward"), fn))
    if not comps:
        raise ConfigError("no rewards: list at least one under `rewards:` (e.g. - fn: bleu) or pass rewards=[...]")
    names = [c.name for c in comps]
    if len(set(names)) != len(names):
        raise ConfigError(f"two rewards share a name ({names}); give each a distinct `name:`")
    return comps


class Prompts:
    """Rows -> formatted, tokenized prompts, with the long-prompt rule applied once at start-up."""

    def __init__(self, cfg: Config, tokenizer):
        self.cfg, self.tok = cfg, tokenizer
        self.counts = {"truncated_prompts": 0, "skipped_prompts": 0}

    def prompt(self, row: Row):
        """The prompt as the rewards see it: the template applied (a string) or the chat messages."""
        d = self.cfg.data
        raw = row.columns[d.prompt_column]
        if isinstance(raw, str):
            try:
                raw = d.template.format(**{**row.columns, "prompt": raw})
            except KeyError as e:
                raise ConfigError(f"data.template {d.template!r} names column {e} that row at line "
                                  f"{row.line} does not have") from None
        return raw

    def encode(self, rows: list[Row], where: str) -> list[dict]:
        """Each row's columns plus ``_row`` (the Row), ``_prompt``, ``_text`` and ``_ids``."""
        d = self.cfg.data
        out = []
        for row in rows:
            prompt = self.prompt(row)
            text = format_prompt(self.tok, prompt, chat_template=self.cfg.model.chat_template, system=d.system)
            ids = encode_prompt(self.tok, text, self.cfg.model.add_bos)
            if len(ids) > d.max_prompt_tokens:
                if d.long_prompts == "error":
                    raise RunError(f"{where}, line {row.line}: the prompt has {len(ids)} tokens, over "
                                   f"data.max_prompt_tokens={d.max_prompt_tokens} (or set data.long_prompts to "
                                   f"truncate or skip)")
                if d.long_prompts == "skip":
                    self.counts["skipped_prompts"] += 1
                    continue
                ids = ids[-d.max_prompt_tokens:]
                self.counts["truncated_prompts"] += 1
            out.append({**row.columns, "_row": row, "_prompt": prompt, "_text": text, "_ids": ids})
        return out


def make_scheduler(opt, warmup: int, total: int, kind: str):
    def factor(s: int) -> float:
        if warmup and s < warmup:
            return (s + 1) / warmup
        if kind == "cosine":
            progress = (s - warmup) / max(1, total - warmup)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


# ------------------------------------------------------------------------------------------ the loop

def train(cfg: Config, rewards: list[Callable] | None = None, *, resume: bool = False,
          overwrite: bool = False) -> Path:
    """Run policy-gradient training as configured; returns the run folder.

    Under torchrun every rank runs this function; rank 0 writes the run folder."""
    ctx = distributed.setup()
    check_world(cfg, ctx)
    if cfg.rollout.engine == "vllm":  # fail before any model is loaded
        from .vllm_engine import check

        check(cfg, ctx.world)
    out = prepare_out(cfg, resume, overwrite) if ctx.is_main else Path(cfg.train.out)
    ctx.barrier()
    torch.manual_seed(cfg.train.seed)
    random.seed(cfg.train.seed)
    reward_fns = build_rewards(cfg, rewards)
    train_rows, eval_rows, data_counts = load_splits(cfg.data, cfg.train.seed,
                                                     needs_reference=cfg.sft.steps > 0)
    available = set(columns_of(train_rows))
    if cfg.data.reference_column in available:
        available.add("reference")
    try:
        check_columns(reward_fns, available)
    except ValueError as e:
        raise ConfigError(f"{e} (dataset {cfg.data.train})") from None
    ckpt = checkpoint.latest(out) if resume else None
    sft_dir = out / "sft-model"
    warm = sft_dir if cfg.sft.steps > 0 and sft_dir.exists() and resume else None
    lora = cfg.model.lora.r > 0
    if lora:  # the base weights never change; checkpoints and the warm start hold adapters
        init_path, adapter = cfg.model.path, str(ckpt or warm) if (ckpt or warm) else None
    else:
        init_path, adapter = str(ckpt or warm or cfg.model.path), None
    model, tok = load_policy(_with_path(cfg, init_path), adapter=adapter)
    disable_dropout(model)  # sampling and training log-probs must come from the same function
    check_positions(model, cfg)
    if ctx.is_main:
        cfg.save(out / "config.yaml")
        logger = RunLogger(out, cfg, resume_step=checkpoint.load_state(ckpt)["step"] if ckpt else None)
    else:
        logger = NullLogger()
    prompts = Prompts(cfg, tok)
    train_rows = prompts.encode(train_rows, cfg.data.train)
    eval_rows = prompts.encode(eval_rows, cfg.data.eval or cfg.data.train)[:cfg.train.eval_max_prompts]
    if not train_rows:
        raise RunError(f"{cfg.data.train}: every prompt was skipped as too long (data.max_prompt_tokens)")
    device = next(model.parameters()).device

    if cfg.sft.steps > 0 and ckpt is None and not sft_dir.exists():  # the warm start
        from .sft import supervised

        supervised(model, tok, train_rows, cfg, logger)  # every rank: same data, same seed, same result
        if ctx.is_main:
            model.save_pretrained(sft_dir)
            tok.save_pretrained(sft_dir)
    ref = None
    if cfg.algo.kl_coef > 0:
        # the reference: with LoRA, the same model with its adapters switched off (no second copy); else a
        # frozen copy of the policy RL starts from (the warm start, else model.path)
        if lora:
            ref = ADAPTERS_OFF
        elif ckpt is None:
            ref = frozen_copy(model)
        else:
            ref = load_policy(_with_path(cfg, str(sft_dir) if sft_dir.exists() else cfg.model.path))[0].eval()
    sharded = fsdp.enabled(cfg)
    if sharded:  # train.parallel=fsdp: the policy and a frozen reference sharded over the ranks (rlft/fsdp.py)
        model = fsdp.shard(model, cfg)
        ref = fsdp.shard(ref.requires_grad_(False), cfg) if isinstance(ref, torch.nn.Module) else ref
        device = fsdp.compute_device(cfg)
    a, r_cfg, o = cfg.algo, cfg.rollout, cfg.optim
    value_head = ValueHead(model.config.hidden_size).to(device) if a.estimator == "value" else None
    params = [p for p in model.parameters() if p.requires_grad] + \
        (list(value_head.parameters()) if value_head else [])
    opt = torch.optim.AdamW(params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
    total_updates = cfg.train.steps * a.num_iterations * a.mini_batches
    sched = make_scheduler(opt, o.warmup_steps, total_updates, o.schedule)
    gen = torch.Generator(device).manual_seed(cfg.train.seed + 1_000_003 * ctx.rank)  # own stream per rank
    stream = PromptStream(train_rows, cfg.train.seed, cfg.data.shuffle)
    est_state: dict = {}
    start = 0
    if ckpt is not None:
        st = checkpoint.load_state(ckpt)
        if sharded:
            fsdp.load_optimizer(model, opt, st["optimizer"], value_head)
        else:
            opt.load_state_dict(st["optimizer"])
        sched.load_state_dict(st["scheduler"])
        stream.load_state(st["data"])
        est_state = st["estimator"]
        ranks = st.get("rng_ranks", [st["rng"]])
        if len(ranks) != ctx.world:
            raise RunError(f"--resume: the checkpoint {ckpt} was written by {len(ranks)} process(es); resume it "
                           f"with the same number (got {ctx.world})")
        checkpoint.set_rng_state(ranks[ctx.rank], gen)
        if value_head is not None:
            checkpoint.load_extra(ckpt, "value_head", value_head)
        start = st["step"]
    logger.start(start, len(train_rows), len(eval_rows), {**data_counts, **prompts.counts})
    engine = None
    if r_cfg.engine == "vllm":  # created after the warm start and resume: it starts from the policy's weights
        from .vllm_engine import VLLMEngine

        engine = VLLMEngine(model, tok, cfg, ctx.world)

    def save(step: int):
        rngs = ctx.gather_objects(checkpoint.rng_state(gen))
        weights, opt_state = fsdp.full_state(model, opt, value_head) if sharded else (None, opt.state_dict())
        if not ctx.is_main:
            return
        state = {"step": step, "optimizer": opt_state, "scheduler": sched.state_dict(),
                 "data": stream.state(), "estimator": est_state, "rng": rngs[0], "rng_ranks": rngs}
        merge = lora and cfg.model.lora.save_merged and step == cfg.train.steps
        path = checkpoint.save(out, step, model, tok, cfg, state, cfg.train.keep_checkpoints,
                               {"value_head": value_head} if value_head else None,
                               before_rename=(lambda tmp: _save_merged(model, tok, tmp / "merged")) if merge else None,
                               state_dict=weights)
        logger.note(f"checkpoint {path}")

    def evaluate(step: int):
        if not eval_rows:
            return
        with fsdp.gathered(model, cfg):  # with FSDP every rank gathers the weights; rank 0 alone evaluates,
            if ctx.is_main or fsdp.sharded_sampling(model, cfg):  # or all in lockstep with sharded weights
                res = evaluate_greedy(model, tok, eval_rows, reward_fns, cfg, device)
                if ctx.is_main:
                    logger.eval(step, res)

    if start == 0:
        evaluate(0)
    for step in range(start + 1, cfg.train.steps + 1):
        t0 = time.perf_counter()
        # 1-3. prompts, rollout, rewards (filter_groups samples again for groups with no signal)
        with fsdp.gathered(model, cfg):  # FSDP: full weights for sampling, no collective inside (rlft/fsdp.py)
            batch, sample_s, filter_stats = collect(model, tok, stream, reward_fns, cfg, gen, step, device, ctx,
                                                    engine)
        if engine is not None:
            engine.sleep()  # with rollout.vllm_sleep: vLLM's GPU memory is free during the update
        ro = batch.rollout
        t1 = time.perf_counter()
        loss_mask = ro.completion_mask * batch.valid[:, None]                          # [N, T]
        if a.mask_truncated:
            loss_mask = loss_mask * torch.tensor([f != "length" for f in ro.finish], device=device)[:, None]
        # 4. reference log-probs, only when the KL is on
        ref_logp = None
        if ref is not None:
            ref_logp = reference_logp(model, ref, ro, o.micro_batch_size, r_cfg.temperature, shared_group(cfg))
        token_rewards = batch.token_rewards
        if ref_logp is not None and a.kl_in == "reward":
            token_rewards = token_rewards - a.kl_coef * (ro.logp - ref_logp) * ro.completion_mask
        # 5. advantages
        values = greedy_rewards = None
        if value_head is not None:
            with torch.no_grad():
                values = _values(model, value_head, ro, o.micro_batch_size, r_cfg.temperature, shared_group(cfg))
        if a.estimator == "remax":
            with fsdp.gathered(model, cfg):
                greedy_rewards = _greedy_baseline(model, tok, batch.rows[::r_cfg.num_generations], reward_fns, cfg,
                                                  step, device)
        # over the global batch: each rank gathers every rank's groups, so batch statistics are global
        all_rewards, mine = ctx.gather_rows(token_rewards)
        gathered = [None if x is None else ctx.gather_rows(x)[0] for x in (values, greedy_rewards)]
        adv = estimators.advantages(a.estimator, estimators.Inputs(
            all_rewards, ctx.gather_rows(ro.completion_mask)[0], r_cfg.num_generations, a.gamma, *gathered,
            est_state), baseline=a.baseline, ema_decay=a.ema_decay, scale=a.scale, group_baseline=a.group_baseline)
        adv = adv[mine, :ro.completion_mask.shape[1]]
        # 6. update
        upd = update(model, value_head, opt, sched, params, ro, adv, loss_mask, ref_logp, token_rewards, cfg, ctx)
        if engine is not None:
            engine.load_weights(model)  # the next rollout samples from the updated policy
        t2 = time.perf_counter()
        # 7. log, evaluate, checkpoint
        seq_all = ctx.gather_rows((batch.token_rewards * ro.completion_mask).sum(-1))[0]
        valid_all = ctx.gather_rows(batch.valid)[0]
        seq_r = seq_all[valid_all] if valid_all.any() else torch.zeros(1)
        zero_adv = (adv.abs() * ro.completion_mask).sum(-1) == 0
        n_tok = int(ro.completion_mask.sum())
        metrics = {
            "reward/mean": float(seq_r.mean()), "reward/std": float(seq_r.std()) if seq_r.numel() > 1 else 0.0,
            **batch.reward_metrics,
            "rollout/len_mean": float(ro.lengths.float().mean()),
            "rollout/truncated_frac": sum(f == "length" for f in ro.finish) / len(ro.finish),
            "rollout/eos_frac": sum(f == "eos" for f in ro.finish) / len(ro.finish),
            "rollout/zero_advantage_frac": float(zero_adv.float().mean()),
            "rollout/samples": len(seq_all), **filter_stats,
            **upd, "lr": sched.get_last_lr()[0],
            "perf/step_seconds": t2 - t0, "perf/sample_seconds": sample_s, "perf/update_seconds": t2 - t1,
            "perf/tokens_per_second": n_tok / max(sample_s, 1e-9),
        }
        logger.step(step, ctx.mean_metrics(metrics), batch)
        if cfg.train.eval_every and step % cfg.train.eval_every == 0 and step != cfg.train.steps:
            evaluate(step)
        if step == cfg.train.steps or (cfg.train.save_every and step % cfg.train.save_every == 0):
            save(step)
    if start < cfg.train.steps:
        evaluate(cfg.train.steps)
    logger.finish()
    ctx.barrier()
    return out


def check_world(cfg: Config, ctx) -> None:
    """Each rank owns whole prompt groups, and its share splits into the mini-batches."""
    if not ctx.on:
        return
    b, w = cfg.rollout.batch_prompts, ctx.world
    if b % w or (b // w) % cfg.algo.mini_batches:
        raise ConfigError(f"rollout.batch_prompts={b} must split evenly over {w} processes and then into "
                          f"algo.mini_batches={cfg.algo.mini_batches} (each rank owns whole prompt groups)")


def disable_dropout(model) -> None:
    """Dropout would make the loss's log-probs differ from the sampling ones (and rho != 1 at the first pass)."""
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0


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


ADAPTERS_OFF = "adapters-off"  # the reference policy is the LoRA model with its adapters disabled


def reference_logp(model, ref, ro: Rollout, micro: int, temperature: float, group: int = 1) -> torch.Tensor:
    with torch.no_grad():
        if ref is ADAPTERS_OFF:
            with model.disable_adapter():
                return _in_micro_batches(model, ro, micro, temperature, group)
        return _in_micro_batches(ref, ro, micro, temperature, group)


def _save_merged(model, tok, path: Path) -> None:
    """LoRA merged into a copy of the weights: a folder plain transformers loads."""
    import copy

    merged = copy.deepcopy(model).merge_and_unload()
    merged.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)


def _with_path(cfg: Config, path: str):
    from dataclasses import replace

    # FSDP: the full weights load into host memory; `fsdp.shard` moves only shards to the device
    return replace(cfg.model, path=path, tokenizer="" if path != cfg.model.path else cfg.model.tokenizer,
                   device="cpu" if fsdp.enabled(cfg) else cfg.model.device)


# -------------------------------------------------------------------------------------- the pieces

def generate(model, tok, rows: list[dict], cfg: Config, gen, device, greedy: bool = False, engine=None,
             on_done=None) -> Rollout:
    """One completion per row (rows already repeated G times for sampling). ``engine``: the run's vLLM engine
    (rollout.engine: vllm); without one (greedy evaluation, ReMax's baseline) rlft's own sampler runs.
    ``on_done``: rlft's sampler reports finished rows to it (`sample`; rewards.overlap)."""
    r = cfg.rollout
    ids, mask = left_pad([row["_ids"] for row in rows], tok.pad_token_id, device)
    kw = {"max_new_tokens": r.max_new_tokens, "temperature": 0.0 if greedy else r.temperature, "top_k": r.top_k,
          "top_p": r.top_p, "stop": r.stop, "generator": gen}
    if engine is not None:
        return engine.generate(ids, mask, **kw)
    lock = fsdp.lockstep(model, cfg)
    if lock is not None:  # FSDP with sharded weights: every rank decodes as many steps
        kw["lockstep"] = lock
    if on_done is not None:
        kw["on_done"] = on_done
    fn = hf_generate if r.engine == "hf" else sample
    model.eval()
    return fn(model, tok, ids, mask, **kw)


def _rewards(rows, ro: Rollout, reward_fns, cfg: Config, step: int) -> RewardResult:
    """Every reward on the completions of ``ro`` (one per row of ``rows``)."""
    cols = columns_of([row["_row"] for row in rows])
    if cfg.data.reference_column in cols and "reference" not in cols:
        cols["reference"] = cols[cfg.data.reference_column]
    lengths = ro.lengths.tolist()
    return compute(reward_fns, [row["_prompt"] for row in rows], ro.completions, lengths, cols, step=step,
                   on_error=cfg.rewards.on_error, group_size=cfg.rollout.num_generations,
                   normalize=cfg.rewards.normalize,
                   completion_ids=[row[:n] for row, n in zip(ro.completion_ids.tolist(), lengths)])


def score(rows, ro: Rollout, reward_fns, cfg: Config, step: int, res: RewardResult | None = None):
    """Dense token rewards [N, T], validity [N] and the result (``res``: already computed, e.g. by `_Overlap`)."""
    if res is None:
        res = _rewards(rows, ro, reward_fns, cfg, step)
    t = ro.completion_ids.shape[1]
    dense = torch.zeros((len(rows), t))
    for i, vals in enumerate(res.token_rewards):
        dense[i, :len(vals)] = torch.tensor(vals[:t])
    if t == 0:
        dense = torch.zeros((len(rows), 0))
    return dense.to(ro.logp.device), torch.tensor([not b for b in res.invalid], device=ro.logp.device), res


class _Overlap:
    """rewards.overlap: rows are scored as the sampler reports them finished, in one background thread, while the
    rest still decode. Rows go in parts (with rewards.normalize=group only whole groups: their statistics need
    all G); `finish` scores what is left once sampling is done and puts the parts together."""

    def __init__(self, rows, reward_fns, cfg: Config, step: int, pad_id: int):
        from concurrent.futures import ThreadPoolExecutor

        self.rows, self.fns, self.cfg, self.step, self.pad_id = rows, reward_fns, cfg, step, pad_id
        self.g = cfg.rollout.num_generations if cfg.rewards.normalize == "group" else 1
        self.ready: dict[int, Rollout] = {}   # finished rows not sent yet: row -> its one-row Rollout
        self.parts: list = []                 # (row indices, future of their RewardResult)
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="rlft-rewards")

    def done(self, idx: list[int], part: Rollout) -> None:  # `sample`'s on_done
        for j, i in enumerate(idx):
            self.ready[i] = part.select([j])
        g = self.g
        send = sorted(i for i in self.ready if all(k in self.ready for k in range(i // g * g, i // g * g + g)))
        if send:
            self._send(send, _concat([self.ready.pop(i) for i in send], self.pad_id))

    def _send(self, idx: list[int], ro: Rollout) -> None:
        self.parts.append((idx, self.pool.submit(_rewards, [self.rows[i] for i in idx], ro, self.fns, self.cfg,
                                                 self.step)))

    def finish(self, ro: Rollout) -> RewardResult:
        """Score the rows not sent yet (from the whole rollout ``ro``), wait for every part, merge them in row
        order. A reward's error surfaces here, as it would have without overlap."""
        sent = {i for idx, _ in self.parts for i in idx}
        rest = [i for i in range(len(self.rows)) if i not in sent]
        if rest:
            self._send(rest, ro.select(rest))
        return RewardResult.merge([(idx, f.result()) for idx, f in self.parts], len(self.rows))

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:  # also when sampling or a reward failed: no thread outlives the rollout
        self.pool.shutdown(wait=True, cancel_futures=True)


def collect(model, tok, stream, reward_fns, cfg: Config, gen, step: int, device, ctx=distributed.Dist(), engine=None):
    """This rank's share of the B prompt groups, sampled and scored. With filter_groups, groups whose rewards
    are all equal are dropped and new prompts sampled, up to max_filter_rounds extra rounds. Every rank draws
    the same prompts from the stream and takes its own slice, so the streams never diverge."""
    r, a = cfg.rollout, cfg.algo
    g = r.num_generations
    kept_rows, kept_ro, kept_rew, kept_valid, metrics_list = [], [], [], [], []
    sample_s, dropped, rounds = 0.0, 0, 0
    need = r.batch_prompts // ctx.world
    while True:
        needs = ctx.gather_objects(need)
        if sum(needs) == 0:
            break
        drawn = stream.next(sum(needs))
        first = sum(needs[:ctx.rank])
        rows = [row for row in drawn[first:first + need] for _ in range(g)]
        if not rows:  # this rank is full; the others sample again
            rounds += 1
            if rounds > a.max_filter_rounds:
                break
            continue
        t0 = time.perf_counter()
        overlap = _Overlap(rows, reward_fns, cfg, step, tok.pad_token_id) if cfg.rewards.overlap else None
        with overlap or contextlib.nullcontext():  # rewards.overlap: finished rows are scored while the rest decode
            ro = generate(model, tok, rows, cfg, gen, device, engine=engine, on_done=overlap and overlap.done)
            sample_s += time.perf_counter() - t0
            rew, valid, res = score(rows, ro, reward_fns, cfg, step, res=overlap.finish(ro) if overlap else None)
        metrics_list.append((len(rows), res.metrics()))
        keep = list(range(len(rows)))
        if a.filter_groups and rounds < a.max_filter_rounds:
            seq = (rew * ro.completion_mask).sum(-1).view(-1, g)
            informative = (seq.max(-1).values - seq.min(-1).values) > 1e-9
            keep = [i for i in range(len(rows)) if informative[i // g]]
            dropped += (len(rows) - len(keep)) // g
        kept_rows += [rows[i] for i in keep]
        kept_ro.append(ro.select(keep))
        kept_rew.append(rew[keep])
        kept_valid.append(valid[keep])
        need -= len(keep) // g
        rounds += 1
        if not a.filter_groups or rounds > a.max_filter_rounds:
            break
    ro = _concat(kept_ro, tok.pad_token_id)
    t = ro.completion_ids.shape[1]
    rew = torch.cat([torch.nn.functional.pad(x, (0, t - x.shape[1])) for x in kept_rew])
    total = sum(n for n, _ in metrics_list)
    merged = {k: sum(n * m[k] for n, m in metrics_list if not math.isnan(m[k])) / total
              for k in metrics_list[0][1] if k != "perf/reward_seconds"}
    merged["perf/reward_seconds"] = sum(m["perf/reward_seconds"] for _, m in metrics_list)
    stats = {"rollout/filtered_groups": dropped, "rollout/filter_rounds": rounds} if a.filter_groups else {}
    if not kept_rows:
        raise RunError(f"step {step}: filter_groups dropped every group (all rewards equal within each group for "
                       f"{rounds} rounds); the reward gives no signal here")
    return Batch(kept_rows, ro, rew, torch.cat(kept_valid), merged), sample_s, stats


def _concat(parts: list[Rollout], pad_id: int) -> Rollout:
    if len(parts) == 1:
        return parts[0]
    p = max(x.prompt_ids.shape[1] for x in parts)
    t = max(x.completion_ids.shape[1] for x in parts)
    F = torch.nn.functional

    def lp(x, w, v):  # left pad to width w
        return F.pad(x, (w - x.shape[1], 0), value=v)

    def rp(x, w, v):
        return F.pad(x, (0, w - x.shape[1]), value=v)

    return Rollout(torch.cat([lp(x.prompt_ids, p, pad_id) for x in parts]),
                   torch.cat([lp(x.prompt_mask, p, 0) for x in parts]),
                   torch.cat([rp(x.completion_ids, t, pad_id) for x in parts]),
                   torch.cat([rp(x.completion_mask, t, 0) for x in parts]),
                   torch.cat([rp(x.logp, t, 0.0) for x in parts]),
                   sum((x.finish for x in parts), []), sum((x.completions for x in parts), []))


def _micro_slices(ro: Rollout, idx: list[int], group: int = 1):
    """Index a micro-batch and trim its padding: prompts from the left, completions from the right.

    ``group > 1``: consecutive groups of that many rows share a prompt, and it comes once per group present,
    with ``owner`` mapping each row to it (`completion_logp` then runs each prompt once); else owner is None."""
    dev = ro.prompt_ids.device
    ix = torch.tensor(idx, device=dev)
    groups = sorted({i // group for i in idx}) if group > 1 else []
    owner = None
    if len(groups) < len(idx) and groups:
        where = {k: j for j, k in enumerate(groups)}
        owner = torch.tensor([where[i // group] for i in idx], device=dev)
        pix = torch.tensor([k * group for k in groups], device=dev)  # the first row of each group
    else:
        pix = ix
    pm, cm = ro.prompt_mask[pix], ro.completion_mask[ix]
    p = int(pm.sum(-1).max())
    t = max(1, int(cm.sum(-1).max()))
    w = ro.prompt_ids.shape[1]
    return ix, ro.prompt_ids[pix, w - p:], pm[:, w - p:], owner, ro.completion_ids[ix, :t], cm[:, :t], t


def _in_micro_batches(model, ro: Rollout, micro: int, temperature: float, group: int = 1) -> torch.Tensor:
    """Per-token log-probs [N, T] of the rollout under ``model`` (no gradient)."""
    out = torch.zeros_like(ro.logp)
    n = ro.prompt_ids.shape[0]
    for s in range(0, n, micro):
        ix, pi, pm, own, ci, cm, t = _micro_slices(ro, list(range(s, min(n, s + micro))), group)
        out[ix, :t] = completion_logp(model, pi, pm, ci, cm, temperature=temperature, owner=own).logp * cm
    return out


def _values(model, head, ro: Rollout, micro: int, temperature: float, group: int = 1) -> torch.Tensor:
    out = torch.zeros_like(ro.logp)
    n = ro.prompt_ids.shape[0]
    for s in range(0, n, micro):
        ix, pi, pm, own, ci, cm, t = _micro_slices(ro, list(range(s, min(n, s + micro))), group)
        h = completion_logp(model, pi, pm, ci, cm, temperature=temperature, with_hidden=True, owner=own).hidden
        out[ix, :t] = head(h) * cm
    return out


def _greedy_baseline(model, tok, rows, reward_fns, cfg: Config, step: int, device) -> torch.Tensor:
    """ReMax: the summed reward of each prompt's greedy completion, [B]."""
    ro = generate(model, tok, rows, cfg, None, device, greedy=True)
    rew, valid, _ = score(rows, ro, reward_fns, cfg, step)
    return (rew * ro.completion_mask).sum(-1) * valid


def shared_group(cfg: Config) -> int:
    """Rows per shared prompt in the update's forward passes (1: no sharing)."""
    return cfg.rollout.num_generations if cfg.optim.share_prompts else 1


def _order(idx: list[int], lengths: list[int], group: int):
    """Sort key for micro-batching: longest completions first to cut padding; with shared prompts, whole
    groups stay together (ordered by their longest member), so a micro-batch holds few distinct prompts."""
    if group == 1:
        return lambda i: -lengths[i]
    longest: dict[int, int] = {}
    for i in idx:
        longest[i // group] = max(longest.get(i // group, 0), lengths[i])
    return lambda i: (-longest[i // group], i // group, -lengths[i])


def update(model, value_head, opt, sched, params, ro: Rollout, adv, loss_mask, ref_logp, token_rewards,
           cfg: Config, ctx=distributed.Dist()) -> dict:
    """`num_iterations` passes over the rollout in `mini_batches` optimizer steps, each accumulated exactly
    over micro-batches (sorted by length to cut padding)."""
    a, o, r = cfg.algo, cfg.optim, cfg.rollout
    n = ro.prompt_ids.shape[0]
    tis = r.engine == "vllm" and r.tis_cap > 0  # ro.logp are vLLM's, not the trainer's: reweight (rlft/loss.py)
    model.train()
    old_logp = None
    if a.num_iterations > 1 or a.mini_batches > 1:  # the policy moves between optimizer steps
        model.eval()
        with torch.no_grad():
            old_logp = _in_micro_batches(model, ro, o.micro_batch_size, r.temperature, shared_group(cfg))
        model.train()
    returns = estimators.discounted_returns(token_rewards, ro.completion_mask, a.gamma) if value_head else None
    sums: dict[str, float] = {}
    grad_norms = []
    per_mb = n // a.mini_batches
    lengths = ro.lengths.tolist()
    g = shared_group(cfg)
    # A sample whose advantage is 0 at every token adds exactly 0 to the gradient when nothing else is in the loss
    # (no KL or entropy term, no value head): it stays in the counts that normalise the loss but is not run.
    # Not under FSDP, where every rank must run as many forward / backward passes.
    skip = a.entropy_coef == 0 and value_head is None and (ref_logp is None or a.kl_in != "loss" or a.kl_coef == 0) \
        and not fsdp.is_fsdp(model)
    signal = ((adv * loss_mask) != 0).any(-1).tolist() if skip else None
    for _ in range(a.num_iterations):
        for m in range(a.mini_batches):
            idx = list(range(m * per_mb, (m + 1) * per_mb))
            # counts over the global mini-batch: each rank's loss is its share of the one-process loss
            norm = Norm(int(ctx.sum(len(idx))), int(ctx.sum(loss_mask[idx].sum())), r.max_new_tokens)
            if skip:
                idx = [i for i in idx if signal[i]]
                seen = Norm(int(ctx.sum(len(idx))), int(ctx.sum(loss_mask[idx].sum())), r.max_new_tokens)
            idx.sort(key=_order(idx, lengths, g))
            for s in range(0, len(idx), o.micro_batch_size):
                ix, pi, pm, own, ci, cm, t = _micro_slices(ro, idx[s:s + o.micro_batch_size], g)
                st = completion_logp(model, pi, pm, ci, cm, temperature=r.temperature, with_entropy=True,
                                     entropy_grad=a.entropy_coef > 0, with_hidden=value_head is not None, owner=own)
                lm = loss_mask[ix, :t]
                old = st.logp.detach() if old_logp is None else old_logp[ix, :t]
                w, tis_sums = tis_weights(old, ro.logp[ix, :t], lm, r.tis_cap) if tis else (None, {})
                loss, stats = pg_loss(st.logp, old, adv[ix, :t], lm, norm, agg=a.agg, eps_low=a.eps_low,
                                      eps_high=a.eps_high, ref_logp=None if ref_logp is None else ref_logp[ix, :t],
                                      kl_coef=a.kl_coef if a.kl_in == "loss" else 0.0, kl_estimator=a.kl_estimator,
                                      entropy=st.entropy, entropy_coef=a.entropy_coef, weights=w)
                stats.update(tis_sums)
                if value_head is not None:
                    v_loss = aggregate((value_head(st.hidden) - returns[ix, :t]) ** 2, lm, "token_mean", norm)
                    loss = loss + a.value_coef * v_loss
                    stats["value"] = v_loss.detach()
                if skip:  # the logged entropy: over the samples the update ran
                    stats["entropy"] = aggregate(st.entropy.detach(), lm, a.agg, seen)
                loss.backward()
                for k, v in stats.items():
                    sums[k] = sums.get(k, 0.0) + float(v)
            if skip and (not idx or ctx.on):  # a rank with no signal still takes part: zero gradients, as if run
                for p in params:
                    if p.grad is None:
                        p.grad = torch.zeros_like(p)
            ctx.all_reduce_grads(params)  # sum of the ranks' shares = the global gradient
            grad_norms.append(fsdp.clip_grad_norm(params, o.max_grad_norm if o.max_grad_norm > 0 else float("inf")))
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
    k = a.num_iterations * a.mini_batches
    # every rank sums the same keys (a rank that skipped every sample has none), or the all-reduces would pair up
    keys = sorted(set().union(*ctx.gather_objects(sorted(sums)))) if ctx.on else sorted(sums)
    sums = {key: ctx.sum(sums.get(key, 0.0)) for key in keys}
    out = {"loss/pg": sums.get("pg", 0.0) / k, "loss/kl": sums.get("kl", 0.0) / k,
           "loss/entropy": sums.get("entropy", 0.0) / k, "clip_frac": sums.get("clip_frac", 0.0) / k,
           "grad_norm": sum(grad_norms) / len(grad_norms)}
    if ref_logp is not None:
        kl_tok = kl_penalty(ro.logp, ref_logp, a.kl_estimator) * ro.completion_mask
        out["kl/mean"] = float(kl_tok.sum() / ro.completion_mask.sum().clamp(min=1))
    else:
        out["kl/mean"] = 0.0
    if value_head is not None:
        out["loss/value"] = sums.get("value", 0.0) / k
    if tis:  # means over the completion tokens the update ran
        n_tis = max(sums.get("tis_tokens", 0.0), 1.0)
        out.update({"tis/weight_mean": sums.get("tis_weight", 0.0) / n_tis,
                    "tis/clipped_frac": sums.get("tis_clipped", 0.0) / n_tis,
                    "tis/logp_abs_diff": sums.get("tis_abs_diff", 0.0) / n_tis})
    return out


def evaluate_greedy(model, tok, rows: list[dict], reward_fns, cfg: Config, device) -> dict:
    """Greedy completions of the eval prompts, scored by every reward: {eval/<name>: mean}."""
    chunk = max(1, cfg.rollout.batch_prompts * cfg.rollout.num_generations)
    totals: dict[str, list] = {}
    samples = []
    for s in range(0, len(rows), chunk):
        part = rows[s:s + chunk]
        ro = generate(model, tok, part, cfg, None, device, greedy=True)
        cols = columns_of([row["_row"] for row in part])
        if cfg.data.reference_column in cols and "reference" not in cols:
            cols["reference"] = cols[cfg.data.reference_column]
        lengths = ro.lengths.tolist()
        res = compute(reward_fns, [row["_prompt"] for row in part], ro.completions, lengths, cols,
                      on_error="drop", group_size=1,
                      completion_ids=[row[:n] for row, n in zip(ro.completion_ids.tolist(), lengths)])
        seq = [sum(v) if not bad else None for v, bad in zip(res.token_rewards, res.invalid)]
        totals.setdefault("eval/reward", []).extend(seq)
        for name, vals in res.components.items():
            totals.setdefault(f"eval/{name}", []).extend(vals)
        totals.setdefault("eval/len_mean", []).extend(float(x) for x in ro.lengths)
        samples += [{"prompt": row["_text"], "completion": c} for row, c in zip(part, ro.completions)]
    out = {k: (sum(x for x in v if x is not None) / max(1, sum(x is not None for x in v))) for k, v in totals.items()}
    out["_samples"] = samples[:8]
    return out


def save_json(path: Path, obj) -> None:
    Path(path).write_text(json.dumps(obj, indent=2) + "\n")
