"""`rlft eval CHECKPOINT [CHECKPOINT ...] --data FILE [--task T] [--samples k] [--out DIR]`.

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

from .config import Config, ConfigError
from .data import DataError, check_rows, columns_of, read_rows


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
    """Generate over ``data`` with ``ckpt`` and compute the task's metrics.
    Returns {"task", "metrics": {name: value}, "outputs": [{prompt, reference, greedy, samples}], "counts"}."""
    import torch

    from . import tasks
    from .policy import load_policy
    from .rewards import compute
    from .train import Prompts, build_rewards, generate

    cfg, adapter = checkpoint_config(ckpt, task, fallback)
    spec = tasks.get(task or cfg.task) if (task or cfg.task) else None
    if spec is None:
        raise ConfigError(f"{ckpt}: its config names no task; give --task")
    # every row is evaluated: too-long prompts are truncated (counted), never skipped
    d = replace(cfg.data, long_prompts="truncate" if cfg.data.long_prompts == "skip" else cfg.data.long_prompts)
    cfg = replace(cfg, data=d)
    counts: dict = {}
    rows = check_rows(read_rows(data, d.bad_rows, counts), data, d, counts, spec.needs_reference)
    rows = rows[:limit] if limit else rows
    if not rows:
        raise DataError(f"{data}: no usable rows")
    model, tok = load_policy(cfg.model, adapter=adapter)
    model.eval()
    device = next(model.parameters()).device
    prompts = Prompts(cfg, tok)
    rows = prompts.encode(rows, str(data))
    counts.update({k: v for k, v in prompts.counts.items() if v})

    greedy, sampled = [], None
    for s in range(0, len(rows), batch_size):
        greedy += generate(model, tok, rows[s:s + batch_size], cfg, None, device, greedy=True).completions
    if samples:
        temp = temperature if temperature is not None else (cfg.rollout.temperature or 1.0)
        scfg = replace(cfg, rollout=replace(cfg.rollout, temperature=temp))
        gen = torch.Generator(device).manual_seed(seed)
        flat: list[str] = []
        per = max(1, batch_size // samples)
        for s in range(0, len(rows), per):
            rep = [r for r in rows[s:s + per] for _ in range(samples)]
            flat += generate(model, tok, rep, scfg, gen, device).completions
        sampled = [flat[i * samples:(i + 1) * samples] for i in range(len(rows))]

    reward_fns = build_rewards(cfg, None) if cfg.rewards.components else []

    def score(completions: list[str], m: int) -> dict:
        """The config's rewards on ``completions`` (each row's m completions in a row): means."""
        if not reward_fns:
            return {}
        rep = [r for r in rows for _ in range(m)]
        cols = columns_of([r["_row"] for r in rep])
        if d.reference_column in cols and "reference" not in cols:
            cols["reference"] = cols[d.reference_column]
        ids = [tok(c, add_special_tokens=False)["input_ids"] for c in completions]
        res = compute(reward_fns, [r["_prompt"] for r in rep], completions, [len(x) for x in ids], cols,
                      on_error="drop", group_size=m, completion_ids=ids)
        ok = [not bad for bad in res.invalid]
        total = [sum(v) for v, good in zip(res.token_rewards, ok) if good]
        out = {"reward": sum(total) / max(1, len(total))}
        out.update({k: v for k, v in res.metrics().items()   # reward/<name>: each component's mean
                    if k.startswith("reward/") and not k.endswith(("_none_frac", "invalid_frac")) and "/" not in k[7:]})
        return out

    refs = [r.get(d.reference_column) for r in rows]
    out = tasks.Outputs(rows=[r["_row"].columns for r in rows],
                        prompts=[r["_prompt"] for r in rows], references=refs, greedy=greedy, sampled=sampled,
                        score=score)
    metrics = spec.metrics(out)
    outputs = [{"prompt": r["_text"], "reference": ref, "greedy": g, **({"samples": sampled[i]} if sampled else {})}
               for i, (r, ref, g) in enumerate(zip(rows, refs, greedy))]
    del model
    return {"task": spec.name, "metrics": metrics, "outputs": outputs, "counts": counts}


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
