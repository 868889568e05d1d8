"""The command line as a person meets it: help, overrides anywhere, what a finished, resumed or interrupted run
prints, no progress bars from transformers, and the packaging around it (.gitignore, pyproject)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import yaml

from conftest import base_overrides
from rlft.cli import main

ROOT = Path(__file__).resolve().parent.parent
BARS = re.compile(r"Loading weights|Writing model shards|it/s\]")


def _write_yaml(path: Path, overrides: list[str]) -> Path:
    """A base config holding ``key=value`` overrides as YAML (what a user's file looks like)."""
    raw: dict = {}
    for item in overrides:
        key, _, value = item.partition("=")
        *sections, name = key.split(".")
        node = raw
        for s in sections:
            node = node.setdefault(s, {})
        node[name] = yaml.safe_load(value)
    path.write_text(yaml.safe_dump(raw))
    return path


def _main(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


def test_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("demo", "train", "sft", "eval", "config-help", "rate", "reward-model"):
        assert re.search(rf"^\s+{re.escape(cmd)}\s", out, re.M), f"{cmd} is not listed in:\n{out}"


def test_config_help_prints_allowed_values_and_when_a_key_applies(capsys):
    assert main(["config-help"]) == 0
    out = capsys.readouterr().out
    assert "algo.estimator = 'grpo'    (one of: reinforce, value, rloo, grpo, reinforce_pp, remax)" in out
    scale = out[out.index("algo.scale = "):]
    assert scale.splitlines()[2] == "    applies only to algo.estimator=grpo."


def test_overrides_anywhere_among_the_options(tmp_path, tiny_model_dir, tiny_data):
    base = _write_yaml(tmp_path / "base.yaml", base_overrides(tiny_model_dir, tiny_data, tmp_path / "unused"))
    out = tmp_path / "x"
    rc, _, err = _main(["train", str(base), "--out", str(out), "algo.estimator=rloo", "train.steps=1"])
    assert rc == 0, err
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["algo"]["estimator"] == "rloo" and saved["train"]["steps"] == 1 and saved["train"]["out"] == str(out)
    with pytest.raises(SystemExit) as e, contextlib.redirect_stderr(io.StringIO()) as msg:
        main(["train", str(base), "--out", str(out), "--bogus", "algo.estimator=rloo"])
    assert e.value.code == 2 and "unrecognized arguments: --bogus" in msg.getvalue()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_model_dir, tiny_data):
    """A 2-step run with an eval split, through the CLI: (run folder, what it printed)."""
    out = tmp_path_factory.mktemp("cli") / "run"
    rc, stdout, err = _main(["train", *base_overrides(tiny_model_dir, tiny_data, out), "data.eval_fraction=0.2"])
    assert rc == 0, err
    return out, stdout


def test_train_ends_with_a_summary(finished_run):
    out, stdout = finished_run
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    last = [m for m in metrics if "reward/mean" in m][-1]
    ev = json.loads((out / "eval.jsonl").read_text().splitlines()[-1])
    lines = stdout.splitlines()
    assert re.fullmatch(r"finished in \d+s, 2 steps", lines[0])
    assert f"reward/mean {last['reward/mean']:+.4f} (step 2)" in lines
    assert "eval at step 2: " in stdout and f"exact_match {ev['eval/exact_match']:.4f}" in stdout
    assert f"checkpoint: {out / 'checkpoint-2'}" in lines and lines[-1] == f"run folder: {out}"


def test_resume_of_a_finished_run_says_so(finished_run):
    out, _ = finished_run
    before = (out / "metrics.jsonl").read_text()
    rc, stdout, err = _main(["train", "--resume", str(out)])  # no config: the run's own config.yaml
    assert rc == 0, err
    assert stdout.strip() == f"run {out} already finished at step 2; raise train.steps to continue (e.g. train.steps=4)"
    assert (out / "metrics.jsonl").read_text() == before


INTERRUPT = '''
import os, signal

calls = 0


def interrupt(prompts, completions, **columns):
    """Ctrl-C, as the terminal sends it, while step RLFT_TEST_INTERRUPT_AT is scored."""
    global calls
    calls += 1
    if calls == int(os.environ["RLFT_TEST_INTERRUPT_AT"]):
        os.kill(os.getpid(), signal.SIGINT)
    return [float(len(c)) for c in completions]
'''


def _interrupted_run(tmp_path, tiny_model_dir, tiny_data, at: int, save_every: int) -> subprocess.CompletedProcess:
    (tmp_path / "interrupt.py").write_text(INTERRUPT)
    over = base_overrides(tiny_model_dir, tiny_data, tmp_path / "run", **{
        "train.steps": 50, "train.save_every": save_every, "rewards": f"[{{fn: '{tmp_path}/interrupt.py:interrupt'}}]"})
    env = {**os.environ, "RLFT_TEST_INTERRUPT_AT": str(at), "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "rlft", "train", *over], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=240)


def test_ctrl_c_with_a_checkpoint_names_it(tmp_path, tiny_model_dir, tiny_data):
    proc = _interrupted_run(tmp_path, tiny_model_dir, tiny_data, at=3, save_every=1)
    assert proc.returncode == 130, proc.stderr
    run = tmp_path / "run"
    assert f"interrupted; {run / 'checkpoint-2'} is the last complete checkpoint: add --resume {run}" in proc.stderr
    assert not BARS.search(proc.stderr + proc.stdout)


def test_ctrl_c_before_any_checkpoint_says_there_is_none(tmp_path, tiny_model_dir, tiny_data):
    proc = _interrupted_run(tmp_path, tiny_model_dir, tiny_data, at=2, save_every=0)
    assert proc.returncode == 130, proc.stderr
    assert "interrupted before the first checkpoint" in proc.stderr and "intact" not in proc.stderr
    assert not list((tmp_path / "run").glob("checkpoint-*"))


def test_no_transformers_progress_bars_from_reward_model(tmp_path):
    """`rlft reward-model train` loads and saves a transformers model: neither shows a progress bar."""
    from rlft.feedback.store import Store
    from rlft.tiny import byte_tokenizer, save_tiny, tiny_classifier

    tok = byte_tokenizer()
    base = save_tiny(tmp_path / "base", tiny_classifier(tok), tok)
    db = str(tmp_path / "f.sqlite")
    with Store(db) as s:
        s.add_samples("r", 0, ["Q: "] * 4, ["a", "bbbbbb", "c", "dddddd"], [0, 0, 1, 1], pairs=[(0, 1), (2, 3)])
        while (item := s.next_item("ann")) is not None:
            s.rate("ann", item["id"], choice="b")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_HUB_DISABLE", "TRANSFORMERS_VERB"))}
    proc = subprocess.run([sys.executable, "-m", "rlft", "reward-model", "train", "--db", db, "--base", base, "--out",
                           str(tmp_path / "rm"), "--epochs", "1", "--device", "cpu"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=240, env={**env, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    assert "saved to" in proc.stdout
    assert not BARS.search(proc.stderr + proc.stdout), proc.stderr


def test_generated_task_data_is_ignored_by_git_but_shipped_code_data_is_not():
    def ignored(path: str) -> bool:
        return subprocess.run(["git", "-C", str(ROOT), "check-ignore", "-q", "--no-index", path]).returncode == 0

    if subprocess.run(["git", "-C", str(ROOT), "rev-parse"], capture_output=True).returncode != 0:
        pytest.skip("not a git checkout")
    assert ignored("data/translation/train.jsonl") and ignored("data/dialogue/reward-model/config.json")
    assert not ignored("data/code/completion.jsonl") and not ignored("data/code/new.jsonl")


def test_pyproject_license_is_an_spdx_string_setuptools_accepts_without_warning():
    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dist = apply_configuration(Distribution(), ROOT / "pyproject.toml")
    assert [str(w.message) for w in caught if "license" in str(w.message).lower()] == []
    assert dist.metadata.license_expression == "Apache-2.0"
