"""Evaluation: the greedy evaluation a training run makes every ``train.eval_every`` steps (`evaluate_greedy`),
and `rlft eval CHECKPOINT [CHECKPOINT ...] --data FILE [--task T] [--samples k] [--out DIR]`. Both score with
`rlft.step.score` / `run_rewards`, the same function training uses.

Each checkpoint generates greedily over the eval set (and, with ``--samples k``, k sampled completions per
prompt); the task's metrics (``rlft.tasks``) are computed on the outputs; one table compares the checkpoints,
the first being the baseline (the others show the change, ``0.412 (+0.051)``). The table is printed and written
as ``eval.json`` and ``eval.md`` in ``--out`` (default: ``eval/`` beside the last checkpoint), with each
checkpoint's outputs in ``outputs-<i>.jsonl``.

A checkpoint is read with the config saved beside it (``checkpoint-N/config.yaml``, else the run folder's
``config.yaml``): its prompt template, chat template, columns, sampling settings and rewards, so prompts look as
they did in training. A model without a config (a base model folder or a hub id) is read with the first saved
config among the checkpoints (the same prompts), or, when none has one, with the preset of ``--task``.
LoRA checkpoints (adapters only) load on top of the base model named in their config.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from . import backends, tasks
from .collect import sample_examples
from .config import Config
from .data import check_rows, read_rows
from .env import resolve as resolve_env
from .episodes import EVAL_STEP, run_episodes, score_episodes
from .errors import ConfigError, DataError
from .rewards import Reward
from .step import Example, build_rewards, make_examples, rollout_ids, run_rewards


def evaluate_greedy(backend, examples: list[Example], rewards: list[Reward], cfg: Config, env=None) -> dict:
    """Greedy completions of the eval prompts, scored by every reward: {eval/reward/mean: the total,
    eval/<name>: each reward's mean over the samples it applies to (NaN when none), eval/len_mean}, and up to 8
    samples under ``_samples``. With ``env`` (an environment factory): greedy episodes, the same environments
    (seeds) at every evaluation; the total adds their turn rewards."""
    if env is not None:
        return _greedy_episodes(backend, examples, rewards, cfg, env)
    chunk = max(1, cfg.rollout.batch_prompts * cfg.rollout.num_generations)
    totals: dict[str, list] = {"eval/reward/mean": [], **{f"eval/{r.name}": [] for r in rewards}, "eval/len_mean": []}
    samples = []
    for s in range(0, len(examples), chunk):
        part = examples[s:s + chunk]
        ro = sample_examples(backend, part, cfg, greedy=True)
        res = run_rewards(rewards, part, ro.completions, rollout_ids(ro), cfg, on_error="drop", group_size=1,
                          normalize="none")
        totals["eval/reward/mean"] += [sum(v) if not bad else None for v, bad in zip(res.token_rewards, res.invalid)]
        for name, vals in res.components.items():
            totals[f"eval/{name}"] += vals
        totals["eval/len_mean"] += [float(x) for x in ro.lengths]
        samples += [{"prompt": e.text, "completion": c} for e, c in zip(part, ro.completions)]
    out = {k: _mean(v) for k, v in totals.items()}
    out["_samples"] = samples[:8]
    return out


def _greedy_episodes(backend, examples: list[Example], rewards: list[Reward], cfg: Config, env, keep: int = 8) -> dict:
    """`evaluate_greedy` over multi-turn episodes: also eval/turns_mean; the first ``keep`` samples (under
    ``_samples``) hold the conversations."""
    chunk = max(1, cfg.rollout.batch_prompts * cfg.rollout.num_generations)
    totals: dict[str, list] = {"eval/reward/mean": [], **{f"eval/{r.name}": [] for r in rewards}, "eval/len_mean": [],
                               "eval/turns_mean": []}
    samples = []
    drop = replace(cfg, rewards=replace(cfg.rewards, on_error="drop"))  # a failing episode is left out, counted
    for s in range(0, len(examples), chunk):
        part = examples[s:s + chunk]
        ep = run_episodes(backend, part, env, drop, None, EVAL_STEP, greedy=True,
                          source=cfg.data.eval or cfg.data.train)
        sc = score_episodes(rewards, part, ep, drop, EVAL_STEP, on_error="drop", group_size=1, normalize="none")
        ro = ep.rollout
        total = (sc.token_rewards * ro.completion_mask).sum(-1).tolist()
        totals["eval/reward/mean"] += [t if ok else None for t, ok in zip(total, sc.valid.tolist())]
        for name, vals in sc.result.components.items():
            totals[f"eval/{name}"] += vals
        totals["eval/len_mean"] += [float(x) for x in ro.actions.sum(-1)]
        totals["eval/turns_mean"] += [float(sum(m["role"] == "assistant" for m in t)) for t in ro.turns]
        samples += [{"prompt": e.text, "completion": c, "turns": t} for e, c, t in zip(part, ro.completions, ro.turns)]
    out = {k: _mean(v) for k, v in totals.items()}
    out["_samples"] = samples[:keep]
    return out


def _mean(vals: list) -> float:
    """The mean of the values that exist; NaN (written as null) when none does -- not a measured 0."""
    vals = [x for x in vals if x is not None]
    return sum(vals) / len(vals) if vals else float("nan")


def saved_config(ckpt: Path) -> Path | None:
    """The config saved with a checkpoint: its own, else its run folder's (e.g. for ``sft-model``)."""
    for p in (ckpt / "config.yaml", ckpt.parent / "config.yaml"):
        if p.is_file():
            return p
    return None


def checkpoint_config(ckpt: str | Path, task: str = "", fallback: Path | None = None) -> tuple[Config, str | None]:
    """(the config to evaluate ``ckpt`` with, the LoRA adapter folder or None). A model without a saved config
    (a base model folder or hub id) takes ``fallback`` (another checkpoint's config: same prompts), else the
    preset of ``task``."""
    name = str(ckpt)
    ckpt = Path(ckpt)
    if not ckpt.exists() and (name.startswith((".", "/", "~")) or name.count("/") != 1):
        raise ConfigError(f"checkpoint {ckpt} does not exist (hub ids look like 'org/name')")
    path = saved_config(ckpt) if ckpt.exists() else None
    path = path or fallback
    if path is not None:
        cfg = Config.load(path)
    elif task:
        cfg = Config.from_dict({"task": task})
    else:
        raise ConfigError(f"{ckpt} has no config.yaml (nor has its parent folder): give --task")
    if (ckpt / "adapter_config.json").exists():  # LoRA: the base model of the run + these adapters
        return cfg, str(ckpt)
    model = replace(cfg.model, path=name, tokenizer="", lora=replace(cfg.model.lora, r=0))
    return replace(cfg, model=model), None


def evaluate_checkpoint(ckpt: str | Path, data: str | Path, task: str = "", samples: int = 0, *, seed: int = 0,
                        batch_size: int = 32, limit: int = 0, temperature: float | None = None,
                        fallback: Path | None = None) -> dict:
    """Generate over ``data`` with ``ckpt`` and compute the task's metrics (without a task: the run's rewards).
    Returns {"task", "metrics": {name: value}, "outputs": [{prompt, reference, greedy, samples}], "counts"}."""
    cfg, adapter = checkpoint_config(ckpt, task, fallback)
    name = task or cfg.task
    spec = tasks.get(name) if name else None
    reward_fns = build_rewards(cfg) if cfg.rewards.components else []
    if cfg.env.cls and not task:  # a run with an environment: greedy episodes, measured as in training
        return _evaluate_episodes(cfg, adapter, data, limit, reward_fns)
    if spec is None and not reward_fns:
        raise ConfigError(f"{ckpt}: its config names no task and no rewards, so there is nothing to measure; give "
                          f"--task (one of {', '.join(tasks.registry())}) or evaluate a run whose config lists rewards")
    # every row is evaluated: too-long prompts are truncated (counted), never skipped
    d = replace(cfg.data, long_prompts="truncate" if cfg.data.long_prompts == "skip" else cfg.data.long_prompts)
    cfg = replace(cfg, data=d)
    counts: dict = {}
    rows = check_rows(read_rows(data, d.bad_rows, counts), data, d, counts, bool(spec and spec.needs_reference))
    rows = rows[:limit] if limit else rows
    if not rows:
        raise DataError(f"{data}: no usable rows")
    model, tok = backends.load_policy(cfg.model, adapter=adapter)
    # rlft's own sampler here, whatever engine the run trained with (one process, no vLLM engine to start)
    backend = backends.build(replace(cfg, rollout=replace(cfg.rollout, engine="rlft")), model, tok)
    examples = make_examples(cfg, tok, rows, str(data), counts, encoder=backend.seq2seq)
    greedy, sampled = _generate(backend, examples, cfg, samples, seed, batch_size, temperature)

    def score(completions: list[str], m: int) -> dict:
        """The config's rewards on ``completions`` (each row's m completions in a row): means."""
        return _reward_means(reward_fns, [e for e in examples for _ in range(m)], completions, tok, cfg, m)

    refs = [e.row.columns.get(d.reference_column) for e in examples]
    out = tasks.Outputs(rows=[e.row.columns for e in examples], prompts=[e.prompt for e in examples],
                        references=refs, greedy=greedy, sampled=sampled, score=score)
    metrics = spec.metrics(out) if spec is not None else score(greedy, 1)
    outputs = [{"prompt": e.text, "reference": ref, "greedy": g, **({"samples": sampled[i]} if sampled else {})}
               for i, (e, ref, g) in enumerate(zip(examples, refs, greedy))]
    return {"task": spec.name if spec else "(the run's rewards)", "metrics": metrics, "outputs": outputs,
            "counts": counts}


def _evaluate_episodes(cfg: Config, adapter, data, limit: int, reward_fns: list[Reward]) -> dict:
    """`evaluate_checkpoint` for a run trained with an environment (env.cls): greedy episodes over ``data``, the
    environment's turn rewards plus the run's rewards (`evaluate_greedy`); outputs hold the conversations."""
    counts: dict = {}
    rows = check_rows(read_rows(data, cfg.data.bad_rows, counts), data, cfg.data, counts, False)
    rows = rows[:limit] if limit else rows
    if not rows:
        raise DataError(f"{data}: no usable rows")
    model, tok = backends.load_policy(cfg.model, adapter=adapter)
    backend = backends.build(replace(cfg, rollout=replace(cfg.rollout, engine="rlft")), model, tok)
    examples = make_examples(cfg, tok, rows, str(data), counts)
    res = _greedy_episodes(backend, examples, reward_fns, replace(cfg, data=replace(cfg.data, eval=str(data))),
                           resolve_env(cfg.env.cls), keep=len(examples))
    every = res.pop("_samples")
    outputs = [{"prompt": e.text, "reference": e.row.columns.get(cfg.data.reference_column), "greedy": x["completion"],
                "turns": x["turns"]} for e, x in zip(examples, every)]
    return {"task": f"(the run's environment {cfg.env.cls})", "counts": counts, "outputs": outputs,
            "metrics": {k.removeprefix("eval/"): v for k, v in res.items() if not k.startswith("_")}}


def _generate(backend, examples, cfg: Config, samples: int, seed: int, batch_size: int, temperature):
    """Greedy completions [N] and, with ``samples`` k, k sampled ones per example [N][k]."""
    import torch

    greedy: list[str] = []
    for s in range(0, len(examples), batch_size):
        greedy += sample_examples(backend, examples[s:s + batch_size], cfg, greedy=True).completions
    if not samples:
        return greedy, None
    temp = temperature if temperature is not None else (cfg.rollout.temperature or 1.0)
    scfg = replace(cfg, rollout=replace(cfg.rollout, temperature=temp))
    gen = torch.Generator(backend.device).manual_seed(seed)
    flat: list[str] = []
    per = max(1, batch_size // samples)
    for s in range(0, len(examples), per):
        rep = [e for e in examples[s:s + per] for _ in range(samples)]
        flat += sample_examples(backend, rep, scfg, gen).completions
    return greedy, [flat[i * samples:(i + 1) * samples] for i in range(len(examples))]


def _reward_means(reward_fns, examples, completions: list[str], tok, cfg: Config, m: int) -> dict:
    """{"reward": the mean total over the valid samples, "reward/<name>": each reward's mean}."""
    if not reward_fns:
        return {}
    ids = [tok(c, add_special_tokens=False)["input_ids"] for c in completions]
    res = run_rewards(reward_fns, examples, completions, ids, cfg, on_error="drop", group_size=m)
    total = [sum(v) for v, bad in zip(res.token_rewards, res.invalid) if not bad]
    out = {"reward": sum(total) / len(total) if total else float("nan")}
    out.update({k: v for k, v in res.metrics().items()   # reward/<name>: each component's mean
                if k.startswith("reward/") and not k.endswith(("_none_frac", "invalid_frac")) and "/" not in k[7:]})
    return out


def _label(path: str) -> str:
    p = Path(path)
    return f"{p.parent.name}/{p.name}" if p.parent.name else p.name


def table(labels: list[str], results: list[dict]) -> tuple[list[str], list[list[str]]]:
    """Header and rows: one row per metric, a column per checkpoint; later columns show the change from the
    first (the baseline)."""
    names: list[str] = []
    for r in results:
        names += [k for k in r if k not in names]
    rows = []
    for name in names:
        base = results[0].get(name)
        cells = [name]
        for i, r in enumerate(results):
            v = r.get(name)
            if v is None:
                cells.append("-")
            elif i == 0 or base is None:
                cells.append(f"{v:.4f}")
            else:
                cells.append(f"{v:.4f} ({v - base:+.4f})")
        rows.append(cells)
    return ["metric", *labels], rows


def markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def run(checkpoints: list[str], data: str, task: str = "", samples: int = 0, out: str | None = None, *,
        seed: int = 0, batch_size: int = 32, limit: int = 0, temperature: float | None = None,
        console=None) -> dict:
    """Evaluate every checkpoint; write eval.json, eval.md and outputs-<i>.jsonl in ``out``; return the summary."""
    if not checkpoints:
        raise ConfigError("rlft eval needs at least one checkpoint")
    if not Path(data).exists():
        raise DataError(f"eval data {data} does not exist")
    if samples < 0:
        raise ConfigError(f"--samples must be >= 0 (got {samples})")
    # a checkpoint without a config (the base model) is read with the first saved config: the same prompts
    fallback = next((p for p in (saved_config(Path(c)) for c in checkpoints if Path(c).exists()) if p), None)
    if not task:  # one task for all columns: from the first saved config
        task = Config.load(fallback).task if fallback else ""
    results = []
    for i, ckpt in enumerate(checkpoints):
        if console is not None:
            console.print(f"[dim]evaluating {ckpt} ({i + 1}/{len(checkpoints)})[/dim]")
        results.append(evaluate_checkpoint(ckpt, data, task, samples, seed=seed, batch_size=batch_size, limit=limit,
                                           temperature=temperature, fallback=fallback))
    out_dir = Path(out) if out else Path(checkpoints[-1]).parent / "eval"
    out_dir.mkdir(parents=True, exist_ok=True)
    labels = [_label(c) for c in checkpoints]
    header, rows = table(labels, [r["metrics"] for r in results])
    summary = {"data": str(data), "task": results[0]["task"], "samples": samples,
               "checkpoints": [{"path": str(c), "metrics": r["metrics"], "counts": r["counts"]}
                               for c, r in zip(checkpoints, results)]}
    (out_dir / "eval.json").write_text(json.dumps(summary, indent=2) + "\n")
    title = f"rlft eval: task {summary['task']}, {len(results[0]['outputs'])} prompts from {data}" + \
        (f", {samples} samples each" if samples else "")
    (out_dir / "eval.md").write_text(f"{title}\n\n" + markdown(header, rows))
    for i, r in enumerate(results):
        (out_dir / f"outputs-{i}.jsonl").write_text(
            "".join(json.dumps({"checkpoint": checkpoints[i], **o}, ensure_ascii=False) + "\n" for o in r["outputs"]))
    summary.update(header=header, rows=rows, title=title, out=str(out_dir))
    return summary


def main(args) -> int:
    """The CLI entry point (``rlft eval``)."""
    from rich.console import Console
    from rich.table import Table

    s = run(args.checkpoints, args.data, args.task or "", args.samples, args.out, seed=args.seed,
            batch_size=args.batch_size, limit=args.limit, temperature=args.temperature,
            console=Console(stderr=True))
    t = Table(title=s["title"])
    for h in s["header"]:
        t.add_column(h, no_wrap=True)
    for r in s["rows"]:
        t.add_row(*r)
    widths = [max(len(x) for x in col) for col in zip(s["header"], *s["rows"])]
    con = Console()
    con = Console(width=max(con.width, sum(widths) + 3 * len(widths) + 4))  # never wrap a cell
    con.print(t)
    con.print(f"written: {s['out']}/eval.json, eval.md, outputs-*.jsonl")
    return 0


def add_parser(sub) -> None:
    """The ``eval`` subcommand's arguments."""
    e = sub.add_parser("eval", help="compare checkpoints on an eval set with the task's metrics")
    e.add_argument("checkpoints", nargs="+", help="checkpoint or model folders; the first is the baseline")
    e.add_argument("--data", required=True, help="eval set (.jsonl, .csv, .parquet or a datasets folder)")
    e.add_argument("--task", help="task whose metrics to compute (default: the first checkpoint's config)")
    e.add_argument("--samples", type=int, default=0, help="also sample k completions per prompt (pass@k, ...)")
    e.add_argument("--out", help="folder for eval.json, eval.md, outputs (default: eval/ beside the last checkpoint)")
    e.add_argument("--temperature", type=float, help="sampling temperature (default: the config's, or 1)")
    e.add_argument("--batch-size", type=int, default=32, help="prompts per generation batch")
    e.add_argument("--limit", type=int, default=0, help="at most this many prompts (0 = all)")
    e.add_argument("--seed", type=int, default=0, help="seed of the sampled completions")
    e.set_defaults(fn=main)
