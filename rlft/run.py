"""Building a run from its config, once: the output folder, the data, the model and its backend, the reference
policy, the optimizer, and -- on ``--resume`` -- everything restored from the last checkpoint. The result is one
`Run` object that the loop in rlft/train.py reads; `Run.save` writes an atomic checkpoint that resumes exactly.
"""

from __future__ import annotations

import contextlib
import math
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from . import backends, checkpoint, distributed
from . import env as envs
from .backends import AdaptersOff, fsdp
from .config import Config, EnvConfig
from .data import PromptStream, columns_of, load_splits
from .errors import ConfigError, RunError
from .log import NullLogger, RunLogger
from .policy import ValueHead, frozen_copy
from .rewards import Reward, check_columns
from .sft import supervised
from .step import Example, build_rewards, make_examples
from .update import Optim


@dataclass
class Run:
    cfg: Config
    ctx: distributed.Dist
    out: Path
    backend: backends.Causal
    reference: object | None          # a backend over the frozen initial policy, AdaptersOff, or None (no KL)
    optim: Optim
    rewards: list[Reward]
    stream: PromptStream              # the training examples, in seeded epochs
    eval_examples: list[Example]
    logger: RunLogger | NullLogger
    generator: torch.Generator        # the sampler's random stream (one per rank)
    start: int = 0                    # the last step done (a resumed run goes on after it)
    est_state: dict = field(default_factory=dict)  # the estimator's running state (the ema baseline)
    env: Callable | None = None       # multi-turn episodes: makes one environment per episode (env.cls, env=)

    def save(self, step: int) -> None:
        """Write ``checkpoint-{step}`` (every rank takes part: RNG streams, FSDP shards; rank 0 writes)."""
        cfg, ctx = self.cfg, self.ctx
        rngs = ctx.gather_objects(checkpoint.rng_state(self.generator))
        weights, opt_state = self.backend.checkpoint_state(self.optim.opt, self.optim.value_head)
        if not ctx.is_main:
            return
        state = {"step": step, "optimizer": opt_state, "scheduler": self.optim.sched.state_dict(),
                 "data": self.stream.state(), "estimator": self.est_state, "rng": rngs[0], "rng_ranks": rngs}
        lora = cfg.model.lora
        merge = lora.r > 0 and lora.save_merged and step == cfg.train.steps
        head = self.optim.value_head
        model, tok = self.backend.model, self.backend.tokenizer
        path = checkpoint.save(self.out, step, model, tok, cfg, state, cfg.train.keep_checkpoints,
                               {"value_head": head} if head else None,
                               before_rename=(lambda tmp: _save_merged(model, tok, tmp / "merged")) if merge else None,
                               state_dict=weights)
        self.logger.note(f"checkpoint {path}")


def build_run(cfg: Config, extra_rewards: list[Callable] | None = None, *, resume: bool = False,
              overwrite: bool = False, env: Callable | None = None) -> Run:
    """Everything a run needs, from the config (under torchrun on every rank; rank 0 owns the run folder).
    ``env``: an environment class or factory given in Python (else ``env.cls``, if set)."""
    factory = env_factory(cfg, env)
    ctx = distributed.setup()
    check_world(cfg, ctx)
    if cfg.rollout.engine == "vllm":  # fail before any model is loaded
        backends.vllm.check(cfg, ctx.world)
    out = Path(cfg.train.out)
    fresh = ctx.is_main and not resume and (overwrite or not (out.exists() and any(out.iterdir())))
    if ctx.is_main:
        prepare_out(cfg, resume, overwrite)
    ctx.barrier()
    with _removed_on_failure(out, fresh):
        return _build(cfg, ctx, out, extra_rewards, resume, factory)


def env_factory(cfg: Config, env: Callable | None):
    """The environment factory (``env=`` or ``env.cls``), or None for single-turn sampling; the env keys and
    rewards.overlap checked against it (the config alone cannot: the environment may come from Python)."""
    e = cfg.env
    if env is not None and e.cls:
        raise ConfigError(f"an environment was given twice: env.cls={e.cls} and train(..., env={envs.name_of(env)}); "
                          f"remove one")
    if env is None and not e.cls:
        idle = [f"env.{k}" for k, v in vars(e).items() if k != "cls" and v != getattr(EnvConfig(), k)]
        if idle:
            raise ConfigError(f"{', '.join(idle)} set, but there is no environment: set env.cls (or pass env= to "
                              f"train) or remove {'them' if len(idle) > 1 else 'it'}")
        return None
    if cfg.rewards.overlap:
        raise ConfigError("rewards.overlap applies only to single-turn sampling: an episode's rewards are scored "
                          "once it has ended; remove it or the environment")
    return envs.resolve(env if env is not None else e.cls)


def _build(cfg: Config, ctx, out: Path, extra_rewards, resume: bool, factory=None) -> Run:
    torch.manual_seed(cfg.train.seed)
    random.seed(cfg.train.seed)
    # with an environment its turn rewards may be all there is
    rewards = [] if factory is not None and not cfg.rewards.components and not extra_rewards else \
        build_rewards(cfg, extra_rewards)
    train_rows, eval_rows, counts = load_splits(cfg.data, cfg.train.seed, needs_reference=cfg.sft.steps > 0)
    _check_reward_columns(cfg, rewards, train_rows, {"conversation"} if factory is not None else set())
    ckpt = checkpoint.latest(out) if resume else None
    model, tok = _load(cfg, out, ckpt)
    if ctx.is_main:
        cfg.save(out / "config.yaml")
        logger = RunLogger(out, cfg, tok, resume_step=checkpoint.load_state(ckpt)["step"] if ckpt else None)
    else:
        logger = NullLogger()
    seq2seq = model.config.is_encoder_decoder
    if factory is not None:
        _check_episode_model(cfg, model, seq2seq)
    train_ex = make_examples(cfg, tok, train_rows, cfg.data.train, counts, encoder=seq2seq)
    eval_ex = make_examples(cfg, tok, eval_rows, cfg.data.eval or cfg.data.train, counts,
                            encoder=seq2seq)[:cfg.train.eval_max_prompts]
    if not train_ex:
        raise RunError(f"{cfg.data.train}: every prompt was skipped as too long (data.max_prompt_tokens)")
    if cfg.rollout.batch_prompts > len(train_ex):
        raise ConfigError(f"rollout.batch_prompts={cfg.rollout.batch_prompts} is more than the {len(train_ex)} "
                          f"training prompts of {cfg.data.train}: every step would hold the same prompt more than "
                          f"once. Lower rollout.batch_prompts to at most {len(train_ex)}, or add prompts.")
    _warm_start(cfg, ctx, out, ckpt, model, tok, train_ex, logger)
    ref_model = _reference_model(cfg, out, ckpt, model)  # before FSDP shards the policy
    backend = backends.build(cfg, model, tok, ctx.world)
    reference = None if ref_model is None else \
        AdaptersOff(backend) if ref_model is AdaptersOff else backend.with_model(ref_model)
    run = Run(cfg, ctx, out, backend, reference, _optimizer(cfg, backend), rewards,
              PromptStream(train_ex, cfg.train.seed, cfg.data.shuffle), eval_ex, logger,
              torch.Generator(backend.device).manual_seed(cfg.train.seed + 1_000_003 * ctx.rank),  # a stream per rank
              env=factory)
    if ckpt is not None:
        _restore(run, ckpt)
    logger.start(run.start, len(train_ex), len(eval_ex), counts)
    n_config = len(cfg.rewards.components)
    logger.note("rewards, summed with their weights: " + ", ".join(
        f"{r.name} x {r.weight:g} ({'config' if i < n_config else 'rewards= argument'})"
        for i, r in enumerate(rewards)) + ("" if rewards or factory is None else "none (the environment's turn "
                                                                              "rewards only)"))
    if factory is not None:
        logger.note(f"environment {envs.name_of(factory)}: one per episode, at most {cfg.env.max_turns} model turns "
                    f"and {cfg.env.max_tokens} tokens each")
    return run


def _check_episode_model(cfg: Config, model, seq2seq: bool) -> None:
    """Episodes need a decoder-only model whose positions hold a first observation and env.max_tokens after it."""
    if seq2seq:
        raise ConfigError(f"env.cls (multi-turn episodes) needs a decoder-only model: {cfg.model.path} is an "
                          f"encoder-decoder, whose prompt cannot grow turn by turn")
    try:
        backends.check_positions(model, replace(cfg, rollout=replace(cfg.rollout, max_new_tokens=cfg.env.max_tokens)))
    except ConfigError:
        raise ConfigError(f"the model's learned positions cannot hold an episode: data.max_prompt_tokens="
                          f"{cfg.data.max_prompt_tokens} (its first observation) + env.max_tokens={cfg.env.max_tokens} "
                          f"(everything after it); lower them") from None


def check_world(cfg: Config, ctx) -> None:
    """Each rank owns whole prompt groups, and its share splits into the mini-batches."""
    if not ctx.on:
        return
    b, w = cfg.rollout.batch_prompts, ctx.world
    if b % w or (b // w) % cfg.algo.mini_batches:
        raise ConfigError(f"rollout.batch_prompts={b} must split evenly over {w} processes and then into "
                          f"algo.mini_batches={cfg.algo.mini_batches} (each rank owns whole prompt groups)")


def prepare_out(cfg: Config, resume: bool, overwrite: bool) -> Path:
    """The run folder: new, replaced (``overwrite``) or continued (``resume``); an error that says which applies."""
    out = Path(cfg.train.out)
    held = out.exists() and any(out.iterdir())
    last = checkpoint.latest(out) if held else None
    if held and not resume and not overwrite:
        how = f"Pass --resume to continue it from its last checkpoint ({last.name})" if last else \
            "It stopped before its first checkpoint, so it cannot be resumed: pass --overwrite to start it again"
        raise RunError(f"the output folder {out} already holds a run. {how}, --overwrite to replace it, or choose "
                       f"another train.out.")
    if held and overwrite and not resume:
        shutil.rmtree(out)
    if resume and last is None:
        raise RunError(f"--resume: {out} holds no complete checkpoint to continue from (the run stopped before its "
                       f"first one, train.save_every); start it again with --overwrite")
    out.mkdir(parents=True, exist_ok=True)
    return out


@contextlib.contextmanager
def _removed_on_failure(out: Path, enabled: bool):
    """A run folder this process created is removed again when the set-up fails (no empty folders left behind);
    a folder that held a run, or that has a step logged, is never touched."""
    try:
        yield
    except BaseException:
        if enabled and out.exists() and not (out / "metrics.jsonl").exists() and checkpoint.latest(out) is None:
            shutil.rmtree(out, ignore_errors=True)
        raise


def _check_reward_columns(cfg: Config, rewards: list[Reward], rows, extra: set) -> None:
    available = set(columns_of(rows)) | extra
    if cfg.data.reference_column in available:
        available.add("reference")
    try:
        check_columns(rewards, available)
    except ValueError as e:
        raise ConfigError(f"{e} (dataset {cfg.data.train})") from None


def _load(cfg: Config, out: Path, ckpt: Path | None):
    """The policy to train: the checkpoint's (resume), else the warm start's (resumed during SFT), else model.path.
    With LoRA the base weights never change: checkpoints and the warm start hold adapters."""
    sft_dir = out / "sft-model"
    warm = sft_dir if cfg.sft.steps > 0 and sft_dir.exists() and ckpt is not None else None
    start = ckpt or warm
    if cfg.model.lora.r > 0:
        path, adapter = cfg.model.path, str(start) if start else None
    else:
        path, adapter = str(start or cfg.model.path), None
    model, tok = backends.load_policy(_with_path(cfg, path), adapter=adapter)
    backends.prepare(model, cfg)
    return model, tok


def _with_path(cfg: Config, path: str):
    # FSDP: the full weights load into host memory; `fsdp.shard` moves only shards to the device
    return replace(cfg.model, path=path, tokenizer="" if path != cfg.model.path else cfg.model.tokenizer,
                   device="cpu" if fsdp.enabled(cfg) else cfg.model.device)


def _warm_start(cfg: Config, ctx, out: Path, ckpt, model, tok, examples: list[Example], logger) -> None:
    """The supervised warm start (sft.steps), once: every rank the same data, seed and result; rank 0 saves it."""
    sft_dir = out / "sft-model"
    if cfg.sft.steps == 0 or ckpt is not None or sft_dir.exists():
        return
    supervised(model, tok, examples, cfg, logger)
    if ctx.is_main:
        model.save_pretrained(sft_dir)
        tok.save_pretrained(sft_dir)


def _reference_model(cfg: Config, out: Path, ckpt, model):
    """The frozen reference policy when the KL is on: with LoRA, the same model with its adapters off (no second
    copy: `AdaptersOff`); else a frozen copy of the policy RL starts from (the warm start, else model.path)."""
    if cfg.algo.kl_coef <= 0:
        return None
    if cfg.model.lora.r > 0:
        return AdaptersOff
    if ckpt is None:
        return frozen_copy(model)
    sft_dir = out / "sft-model"
    ref, _ = backends.load_policy(_with_path(cfg, str(sft_dir) if sft_dir.exists() else cfg.model.path))
    return ref.eval().requires_grad_(False)


def _optimizer(cfg: Config, backend) -> Optim:
    a, o = cfg.algo, cfg.optim
    model = backend.model
    head = ValueHead(model.config.hidden_size).to(backend.device) if a.estimator == "value" else None
    params = [p for p in model.parameters() if p.requires_grad] + (list(head.parameters()) if head else [])
    # on a GPU one fused kernel per step instead of a dozen per parameter group (CPU: the plain loop, bit for bit)
    fused = bool(params) and all(p.is_cuda and not distributed.is_sharded(p) for p in params)
    opt = torch.optim.AdamW(params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay,
                            **({"fused": True} if fused else {}))
    sched = make_scheduler(opt, o.warmup_steps, cfg.train.steps * a.num_iterations * a.mini_batches, o.schedule)
    return Optim(opt, sched, params, head)


def make_scheduler(opt, warmup: int, total: int, kind: str):
    def factor(s: int) -> float:
        if warmup and s < warmup:
            return (s + 1) / warmup
        if kind == "cosine":
            progress = (s - warmup) / max(1, total - warmup)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def _restore(run: Run, ckpt: Path) -> None:
    """Optimizer, schedule, data position, estimator state, RNG streams and value head from ``ckpt``."""
    st = checkpoint.load_state(ckpt)
    run.backend.load_optimizer(run.optim.opt, st["optimizer"], run.optim.value_head)
    run.optim.sched.load_state_dict(st["scheduler"])
    run.stream.load_state(st["data"])
    run.est_state = st["estimator"]
    ranks = st.get("rng_ranks", [st["rng"]])
    if len(ranks) != run.ctx.world:
        raise RunError(f"--resume: the checkpoint {ckpt} was written by {len(ranks)} process(es); resume it "
                       f"with the same number (got {run.ctx.world})")
    checkpoint.set_rng_state(ranks[run.ctx.rank], run.generator)
    if run.optim.value_head is not None:
        checkpoint.load_extra(ckpt, "value_head", run.optim.value_head)
    run.start = st["step"]


def _save_merged(model, tok, path: Path) -> None:
    """LoRA merged into a copy of the weights: a folder plain transformers loads."""
    import copy

    merged = copy.deepcopy(model).merge_and_unload()
    merged.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
