"""`rlft demo | train | sft | eval | report | config-help | rate | reward-model`: thin entry points over the library.

The library does the work; this module parses the command line, prints what a person needs at the end of a run
(or on Ctrl-C) and turns rlft's input errors into one red line (exit status 2).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

from .config import APPLIES_NOTE, Config, describe
from .errors import ConfigError, DataError, RewardError, RunError
from .evaluate import add_parser as add_eval_parser
from .report import add_parser as add_report_parser

# dispatched before argparse: each has its own parser (rlft/feedback/cli.py); listed in `rlft --help` too
PASSTHROUGH = {"rate": "serve the page where people rate samples (extra: rlft[web])",
               "reward-model": "train a reward model on the ratings in a feedback database"}


def _quiet_transformers() -> None:
    """No progress bars or advisory logs from transformers / huggingface_hub, for every command. The environment
    reaches them at their first import (here or in a child process, e.g. a torchrun rank); when a library caller
    has imported them already, their switches are flipped too."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if "transformers" in sys.modules or "huggingface_hub" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()


def _is_main_rank() -> bool:
    return int(os.environ.get("RANK", "0")) == 0  # under torchrun only rank 0 prints the summary


def _config(args) -> Config:
    path = args.config
    saved = Path(args.resume) / "config.yaml" if getattr(args, "resume", None) else None
    if path is None and saved is not None and saved.is_file():  # `rlft train --resume OUT`: the run's own config
        path = saved
    overrides = list(args.overrides)
    if getattr(args, "out", None):
        overrides.append(f"train.out={args.out}")
    if getattr(args, "resume", None):
        overrides.append(f"train.out={args.resume}")
    return Config.load(path, overrides)


def _run(cfg, resume: bool, overwrite: bool) -> int | None:
    """train(); on Ctrl-C say what is on disk (exit status 130), else None."""
    from .train import train

    try:
        train(cfg, resume=resume, overwrite=overwrite)
    except KeyboardInterrupt:
        print(_interrupted(Path(cfg.train.out)), file=sys.stderr)
        return 130
    return None


def _last_checkpoint(out: Path) -> Path | None:
    from .checkpoint import latest  # imports torch: here, so that `rlft --help` answers at once

    return latest(out)


def _interrupted(out: Path) -> str:
    ckpt = _last_checkpoint(out)
    if ckpt is None:
        return (f"interrupted before the first checkpoint: {out} holds none to resume from (train.save_every sets "
                f"how often one is written)")
    return f"interrupted; {ckpt} is the last complete checkpoint: add --resume {out} to continue from it"


def _finished_at(cfg) -> int | None:
    """The step of the run's last checkpoint when it is already at (or past) train.steps, else None."""
    ckpt = _last_checkpoint(Path(cfg.train.out))
    step = int(ckpt.name.rsplit("-", 1)[1]) if ckpt else None
    return step if step is not None and step >= cfg.train.steps else None


def _last_line(path: Path, key: str | None = None) -> dict | None:
    """The last JSON line of ``path`` (that holds ``key``), or None."""
    if not path.is_file():
        return None
    for line in reversed(path.read_text().splitlines()):
        row = json.loads(line) if line.strip() else {}
        if row and (key is None or key in row):
            return row
    return None


def _summary(out: Path, seconds: float) -> list[str]:
    """What the run left, as the demo prints it: time and steps, the final reward, eval figures, where things are."""
    last = _last_line(out / "metrics.jsonl", "reward/mean")
    lines = [f"finished in {seconds:.0f}s" + (f", {last['step']} steps" if last else "")]
    if last:
        lines.append(f"reward/mean {last['reward/mean']:+.4f} (step {last['step']})")
    ev = _last_line(out / "eval.jsonl")
    if ev:
        figures = "  ".join(f"{k.removeprefix('eval/')} {v:.4f}" for k, v in ev.items()
                            if k not in ("step", "samples") and isinstance(v, (int, float)))
        lines.append(f"eval at step {ev['step']}: {figures}")
    ckpt = _last_checkpoint(out)
    lines += [f"checkpoint: {ckpt if ckpt else '(none)'}", f"metrics:    {out / 'metrics.jsonl'}"]
    if ev:
        lines.append(f"evals:      {out / 'eval.jsonl'}")
    return lines + [f"run folder: {out}"]


def cmd_train(args) -> int:
    cfg = _config(args)
    out = Path(cfg.train.out)
    if args.resume and (step := _finished_at(cfg)) is not None:
        print(f"run {out} already finished at step {step}; raise train.steps to continue (e.g. "
              f"train.steps={step + cfg.train.steps})")
        return 0
    t0 = time.perf_counter()
    if (rc := _run(cfg, bool(args.resume), args.overwrite)) is not None:
        return rc
    if _is_main_rank():
        print("\n".join(_summary(out, time.perf_counter() - t0)))
    return 0


def cmd_sft(args) -> int:
    """Only the supervised stage: `sft.steps` steps, then a checkpoint (loadable by transformers)."""
    cfg = _config(args)
    if cfg.sft.steps < 1:
        raise ConfigError("rlft sft needs sft.steps >= 1 (e.g. sft.steps=200)")
    cfg = replace(cfg, train=replace(cfg.train, steps=0))
    if (rc := _run(cfg, False, args.overwrite)) is not None:
        return rc
    print(f"supervised model: {Path(cfg.train.out) / 'sft-model'}")
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
    print(f"{APPLIES_NOTE}\n")
    for k in describe():
        choices = f"    (one of: {', '.join(map(str, k.choices))})" if k.choices else ""
        print(f"{k.key} = {k.default}{choices}\n    {k.doc}")
        if k.applies:
            print(f"    {k.applies}.")
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rlft", description="Policy-gradient fine-tuning for language models.")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    d = sub.add_parser("demo", help="the embedded default: a complete run on a CPU in minutes")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--steps", type=int, default=None, help="RL steps (default: the demo's own)")
    d.add_argument("--sft-steps", type=int, default=None, help="warm-start steps (default: the demo's own)")
    d.set_defaults(fn=cmd_demo)
    for name, fn, hlp in (("train", cmd_train, "RL from a YAML config"), ("sft", cmd_sft, "supervised warm start")):
        t = sub.add_parser(name, help=hlp, description=f"{hlp}; key=value overrides may come anywhere "
                           "among the options, e.g. `rlft train base.yaml --out runs/x algo.estimator=rloo`.")
        t.add_argument("config", nargs="?", default=None, help="YAML config (see configs/)")
        t.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. algo.estimator=rloo")
        t.add_argument("--out", help="run folder (train.out)")
        t.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
        if name == "train":
            t.add_argument("--resume", metavar="OUT", help="continue the run in OUT from its last checkpoint "
                           "(with no config given, OUT/config.yaml)")
        t.set_defaults(fn=fn)
    h = sub.add_parser("config-help", help="every config key with its default, allowed values and documentation")
    h.set_defaults(fn=cmd_help_config)
    add_eval_parser(sub)  # `rlft eval CHECKPOINT ... --data FILE`: rlft/evaluate.py
    add_report_parser(sub)  # `rlft report RUN [RUN ...] [--out FILE]`: rlft/report.py
    for name, hlp in PASSTHROUGH.items():  # for the listing; `rlft rate --help` is answered by its own parser
        sub.add_parser(name, help=f"{hlp} (`rlft {name} --help`)", add_help=False)
    return p


def _parse(argv: list[str]) -> argparse.Namespace:
    """argparse takes key=value overrides only right after the config; the rest come back unrecognised and are
    overrides too when they look like key=value (`rlft train base.yaml --out runs/x algo.estimator=grpo`)."""
    p = _parser()
    args, extra = p.parse_known_args(argv)
    if getattr(args, "config", None) and "=" in args.config:  # `rlft train key=value` with no YAML
        args.overrides.insert(0, args.config)
        args.config = None
    overrides = [a for a in extra if "=" in a and not a.startswith("-")]
    unknown = [a for a in extra if a not in overrides] + ([] if hasattr(args, "overrides") else overrides)
    if unknown:
        p.error(f"unrecognized arguments: {' '.join(unknown)}")
    if overrides:
        args.overrides += overrides
    return args


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    _quiet_transformers()  # first: every command, including those dispatched below
    if argv and argv[0] == "rate":
        from .feedback.cli import rate_main

        return rate_main(argv[1:])
    if argv and argv[0] == "reward-model":
        from .feedback.cli import reward_model_main

        return reward_model_main(argv[1:])
    args = _parse(argv)
    try:
        return args.fn(args)
    except (ConfigError, DataError, RewardError, RunError) as e:
        from rich.console import Console
        from rich.markup import escape

        Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/bold red] {escape(str(e))}", highlight=False)
        return 2
    except KeyboardInterrupt:  # outside a training run (train and sft say what is on disk themselves)
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
