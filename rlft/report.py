"""``rlft report RUN [RUN ...] [--out FILE]``: one self-contained HTML page per run (or comparing runs).

``write_report(runs, out)`` reads each run folder (``metrics.jsonl``, ``eval.jsonl``, ``samples.jsonl``,
``config.yaml``, ``env.json``) and writes one HTML file that needs nothing else: the figures are hand-written
inline SVG (no plotting library: the report is written at the end of every run and the core install stays lean),
the styles and the hover script are inline, and nothing is fetched (no CDN, font or image).

The page holds: figures over steps (reward total and per component with a smoothed line, KL, entropy, completion
length, truncation, zero-advantage and clip fractions, gradient norm, learning rate, seconds per phase, the
evaluation metrics), each overlaying the runs; the evaluation table first -> last; samples at the first and last
logged steps with each completion token coloured by its advantage (when ``samples.jsonl`` rows carry ``tokens``
and ``advantages``, else plain text); the config (with several runs, the keys that differ); the environment.

``environment()`` describes the machine and library versions; the trainer writes it to ``OUT/env.json`` at the
start of a run (``write_environment``).
"""

from __future__ import annotations

import datetime
import html
import json
import math
import os
import platform
import re
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import yaml

from .errors import DataError, RunError
from .trackers import flatten

COLOURS = ["#4e79a7", "#f28e2b", "#e15759", "#59a14f", "#b07aa1", "#76b7b2", "#edc948", "#9c755f", "#ff9da7",
           "#bab0ac"]  # Tableau 10: distinguishable, also in print
DASHES = ["", "6 3", "2 3", "9 3 2 3", "4 4", "1 2"]
NEG, POS = (178, 24, 43), (33, 102, 172)  # the ends of the red-white-blue advantage scale (ColorBrewer RdBu)
MAX_POINTS = 600  # drawn per line; longer series keep each bucket's min and max (spikes survive)
W, H, LEFT, RIGHT, TOP, BOTTOM = 520, 250, 62, 14, 12, 34  # figure size and plot margins, in SVG pixels


# ---------------------------------------------------------------------------------------------------- environment

def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def environment() -> dict:
    """Where a run ran: python, platform, rlft/torch/transformers versions and the accelerator (device name,
    count, CUDA version). Written to OUT/env.json at the start of a run; shown by the report."""
    import torch  # the device question needs it; the report itself does not

    env = {"python": platform.python_version(), "platform": platform.platform(), "cpus": _cpu_count(),
           **{p: _version(p) for p in ("rlft", "torch", "transformers", "peft", "vllm") if _version(p)}}
    if torch.cuda.is_available():
        env["device"] = f"cuda: {torch.cuda.get_device_name(0)}"
        env["device_count"] = torch.cuda.device_count()
        env["cuda"] = torch.version.cuda or torch.version.hip
    elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        env["device"] = "mps"
    else:
        env["device"] = "cpu"
    env["command"] = _command()
    return env


def _command() -> str:
    """The command line that started the process (``python -m rlft ...`` rather than ``.../__main__.py ...``)."""
    if not sys.argv or not sys.argv[0]:
        return ""
    prog = Path(sys.argv[0])
    head = f"python -m {prog.parent.name}" if prog.name == "__main__.py" else prog.name
    return " ".join([head, *sys.argv[1:]])


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def write_environment(out: Path) -> Path:
    """``environment()`` as ``out/env.json``; returns the path."""
    path = Path(out) / "env.json"
    path.write_text(json.dumps(environment(), indent=2) + "\n")
    return path


# ---------------------------------------------------------------------------------------------------- reading runs

@dataclass
class Run:
    """What the report reads from one run folder."""

    folder: Path
    name: str
    metrics: list[dict] = field(default_factory=list)  # the training lines of metrics.jsonl
    evals: list[dict] = field(default_factory=list)  # eval.jsonl (or the eval lines of metrics.jsonl)
    samples: list[dict] = field(default_factory=list)  # samples.jsonl
    config: str = ""  # config.yaml as written
    env: dict = field(default_factory=dict)  # env.json


def read_jsonl(path: Path) -> list[dict]:
    """The objects of a JSON-lines file. A cut last line (a run killed mid-write) is dropped; a bad line
    elsewhere is a DataError naming the file and line."""
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    rows = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            if i == len(lines):
                break  # the line being written when the run stopped
            raise DataError(f"{path}:{i}: not JSON ({e.msg}); the file is damaged: remove or fix that line") from e
        if not isinstance(obj, dict) or not isinstance(obj.get("step"), int):
            raise DataError(f"{path}:{i}: expected an object with an integer 'step', got {line[:80]!r}")
        rows.append(obj)
    return rows


def load_run(folder: str | Path, name: str | None = None) -> Run:
    """Read a run folder (``train.out``). RunError when it is not one."""
    folder = Path(folder)
    if not (folder / "metrics.jsonl").is_file():
        why = "does not exist" if not folder.exists() else "has no metrics.jsonl"
        raise RunError(f"{folder} {why}: give a run folder (the train.out of a run, e.g. runs/demo/run)")
    lines = read_jsonl(folder / "metrics.jsonl")
    evals = read_jsonl(folder / "eval.jsonl") or [m for m in lines if any(k.startswith("eval/") for k in m)]
    env_file = folder / "env.json"
    try:
        env = json.loads(env_file.read_text()) if env_file.is_file() else {}
    except json.JSONDecodeError as e:
        raise DataError(f"{env_file}: not JSON ({e.msg}); delete it or write it again") from e
    return Run(folder=folder, name=name or folder.name,
               metrics=[m for m in lines if not any(k.startswith("eval/") for k in m)], evals=evals,
               samples=read_jsonl(folder / "samples.jsonl"),
               config=(folder / "config.yaml").read_text() if (folder / "config.yaml").is_file() else "",
               env=env if isinstance(env, dict) else {})


def run_names(folders: list[Path]) -> list[str]:
    """Legend names: each folder's name, with as many parent folders as it takes to tell them apart."""
    parts = [Path(f).resolve().parts for f in folders]
    for depth in range(1, max(len(p) for p in parts) + 1):
        names = ["/".join(p[-depth:]) for p in parts]
        if len(set(names)) == len(names):
            return names
    return [f"{i + 1}: {n}" for i, n in enumerate(names)]  # the same folder given twice


# ---------------------------------------------------------------------------------------------------- series

def series(rows: list[dict], key: str) -> list[tuple[int, float | None]]:
    """(step, value) of ``key`` over the rows that have it, sorted by step; a step logged twice keeps its last
    value; null/NaN is None (a gap in the line)."""
    by_step: dict[int, float | None] = {}
    for r in rows:
        if key in r:
            v = r[key]
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            by_step[r["step"]] = float(v) if ok else None
    return sorted(by_step.items())


def smooth(points: list[tuple[int, float | None]]) -> tuple[list[tuple[int, float | None]], int]:
    """An exponential moving average over the points (gaps skipped), with a span of a twentieth of the series
    (1..50 steps): (the smoothed points, the span)."""
    span = max(1, min(50, len(points) // 20))
    alpha, avg, out = 2 / (span + 1), None, []
    for s, v in points:
        if v is not None:
            avg = v if avg is None else avg + alpha * (v - avg)
        out.append((s, avg if v is not None else None))
    return out, span


def thin(points: list[tuple[int, float | None]], limit: int = MAX_POINTS) -> list[tuple[int, float | None]]:
    """At most about ``limit`` points to draw: each bucket keeps its lowest and highest value, in step order."""
    if len(points) <= limit:
        return points
    size = math.ceil(len(points) / (limit // 2))
    out: list = []
    for i in range(0, len(points), size):
        bucket = [p for p in points[i:i + size] if p[1] is not None]
        if not bucket:
            out.append(points[i])  # keep the gap
            continue
        lo, hi = min(bucket, key=lambda p: p[1]), max(bucket, key=lambda p: p[1])
        out.extend(sorted({lo, hi}))
    return out


# ---------------------------------------------------------------------------------------------------- SVG figures

@dataclass
class Line:
    """One line of a figure. A faint line (the raw values behind a smoothed one) has no legend entry."""

    label: str
    colour: str
    dash: str
    points: list  # [(step, value or None)]
    faint: bool = False
    hover: list | None = None  # the values the tooltip shows (default: the points)


def fmt(v: float | None) -> str:
    """A number in at most 4 significant digits; very large or small ones in exponent form."""
    if v is None:
        return "–"
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 1e5 or a < 1e-3:
        return f"{v:.2e}".replace("e-0", "e-").replace("e+0", "e")
    return f"{v:.4g}"


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values (1, 2, 2.5, 5 x 10^k apart) covering [lo, hi]."""
    raw = (hi - lo) / max(n, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    return [round(first + i * step, 12) for i in range(int((hi - first) / step + 1e-9) + 1)]


def _bounds(lines: list[Line]) -> tuple[float, float, float, float] | None:
    xs = [s for ln in lines for s, v in ln.points if v is not None]
    ys = [v for ln in lines for s, v in ln.points if v is not None]
    if not xs:
        return None
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    if x0 == x1:
        x0, x1 = x0 - 1, x1 + 1
    pad = (y1 - y0) * 0.06 or (abs(y0) * 0.1 or 1.0)
    return x0, x1, y0 - pad, y1 + pad


def _path(points: list, sx, sy) -> str:
    """SVG path data; a None value breaks the line."""
    d, pen = [], "M"
    for s, v in points:
        if v is None:
            pen = "M"
            continue
        d.append(f"{pen}{sx(s):.1f},{sy(v):.1f}")
        pen = "L"
    return "".join(d)


def svg_chart(lines: list[Line], label: str) -> str:
    """An inline SVG line chart with axes, ticks and grid; the hover script reads the JSON beside it."""
    b = _bounds(lines)
    if b is None:
        return ""
    x0, x1, y0, y1 = b
    pw, ph = W - LEFT - RIGHT, H - TOP - BOTTOM

    def sx(x):
        return LEFT + (x - x0) / (x1 - x0) * pw

    def sy(y):
        return TOP + (1 - (y - y0) / (y1 - y0)) * ph

    parts = [f'<svg class="chart" viewBox="0 0 {W} {H}" role="img" aria-label="{html.escape(label)}">']
    for t in nice_ticks(y0, y1):
        parts.append(f'<line class="gl" x1="{LEFT}" x2="{W - RIGHT}" y1="{sy(t):.1f}" y2="{sy(t):.1f}"/>'
                     f'<text class="tick" x="{LEFT - 6}" y="{sy(t) + 4:.1f}" text-anchor="end">{fmt(t)}</text>')
    for t in nice_ticks(x0, x1, 6):
        if float(t).is_integer():  # steps are whole numbers
            parts.append(f'<line class="xtick" x1="{sx(t):.1f}" x2="{sx(t):.1f}" y1="{TOP + ph}" y2="{TOP + ph + 4}"/>'
                         f'<text class="tick" x="{sx(t):.1f}" y="{TOP + ph + 17}" text-anchor="middle">{int(t)}</text>')
    parts.append(f'<rect class="frame" x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}"/>'
                 f'<text class="axis" x="{LEFT + pw / 2}" y="{H - 3}" text-anchor="middle">step</text>')
    solid = [ln for ln in lines if not ln.faint]
    for ln in [ln for ln in lines if ln.faint] + solid[::-1]:  # the first series (e.g. the total) on top
        pts = thin(ln.points)
        style = f'stroke="{ln.colour}"' + (f' stroke-dasharray="{ln.dash}"' if ln.dash else "")
        parts.append(f'<path class="{"raw" if ln.faint else "line"}" {style} d="{_path(pts, sx, sy)}"/>')
        if not ln.faint and sum(v is not None for _, v in ln.points) <= 24:  # few points: mark each one
            parts += [f'<circle class="dot" cx="{sx(s):.1f}" cy="{sy(v):.1f}" r="3" fill="{ln.colour}"/>'
                      for s, v in pts if v is not None]
    parts.append(f'<line class="cursor" x1="0" x2="0" y1="{TOP}" y2="{TOP + ph}" visibility="hidden"/></svg>')
    data = {"x": [x0, x1], "box": [LEFT, TOP, pw, ph], "w": W,
            "s": [{"n": ln.label, "c": ln.colour, "p": thin(ln.hover or ln.points)} for ln in lines if not ln.faint]}
    return "".join(parts) + _json_script(data, "chart-data")


def _json_script(data, cls: str) -> str:
    """JSON inside a non-executed script element; '<' escaped so no text can close the element."""
    text = json.dumps(data, separators=(",", ":")).replace("<", "\\u003c")
    return f'<script type="application/json" class="{cls}">{text}</script>'


def legend(lines: list[Line]) -> str:
    items = []
    for ln in lines:
        if ln.faint:
            continue
        dash = f' stroke-dasharray="{ln.dash}"' if ln.dash else ""
        items.append(f'<span class="key"><svg width="26" height="10"><line x1="1" x2="25" y1="5" y2="5" '
                     f'stroke="{ln.colour}" stroke-width="2.5"{dash}/></svg>{html.escape(ln.label)}</span>')
    return f'<div class="legend">{"".join(items)}</div>'


# ---------------------------------------------------------------------------------------------------- figures

_REWARD_OTHER = {"reward/mean", "reward/std", "reward/invalid_frac"}


def _reward_keys(keys: set[str]) -> list[str]:
    parts = sorted(k for k in keys if re.fullmatch(r"reward/[^/]+", k) and k not in _REWARD_OTHER
                   and not k.endswith("_none_frac"))
    return ["reward/mean", *parts] if "reward/mean" in keys else parts


def _phase_keys(keys: set[str]) -> list[str]:
    phases = sorted(k for k in keys if re.fullmatch(r"perf/\w+_seconds", k))
    return sorted(phases, key=lambda k: k != "perf/step_seconds")  # the whole step first


def _fixed(*names: str):
    return lambda keys: [k for k in names if k in keys]


# (anchor, title, note, the keys to draw given the keys logged, smoothed, source: metrics or evals)
FIGURES = [
    ("reward", "Reward", "total and per component; faint: each step, solid: smoothed", _reward_keys, True, "m"),
    ("eval", "Evaluation", "greedy completions on the eval set", lambda keys: sorted(
        (k for k in keys if k.startswith("eval/") and not k.endswith("len_mean")),  # lengths: another scale
        key=lambda k: (k != "eval/reward/mean", k)), False, "e"),  # the total first (drawn on top)
    ("kl", "KL to the reference", "kl/mean, per token", _fixed("kl/mean"), False, "m"),
    ("entropy", "Entropy", "loss/entropy: mean per-token entropy of the policy", _fixed("loss/entropy"), False, "m"),
    ("length", "Completion length", "rollout/len_mean, tokens", _fixed("rollout/len_mean"), False, "m"),
    ("truncated", "Truncated fraction", "completions cut at max_new_tokens", _fixed("rollout/truncated_frac"),
     False, "m"),
    ("zero_adv", "Zero-advantage fraction", "samples that carry no gradient",
     _fixed("rollout/zero_advantage_frac"), False, "m"),
    ("clip", "Clip fraction", "tokens whose ratio was clipped", _fixed("clip_frac"), False, "m"),
    ("pg", "Policy-gradient loss", "loss/pg", _fixed("loss/pg"), False, "m"),
    ("grad_norm", "Gradient norm", "before clipping", _fixed("grad_norm"), False, "m"),
    ("lr", "Learning rate", "lr", _fixed("lr"), False, "m"),
    ("phases", "Seconds per phase", "perf/<phase>_seconds; step = the whole step", _phase_keys, False, "m"),
]


def _short(key: str) -> str:
    """The series name inside a figure: reward/mean -> total, reward/bleu -> bleu, perf/sample_seconds -> sample."""
    if key in ("reward/mean", "eval/reward/mean"):
        return "total"
    tail = key.split("/", 1)[-1]
    return tail[:-8] if key.startswith("perf/") and tail.endswith("_seconds") else tail


def figure_lines(runs: list[Run], keys: list[str], smoothed: bool, source: str) -> list[Line]:
    """The lines of one figure: one per (run, key). One run: a colour per key. Several: a colour per run and a
    dash per key."""
    multi, lines = len(runs) > 1, []
    for ri, run in enumerate(runs):
        rows = run.metrics if source == "m" else run.evals
        for ki, key in enumerate(keys):
            pts = series(rows, key)
            if not any(v is not None for _, v in pts):
                continue
            colour = COLOURS[(ri if multi else ki) % len(COLOURS)]
            dash = DASHES[ki % len(DASHES)] if multi else ""
            label = (f"{run.name} · {_short(key)}" if len(keys) > 1 else run.name) if multi else \
                (_short(key) if len(keys) > 1 else key)  # a figure of one metric names it in full
            if smoothed and len(pts) > 2:
                avg, _span = smooth(pts)
                lines.append(Line(label, colour, dash, pts, faint=True))
                lines.append(Line(label, colour, dash, avg, hover=pts))
            else:
                lines.append(Line(label, colour, dash, pts))
    return lines


def figures_html(runs: list[Run]) -> str:
    """Every figure with something to draw, in a grid."""
    keys_m = {k for r in runs for m in r.metrics for k in m}
    keys_e = {k for r in runs for m in r.evals for k, v in m.items() if isinstance(v, (int, float))}
    cards = []
    for anchor, title, note, pick, smoothed, source in FIGURES:
        lines = figure_lines(runs, pick(keys_m if source == "m" else keys_e), smoothed, source)
        chart = svg_chart(lines, title)
        if chart:
            cards.append(f'<figure class="card" id="fig-{anchor}"><figcaption><h3>{html.escape(title)}</h3>'
                         f'<span class="note">{html.escape(note)}</span></figcaption>'
                         f'<div class="plot">{chart}<div class="tip" hidden></div></div>{legend(lines)}</figure>')
    if not cards:
        return '<p class="empty">No metrics logged yet.</p>'
    return f'<div class="grid">{"".join(cards)}</div>'


# ---------------------------------------------------------------------------------------------------- tables

def _table(header: list[str], rows: list[list[str]], cls: str = "") -> str:
    """An HTML table; cells are already HTML."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def eval_html(run: Run) -> str:
    """The first and last evaluations side by side (metrics, then greedy completions per prompt)."""
    if not run.evals:
        return '<p class="empty">This run did not evaluate (data.eval and train.eval_every set none).</p>'
    first, last = run.evals[0], run.evals[-1]
    keys = [k for k in dict.fromkeys([*first, *last]) if k.startswith("eval/")]
    if first is last:
        rows = [[html.escape(k[5:]), fmt(_num(first.get(k)))] for k in keys]
        return _table(["metric", f"step {first['step']}"], rows, "num")
    rows = []
    for k in keys:
        a, b = _num(first.get(k)), _num(last.get(k))
        change = f"{b - a:+.4g}" if a is not None and b is not None else "–"
        rows.append([html.escape(k[5:]), fmt(a), fmt(b), change])
    out = _table(["metric", f"before (step {first['step']})", f"after (step {last['step']})", "change"], rows, "num")
    return out + _eval_samples(first, last)


def _num(v) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def _eval_samples(first: dict, last: dict, limit: int = 8) -> str:
    """Greedy completions of the same prompts at the first and last evaluation."""
    after = {s.get("prompt"): s.get("completion", "") for s in last.get("samples") or [] if isinstance(s, dict)}
    rows = []
    for s in (first.get("samples") or [])[:limit]:
        if isinstance(s, dict) and s.get("prompt") in after:
            before, now = s.get("completion", ""), after[s["prompt"]]
            changed = f'<span class="text changed">{html.escape(str(now))}</span>' if now != before else _pre(now)
            rows.append([_pre(s["prompt"]), _pre(before), changed])
    if not rows:
        return ""
    return ('<h4>Greedy completions <span class="note">(highlighted: changed)</span></h4>'
            + _table(["prompt", f"step {first['step']}", f"step {last['step']}"], rows, "samples"))


def _pre(text) -> str:
    return f'<span class="text">{html.escape(str(text))}</span>'


def _colour(a: float, scale: float) -> str:
    """The background of a token with advantage ``a``: white at 0, blue for +scale, red for -scale."""
    t = max(-1.0, min(1.0, a / scale)) if scale > 0 else 0.0
    end = POS if t > 0 else NEG
    r, g, b = (round(255 + abs(t) * (c - 255)) for c in end)
    return f"rgb({r},{g},{b})" + (";color:#fff" if abs(t) > 0.6 else "")


def _token_view(row: dict, scale: float) -> str | None:
    """The completion as tokens coloured by advantage, or None when the row has no usable tokens/advantages."""
    tokens, adv = row.get("tokens"), row.get("advantages")
    if not (isinstance(tokens, list) and isinstance(adv, list) and tokens and len(tokens) == len(adv)):
        return None
    spans = []
    for tok, a in zip(tokens, adv):
        a = _num(a)
        text = html.escape(str(tok)).replace("\n", "↵\n")
        style = f' style="background:{_colour(a, scale)}"' if a is not None else ""
        spans.append(f'<span class="tok"{style} title="advantage {fmt(a)}">{text}</span>')
    return f'<span class="text">{"".join(spans)}</span>'


def _scale(rows: list[dict]) -> float:
    """The largest |advantage| among the rows shown: the ends of the colour scale (shared, so colours compare)."""
    vals = [abs(v) for r in rows if isinstance(r.get("advantages"), list) for v in map(_num, r["advantages"])
            if v is not None]
    return max(vals, default=0.0)


def samples_html(run: Run) -> str:
    """Samples at the first and last logged steps; tokens coloured by advantage where the rows carry them."""
    steps = sorted({s["step"] for s in run.samples})
    if not steps:
        return '<p class="empty">No samples logged (log.samples_every is 0, or the run stopped first).</p>'
    shown = [s for s in run.samples if s["step"] in (steps[0], steps[-1])]
    scale = _scale(shown)
    parts = [_scale_legend(scale)] if scale > 0 else []
    for step in dict.fromkeys([steps[0], steps[-1]]):
        rows, plain = [], 0
        for s in (s for s in shown if s["step"] == step):
            view = _token_view(s, scale)
            plain += view is None
            rows.append([_pre(s.get("prompt", "")), view or _pre(s.get("completion", "")),
                         fmt(_num(s.get("reward"))), html.escape(str(s.get("finish", "")))])
        note = f' <span class="note">({plain} of {len(rows)} without per-token advantages: plain text)</span>' \
            if plain and scale > 0 else ""
        table = _table(["prompt", "completion", "reward", "end"], rows, "samples scored")
        parts.append(f"<h4>Step {step}{note}</h4>{table}")
    return "".join(parts)


def _scale_legend(scale: float) -> str:
    return (f'<div class="scale"><span>advantage</span><span class="num">{fmt(-scale)}</span>'
            f'<span class="bar"></span><span class="num">+{fmt(scale)}</span>'
            f'<span class="note">red: the update makes the token less likely; blue: more likely; '
            f'hover a token for its value</span></div>')


def _flat_config(run: Run) -> dict:
    try:
        raw = yaml.safe_load(run.config) if run.config else {}
    except yaml.YAMLError:
        return {}  # shown as text only
    return flatten(raw) if isinstance(raw, dict) else {}


def config_html(runs: list[Run]) -> str:
    """Each run's config.yaml; with several runs first the keys whose values differ."""
    parts = []
    if len(runs) > 1:
        flats = [_flat_config(r) for r in runs]
        keys = [k for k in dict.fromkeys(k for f in flats for k in f) if len({repr(f.get(k)) for f in flats}) > 1]
        rows = [[html.escape(k), *(_pre(f.get(k, "–")) for f in flats)] for k in keys if k != "train.out"]
        parts.append("<h4>Settings that differ</h4>" + (_table(["key", *(html.escape(r.name) for r in runs)], rows)
                                                        if rows else '<p class="empty">none (besides train.out)</p>'))
    for r in runs:
        body = f"<pre>{html.escape(r.config)}</pre>" if r.config else '<p class="empty">no config.yaml</p>'
        opened = " open" if len(runs) == 1 else ""
        parts.append(f"<details{opened}><summary>{html.escape(r.name)}/config.yaml</summary>{body}</details>")
    return "".join(parts)


def environment_html(runs: list[Run]) -> str:
    keys = list(dict.fromkeys(k for r in runs for k in r.env))
    if not keys:
        return '<p class="empty">Not recorded (env.json is written at the start of a run).</p>'
    rows = [[html.escape(k), *(_pre(r.env.get(k, "–")) for r in runs)] for k in keys]
    return _table(["", *(html.escape(r.name) for r in runs)], rows)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h {m:02d}m" if h else f"{m}m {s:02d}s" if m else f"{s}s"


def summary_html(runs: list[Run]) -> str:
    """One line per run: its colour (with several), folder, steps, wall time, last reward and evaluation."""
    rows = []
    for i, r in enumerate(runs):
        times = [m["time"] for m in r.metrics if isinstance(m.get("time"), (int, float))]
        reward = [v for _, v in series(r.metrics, "reward/mean") if v is not None]
        ev = [v for _, v in series(r.evals, "eval/reward/mean") if v is not None]
        swatch = f'<span class="swatch" style="background:{COLOURS[i % len(COLOURS)]}"></span>' if len(runs) > 1 else ""
        rows.append([swatch + html.escape(r.name), _pre(r.folder), str(r.metrics[-1]["step"] if r.metrics else 0),
                     _duration(times[-1] - times[0] if len(times) > 1 else None),
                     fmt(smooth(series(r.metrics, "reward/mean"))[0][-1][1] if reward else None),
                     " → ".join(fmt(v) for v in dict.fromkeys([ev[0], ev[-1]])) if ev else "–"])
    return _table(["run", "folder", "last step", "wall time", "reward (smoothed, last)", "eval/reward first → last"],
                  rows, "num")


# ---------------------------------------------------------------------------------------------------- the page

CSS = """
:root{--fg:#1f2328;--muted:#656d76;--line:#d8dee4;--bg:#f6f8fa;--card:#fff;--accent:#4e79a7}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;color:var(--fg);
 background:var(--bg)}
header{background:#24292f;color:#fff;padding:18px 28px 12px}
header h1{margin:0;font-size:22px;font-weight:600}
header .sub{color:#c9d1d9;margin-top:2px}
nav{margin-top:10px}nav a{color:#9ecbff;margin-right:16px;text-decoration:none}nav a:hover{text-decoration:underline}
main{max-width:1400px;margin:0 auto;padding:8px 28px 40px}
section{margin-top:26px}
h2{font-size:18px;border-bottom:1px solid var(--line);padding-bottom:4px;margin:0 0 12px}
h3{font-size:14px;margin:0}h4{font-size:14px;margin:16px 0 6px}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(430px,1fr));gap:14px}
.card{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:10px 12px 8px;margin:0}
figcaption{display:flex;gap:10px;align-items:baseline;flex-wrap:wrap}
.note{color:var(--muted);font-size:12px;font-weight:normal}
.plot{position:relative}
svg.chart{width:100%;height:auto;display:block;font-size:11px}
line.gl{stroke:#eaeef2}.frame{fill:none;stroke:var(--line)}.xtick{stroke:#8c959f}
.tick{fill:var(--muted)}.axis{fill:var(--muted)}
path.line{fill:none;stroke-width:2;stroke-linejoin:round}
path.raw{fill:none;stroke-width:1;opacity:.28}
.cursor{stroke:#8c959f;stroke-dasharray:3 3}
.legend{display:flex;flex-wrap:wrap;gap:4px 14px;font-size:12px;color:var(--fg);margin-top:2px}
.key{display:inline-flex;align-items:center;gap:4px}
.tip{position:absolute;top:8px;pointer-events:none;background:rgba(255,255,255,.96);border:1px solid var(--line);
 border-radius:6px;padding:4px 8px;font-size:12px;box-shadow:0 2px 6px rgba(0,0,0,.08);white-space:nowrap}
.tip b{display:block}.tip i{display:inline-block;width:9px;height:9px;border-radius:2px;margin-right:5px}
table{border-collapse:collapse;background:var(--card);border:1px solid var(--line);margin:4px 0 8px}
th,td{border-bottom:1px solid var(--line);padding:5px 10px;text-align:left;vertical-align:top}
th{background:#eef1f4;font-weight:600}
table.num td:not(:first-child){font-variant-numeric:tabular-nums}
table.samples{width:100%}table.samples td:first-child{width:22%;color:var(--muted)}
table.scored td:nth-child(n+3),table.scored th:nth-child(n+3){width:1%;white-space:nowrap}
.changed{background:#fff4c2;border-radius:2px}
.text{white-space:pre-wrap;word-break:break-word;font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;
 font-size:12.5px}
.tok{border-radius:2px;padding:1px 0;box-shadow:inset 0 0 0 .5px rgba(0,0,0,.08)}
.scale{display:flex;align-items:center;gap:8px;margin:6px 0 2px;flex-wrap:wrap}
.scale .bar{display:inline-block;width:180px;height:12px;border-radius:3px;border:1px solid var(--line);
 background:linear-gradient(to right,rgb(178,24,43),#fff,rgb(33,102,172))}
.swatch{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:6px}
pre{background:var(--card);border:1px solid var(--line);border-radius:6px;padding:10px;overflow:auto;max-height:520px;
 font-size:12px}
details{margin:6px 0}summary{cursor:pointer;color:var(--accent)}
.empty{color:var(--muted);font-style:italic}
"""

# the hover read-out: the values of every line at the step under the pointer (data: the JSON beside each chart)
JS = """
document.querySelectorAll('svg.chart').forEach(function (svg) {
  var plot = svg.parentNode, tip = plot.querySelector('.tip'), cursor = svg.querySelector('.cursor');
  var d = JSON.parse(svg.nextElementSibling.textContent), box = d.box;
  function nearest(p, x) {
    var lo = 0, hi = p.length - 1;
    while (hi - lo > 1) { var mid = (lo + hi) >> 1; if (p[mid][0] < x) lo = mid; else hi = mid; }
    return Math.abs(p[lo][0] - x) <= Math.abs(p[hi][0] - x) ? p[lo] : p[hi];
  }
  function fmt(v) {
    if (v === null) return '–';
    var a = Math.abs(v);
    return (a !== 0 && (a >= 1e5 || a < 1e-3)) ? v.toExponential(2) : String(+v.toPrecision(4));
  }
  svg.addEventListener('mousemove', function (ev) {
    var r = svg.getBoundingClientRect(), px = (ev.clientX - r.left) * d.w / r.width;
    if (px < box[0] || px > box[0] + box[2]) { tip.hidden = true; cursor.setAttribute('visibility', 'hidden'); return; }
    var x = d.x[0] + (px - box[0]) / box[2] * (d.x[1] - d.x[0]), step = null, rows = [];
    d.s.forEach(function (s) {
      if (!s.p.length) return;
      var q = nearest(s.p, x);
      if (step === null || Math.abs(q[0] - x) < Math.abs(step - x)) step = q[0];
      rows.push([s, q]);
    });
    if (step === null) return;
    tip.textContent = '';
    var head = document.createElement('b'); head.textContent = 'step ' + step; tip.appendChild(head);
    rows.forEach(function (sq) {
      if (sq[1][0] !== step) return;
      var line = document.createElement('div'), sw = document.createElement('i');
      sw.style.background = sq[0].c; line.appendChild(sw);
      line.appendChild(document.createTextNode(sq[0].n + ': ' + fmt(sq[1][1]))); tip.appendChild(line);
    });
    var cx = box[0] + (step - d.x[0]) / (d.x[1] - d.x[0]) * box[2];
    cursor.setAttribute('x1', cx); cursor.setAttribute('x2', cx); cursor.setAttribute('visibility', 'visible');
    tip.hidden = false;
    var left = cx * r.width / d.w + 12;
    tip.style.left = (left + tip.offsetWidth > r.width ? left - tip.offsetWidth - 24 : left) + 'px';
  });
  svg.addEventListener('mouseleave', function () { tip.hidden = true; cursor.setAttribute('visibility', 'hidden'); });
});
"""

SECTIONS = [("runs", "Runs"), ("figures", "Figures"), ("evaluation", "Evaluation"), ("samples", "Samples"),
            ("config", "Config"), ("environment", "Environment")]


def render(runs: list[Run]) -> str:
    """The whole page as one string."""
    per_run = len(runs) > 1  # per-run sections get a heading per run

    def each(fn) -> str:
        return "".join((f"<h3>{html.escape(r.name)}</h3>" if per_run else "") + fn(r) for r in runs)

    body = {"runs": summary_html(runs), "figures": figures_html(runs), "evaluation": each(eval_html),
            "samples": each(samples_html), "config": config_html(runs), "environment": environment_html(runs)}
    title = "rlft report: " + ", ".join(r.name for r in runs)
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    nav = "".join(f'<a href="#{a}">{t}</a>' for a, t in SECTIONS)
    sections = "".join(f'<section id="{a}"><h2>{t}</h2>{body[a]}</section>' for a, t in SECTIONS)
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width,initial-scale=1">'
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>"
            f'<header><h1>{html.escape(title)}</h1><div class="sub">written {when} by rlft report</div>'
            f"<nav>{nav}</nav></header><main>{sections}</main><script>{JS}</script></body></html>")


def write_report(runs: list[Path], out: Path) -> Path:
    """Write one self-contained HTML report of ``runs`` (run folders) to ``out``; returns ``out``."""
    if not runs:
        raise RunError("rlft report needs at least one run folder")
    folders = [Path(r) for r in runs]
    loaded = [load_run(f, n) for f, n in zip(folders, run_names(folders))]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(render(loaded), encoding="utf-8")
    tmp.replace(out)  # a reader never sees half a page
    return out


# ---------------------------------------------------------------------------------------------------- CLI

def main(args) -> int:
    """The CLI entry point (``rlft report``)."""
    runs = [Path(r) for r in args.runs]
    out = Path(args.out) if args.out else (runs[0] / "report.html" if len(runs) == 1 else Path("report.html"))
    print(f"report: {write_report(runs, out)}")
    return 0


def add_parser(sub) -> None:
    """The ``report`` subcommand's arguments."""
    r = sub.add_parser("report", help="one self-contained HTML page of a run's curves, samples and config")
    r.add_argument("runs", nargs="+", metavar="RUN", help="run folders (train.out); several are overlaid")
    r.add_argument("--out", help="HTML file (default: RUN/report.html for one run, ./report.html for several)")
    r.set_defaults(fn=main)
