"""`rlft demo | train | sft | eval | rate | reward-model`: thin entry points over the library."""

from __future__ import annotations

import argparse
import os
import sys


def _quiet_transformers() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:
        pass


def _config(args):
    from .config import Config

    overrides = list(args.overrides)
    if getattr(args, "out", None):
        overrides.append(f"train.out={args.out}")
    if getattr(args, "resume", None):
        overrides.append(f"train.out={args.resume}")
    return Config.load(args.config, overrides)


def cmd_train(args) -> int:
    from .train import train

    cfg = _config(args)
    out = train(cfg, resume=bool(args.resume), overwrite=args.overwrite)
    print(f"run folder: {out}")
    return 0


def cmd_sft(args) -> int:
    """Only the supervised stage: `sft.steps` steps, then a checkpoint (loadable by transformers)."""
    from dataclasses import replace

    from .train import train

    cfg = _config(args)
    if cfg.sft.steps < 1:
        from .config import ConfigError

        raise ConfigError("rlft sft needs sft.steps >= 1 (e.g. sft.steps=200)")
    cfg = replace(cfg, train=replace(cfg.train, steps=0))
    out = train(cfg, overwrite=args.overwrite)
    print(f"supervised model: {out / 'sft-model'}")
    return 0


def cmd_demo(args) -> int:
    from .demo import run

    s = run(args.out, seed=args.seed, steps=args.steps, sft_steps=args.sft_steps)
    from rich.console import Console
    from rich.table import Table

    table = Table(title="rlft demo: greedy, held-out sentences")
    for col in ("metric", "warm start (before RL)", "after RL", "change"):
        table.add_column(col)
    for k in s["before"]:
        b, a = s["before"][k], s["after"][k]
        table.add_row(k, f"{b:.4f}", f"{a:.4f}", f"{a - b:+.4f}")
    con = Console()
    con.print(table)
    con.print(f"finished in {s['seconds']:.0f}s\ncheckpoint: {s['checkpoint']}\nmetrics:    {s['run']}/metrics.jsonl\n"
              f"samples:    {s['run']}/samples.jsonl\nsummary:    {args.out}/summary.json")
    return 0


def cmd_help_config(_args) -> int:
    from .config import APPLIES_NOTE, describe

    print(f"{APPLIES_NOTE}\n")
    for k in describe():
        choices = f"    (one of: {', '.join(map(str, k.choices))})" if k.choices else ""
        print(f"{k.key} = {k.default}{choices}\n    {k.doc}")
        if k.applies:
            print(f"    {k.applies}.")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "rate":
        from .feedback.cli import rate_main

        return rate_main(argv[1:])
    if argv and argv[0] == "reward-model":
        from .feedback.cli import reward_model_main

        return reward_model_main(argv[1:])
    p = argparse.ArgumentParser(prog="rlft", description="Policy-gradient fine-tuning for language models.")
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("demo", help="the embedded default: a complete run on a CPU in minutes")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--steps", type=int, default=None, help="RL steps (default: the demo's own)")
    d.add_argument("--sft-steps", type=int, default=None, help="warm-start steps (default: the demo's own)")
    d.set_defaults(fn=cmd_demo)
    for name, fn, hlp in (("train", cmd_train, "RL from a YAML config"), ("sft", cmd_sft, "supervised warm start")):
        t = sub.add_parser(name, help=hlp)
        t.add_argument("config", nargs="?", default=None, help="YAML config (see configs/)")
        t.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. algo.estimator=rloo")
        t.add_argument("--out", help="run folder (train.out)")
        t.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
        if name == "train":
            t.add_argument("--resume", metavar="OUT", help="continue the run in OUT from its last checkpoint")
        t.set_defaults(fn=fn)
    h = sub.add_parser("config-help", help="every config key with its default and documentation")
    h.set_defaults(fn=cmd_help_config)
    from .evaluate import add_parser as add_eval_parser

    add_eval_parser(sub)  # `rlft eval CHECKPOINT ... --data FILE`: rlft/evaluate.py
    args = p.parse_args(argv)
    if getattr(args, "config", None) and "=" in args.config:  # `rlft train key=value` with no YAML
        args.overrides.insert(0, args.config)
        args.config = None
    _quiet_transformers()
    from .config import ConfigError
    from .data import DataError
    from .rewards.base import RewardError
    from .train import RunError

    try:
        return args.fn(args)
    except (ConfigError, DataError, RewardError, RunError) as e:
        from rich.console import Console
        from rich.markup import escape

        Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/bold red] {escape(str(e))}", highlight=False)
        return 2
    except KeyboardInterrupt:
        print("interrupted; the last checkpoint is intact", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
