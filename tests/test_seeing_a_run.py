"""Seeing a run (issue: tracking, a report of every run, TRL rewards unchanged): a 6-step run with a TRL-style reward
and `log.report_to=[tensorboard]` writes TensorBoard event files and a report.html that renders in Chromium with its
charts and the samples' tokens coloured by the advantages the trainer computed; the console writes one unwrapped
line per step into a log; `rlft eval` on a run without a task scores the run's own rewards."""

import json
import os
import re
import subprocess
import sys

import pytest
from test_report import ARGS, _browser, _open

from conftest import base_overrides
from rlft.config import Config
from rlft.train import train

TRL_REWARD = '''
def reward_len(completions, **kwargs):
    """TRL's documented example reward, unchanged: completions close to 20 characters score best."""
    return [-abs(20 - len(completion)) for completion in completions]
'''


def _lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def run(tiny_model_dir, tiny_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("seen")
    (root / "trl_rewards.py").write_text(TRL_REWARD)  # a TRL user's reward file, named in the config
    over = base_overrides(tiny_model_dir, tiny_data, root / "run", **{
        "train.steps": 6, "rewards": f"[{{fn: '{root / 'trl_rewards.py'}:reward_len'}}]", "log.report_to":
        "[tensorboard]", "log.samples_every": 3, "log.num_samples": 2, "data.eval_fraction": 0.2,
        "train.eval_every": 3, "rollout.max_new_tokens": 12})
    return train(Config.load(None, over))


def test_tensorboard_event_files_hold_every_step(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = list((run / "tensorboard").rglob("events.out.tfevents.*"))
    assert events
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    steps = [e.step for e in acc.Scalars("reward/reward_len")]
    assert steps == [1, 2, 3, 4, 5, 6]
    logged = [m["reward/reward_len"] for m in _lines(run / "metrics.jsonl") if "loss/pg" in m]
    assert [e.value for e in acc.Scalars("reward/reward_len")] == pytest.approx(logged, rel=1e-6)


def test_samples_carry_the_trainers_advantages(run):
    """GRPO with a sequence reward: a sample's advantage is the same on each of its tokens."""
    rows = _lines(run / "samples.jsonl")
    assert [r["step"] for r in rows] == [3, 3, 6, 6]
    for r in rows:
        assert len(r["tokens"]) == len(r["advantages"]) > 0
        assert len(set(r["advantages"])) == 1


def test_report_renders_in_chromium_with_charts_and_coloured_tokens(run):
    sync_api, exe = _browser()
    report = run / "report.html"
    assert report.is_file()
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=ARGS, timeout=120_000)
        page, errors, requests = _open(browser, report)
        assert requests == [report.as_uri()] and errors == []
        assert page.locator("figure.card svg.chart").count() >= 10
        toks = page.locator("#samples span.tok")
        shown = [r for r in _lines(run / "samples.jsonl") if r["step"] in (3, 6)]
        assert toks.count() == sum(len(r["tokens"]) for r in shown) > 0
        colours = set(toks.evaluate_all("es => es.map(e => getComputedStyle(e).backgroundColor)"))
        assert any(int(c[0]) != int(c[2]) for c in (re.findall(r"\d+", x)[:3] for x in colours))  # not all white
        browser.close()


def test_the_console_writes_one_unwrapped_line_per_step_into_a_log(tiny_model_dir, tiny_data, tmp_path):
    """stderr is a pipe here, as in a log file or CI: each step line holds all its fields on one line."""
    over = base_overrides(tiny_model_dir, tiny_data, tmp_path / "run", **{"log.console": True, "train.steps": 2})
    proc = subprocess.run([sys.executable, "-m", "rlft", "train", *over], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "COLUMNS": "80"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    steps = [ln for ln in proc.stderr.splitlines() if re.match(r"step\s+\d+\s+reward", ln)]
    assert len(steps) == 2 and all(ln.rstrip().endswith("tok/s") and len(ln) > 80 for ln in steps)


def test_rlft_eval_without_a_task_scores_the_runs_own_rewards(run, tmp_path):
    from rlft.cli import main

    data = tmp_path / "e.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"{i}+1=", "reference": str(i + 1)}) + "\n" for i in range(4)))
    assert main(["eval", str(run / "checkpoint-6"), "--data", str(data), "--out", str(tmp_path / "e")]) == 0
    summary = json.loads((tmp_path / "e" / "eval.json").read_text())
    m = summary["checkpoints"][0]["metrics"]
    outs = [json.loads(x) for x in (tmp_path / "e" / "outputs-0.jsonl").read_text().splitlines()]
    want = [-abs(20 - len(o["greedy"])) for o in outs]
    assert m["reward"] == pytest.approx(sum(want) / len(want)) and m["reward/reward_len"] == m["reward"]
