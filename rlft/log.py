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

from .report import write_environment, write_report
from .trackers import open_trackers


def _clean(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None  # JSON has no NaN
    return v


class RunLogger:
    """What rank 0 writes: the files above and the console. ``tokenizer`` decodes the sampled tokens one by one for
    samples.jsonl (each token with its advantage)."""

    def __init__(self, out: Path, cfg, tokenizer=None, resume_step: int | None = None):
        self.out, self.cfg, self.tokenizer = Path(out), cfg, tokenizer
        # one unwrapped line per step when stderr is not a terminal (a log file, CI)
        self.console = Console(stderr=True, quiet=not cfg.log.console)
        self.console.soft_wrap = not self.console.is_terminal
        if resume_step is not None:  # drop lines past the checkpoint: the resumed run writes them again
            for name in ("metrics.jsonl", "eval.jsonl", "samples.jsonl"):
                f = self.out / name
                if f.exists():
                    keep = [ln for ln in f.read_text().splitlines() if ln and json.loads(ln)["step"] <= resume_step]
                    f.write_text("".join(ln + "\n" for ln in keep))
        self.progress = None
        write_environment(self.out)  # OUT/env.json: versions and device, shown by the report
        report_to = cfg.log.report_to
        self.trackers = open_trackers(report_to, self.out, self.out.name, cfg.to_dict()) if report_to else None

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
        if self.trackers:
            self.trackers.log(step, metrics)
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
        """One sample per prompt group (up to log.num_samples) to samples.jsonl and a console table; each with its
        completion's tokens and their advantages (what the update pushes up or down). Multi-turn episodes add
        ``turns`` (the conversation as chat messages; the console shows it with each turn's role) and ``actions``
        (1 on the model's tokens, 0 on the environment's)."""
        ro = batch.rollout
        seq = (batch.token_rewards * ro.completion_mask).sum(-1).tolist()
        g = self.cfg.rollout.num_generations
        table = Table(title=f"samples at step {step}", show_lines=True)
        for col in ("prompt", "completion", "reward", "end"):
            table.add_column(col)
        rows = []
        for i in range(0, min(len(seq), self.cfg.log.num_samples * g), g):  # one per prompt group
            row = {"step": step, "prompt": batch.examples[i].text, "completion": ro.completions[i],
                   "reward": seq[i], "finish": ro.finish[i], **self._tokens(batch, i)}
            shown = row["completion"][:300]
            if ro.turns is not None:
                row["turns"] = ro.turns[i]
                shown = "\n".join(f"{m['role']}> {m['content'][:200]}" for m in ro.turns[i])
            self._append("samples.jsonl", row)
            rows.append(row)
            table.add_row(row["prompt"][-200:], shown, f"{seq[i]:+.3f}", ro.finish[i])
        self.console.print(table)
        if self.trackers:
            self.trackers.samples(step, rows)

    def _tokens(self, batch, i: int) -> dict:
        """Row i's completion tokens, decoded one by one, and their advantages."""
        if self.tokenizer is None or batch.advantages is None:
            return {}
        n = int(batch.rollout.lengths[i])
        ids = batch.rollout.completion_ids[i, :n].tolist()
        out = {"tokens": [self.tokenizer.decode([t]) for t in ids],
               "advantages": [round(float(x), 6) for x in batch.advantages[i, :n]]}
        if batch.rollout.action_mask is not None:
            out["actions"] = batch.rollout.action_mask[i, :n].tolist()
        return out

    def eval(self, step: int, metrics: dict) -> None:
        metrics = dict(metrics)
        samples = metrics.pop("_samples", [])
        self._append("eval.jsonl", {"step": step, **metrics, "samples": samples})
        self._append("metrics.jsonl", {"step": step, "time": time.time(), **metrics})
        if self.trackers:
            self.trackers.log(step, metrics)
        self.console.print(f"eval  step {step:>5}  " + "  ".join(
            f"{k[5:]} {v:.4f}" if math.isfinite(v) else f"{k[5:]} n/a" for k, v in metrics.items()))

    def finish(self) -> None:
        """The end of the run: trackers closed, OUT/report.html written (a failed report is a note, not a failed
        run: the run's files are all there, and `rlft report OUT` writes it again)."""
        if self.progress:
            self.progress.stop()
        if self.trackers:
            self.trackers.finish()
        try:
            self.note(f"report: {write_report([self.out], self.out / 'report.html')}")
        except Exception as e:  # noqa: BLE001 -- the report must not fail a finished run
            self.note(f"report.html not written ({type(e).__name__}: {e}); rlft report {self.out} retries")


class NullLogger:
    """What ranks other than 0 log: nothing."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None
