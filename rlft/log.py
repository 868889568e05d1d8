"""Run output: one JSON line per step in OUT/metrics.jsonl, a console line under a progress bar, tables of
samples (OUT/samples.jsonl) and evaluations (OUT/eval.jsonl)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table


def _clean(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None  # JSON has no NaN
    return v


class RunLogger:
    def __init__(self, out: Path, cfg, resume_step: int | None = None):
        self.out, self.cfg = Path(out), cfg
        self.console = Console(stderr=True, quiet=not cfg.log.console)
        if resume_step is not None:  # drop lines past the checkpoint: the resumed run writes them again
            for name in ("metrics.jsonl", "eval.jsonl", "samples.jsonl"):
                f = self.out / name
                if f.exists():
                    keep = [ln for ln in f.read_text().splitlines() if ln and json.loads(ln)["step"] <= resume_step]
                    f.write_text("".join(ln + "\n" for ln in keep))
        self.progress = None
        self.last_eval: dict = {}
        self.first_eval: dict = {}

    def start(self, step: int, n_train: int, n_eval: int, counts: dict) -> None:
        extra = ", ".join(f"{k}={v}" for k, v in counts.items() if v)
        self.note(f"run {self.out}: {n_train} train prompts, {n_eval} eval prompts" + (f" ({extra})" if extra else ""))
        if self.cfg.log.console:
            self.progress = Progress(TextColumn("[bold]rl"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                                     console=self.console, transient=True)
            self.progress.start()
            self.task = self.progress.add_task("steps", total=self.cfg.train.steps, completed=step)

    def note(self, msg: str) -> None:
        self.console.print(f"[dim]{msg}[/dim]")

    def _append(self, name: str, obj: dict) -> None:
        with (self.out / name).open("a") as f:
            f.write(json.dumps({k: _clean(v) for k, v in obj.items()}) + "\n")
            f.flush()

    def step(self, step: int, metrics: dict, batch) -> None:
        self._append("metrics.jsonl", {"step": step, "time": time.time(), **metrics})
        self.console.print(
            f"step {step:>5}  reward {metrics['reward/mean']:+.4f} ± {metrics['reward/std']:.3f}  "
            f"len {metrics['rollout/len_mean']:5.1f}  pg {metrics['loss/pg']:+.4f}  kl {metrics['kl/mean']:.4f}  "
            f"gnorm {metrics['grad_norm']:.3f}  {metrics['perf/step_seconds']:.2f}s  "
            f"{metrics['perf/tokens_per_second']:.0f} tok/s")
        every = self.cfg.log.samples_every
        if every and step % every == 0:
            self.samples(step, batch)
        if self.progress:
            self.progress.update(self.task, completed=step)

    def samples(self, step: int, batch) -> None:
        ro = batch.rollout
        seq = (batch.token_rewards * ro.completion_mask).sum(-1).tolist()
        g = self.cfg.rollout.num_generations
        table = Table(title=f"samples at step {step}", show_lines=True)
        for col in ("prompt", "completion", "reward", "end"):
            table.add_column(col)
        for i in range(0, min(len(seq), self.cfg.log.num_samples * g), g):  # one per prompt group
            row = {"step": step, "prompt": batch.rows[i]["_text"], "completion": ro.completions[i],
                   "reward": seq[i], "finish": ro.finish[i]}
            self._append("samples.jsonl", row)
            table.add_row(row["prompt"][-200:], row["completion"][:300], f"{seq[i]:+.3f}", ro.finish[i])
        self.console.print(table)

    def eval(self, step: int, metrics: dict) -> None:
        samples = metrics.pop("_samples", [])
        self._append("eval.jsonl", {"step": step, **metrics, "samples": samples})
        self._append("metrics.jsonl", {"step": step, "time": time.time(), **metrics})
        if not self.first_eval:
            self.first_eval = dict(metrics)
        self.last_eval = dict(metrics)
        self.console.print("eval  step {:>5}  ".format(step) + "  ".join(f"{k[5:]} {v:.4f}" for k, v in metrics.items()))

    def finish(self) -> None:
        if self.progress:
            self.progress.stop()


class NullLogger:
    """What ranks other than 0 log: nothing."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None
