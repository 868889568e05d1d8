"""TRL's documented reward functions, written out as TRL's docs show them (``def r(completions, **kwargs)``,
dataset columns such as ``ground_truth`` arriving as keywords, ``completion_ids``), run through rlft's ``compute``
and through a real tiny ``rlft.train.train`` run: rlft calls rewards with TRL's keyword convention."""

import json
import re
from pathlib import Path

import pytest

from conftest import base_overrides
from rlft.config import Config
from rlft.rewards import Reward, check_columns, compute
from rlft.train import train

# ---- the examples of TRL's GRPOTrainer docs ("Using a custom reward function"), standard (text) format


def reward_len(completions, **kwargs):
    return [-abs(20 - len(completion)) for completion in completions]


def format_reward_func(completions, **kwargs):
    """Reward function that checks if the completion has a specific format."""
    pattern = r"^<think>.*?</think><answer>.*?</answer>$"
    matches = [re.match(pattern, content) for content in completions]
    return [1.0 if match else 0.0 for match in matches]


def completion_len(completion_ids, **kwargs):  # "Reward longer completions"
    return [float(len(ids)) for ids in completion_ids]


def boxed_match(completions, ground_truth, **kwargs):  # "Reward completions based on a reference"
    # Regular expression to capture content inside \boxed{}
    matches = [re.search(r"\\boxed\{(.*?)\}", completion) for completion in completions]
    contents = [match.group(1) if match else "" for match in matches]
    # Reward 1 if the content is the same as the ground truth, 0 otherwise
    return [1.0 if c == gt else 0.0 for c, gt in zip(contents, ground_truth)]


def multi_task(prompts, completions, task, **kwargs):  # "Multi-task reward functions": None = does not apply
    return [(1.0 if "<answer>" in c else 0.0) if t == "format" else None for c, t in zip(completions, task)]


TRL_REWARDS = [reward_len, format_reward_func, completion_len, boxed_match, multi_task]


def test_trl_rewards_through_compute():
    completions = ["<think>x</think><answer>\\boxed{4}</answer>", "\\boxed{5}", "a" * 20]
    cols = {"prompt": ["2+2=", "2+3=", "1+1="], "ground_truth": ["4", "6", "2"], "task": ["format", "math", "math"]}
    ids = [[7] * 10, [8] * 3, [9] * 20]
    check_columns([Reward(f.__name__, f) for f in TRL_REWARDS], cols)
    res = compute([Reward(f.__name__, f) for f in TRL_REWARDS], ["2+2=", "2+3=", "1+1="], completions, [10, 3, 20],
                  cols, completion_ids=ids)
    assert res.components == {
        "reward_len": [-abs(20 - 42), -abs(20 - 9), 0],  # 42, 9 and 20 characters
        "format_reward_func": [1.0, 0.0, 0.0],
        "completion_len": [10.0, 3.0, 20.0],
        "boxed_match": [1.0, 0.0, 0.0],
        "multi_task": [1.0, None, None],
    }
    # the weighted sum on each sample's last token: -22 + 1 + 10 + 1 + 1; -11 + 3; 0 + 20
    assert [t[-1] for t in res.token_rewards] == [-9.0, -8.0, 20.0]


def test_trl_reward_missing_its_column_fails_at_start_up():
    with pytest.raises(ValueError, match=r"reward 'boxed_match' needs 'ground_truth'.*columns: prompt, reference"):
        check_columns([Reward("boxed_match", boxed_match)], ["prompt", "reference"])


def test_trl_rewards_through_a_tiny_train_run(tiny_model_dir, tmp_path):
    seen = []

    def ground_truth_seen(completions, ground_truth, **kwargs):  # what arrives, per sample
        seen.extend(zip(kwargs["prompts"], ground_truth, kwargs["prompt"]))
        return [0.0] * len(completions)

    data = tmp_path / "train.jsonl"
    rows = [{"prompt": f"{a}+{b}=", "ground_truth": str(a + b), "task": "format" if a % 2 else "math"}
            for a in range(4) for b in range(4)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = Config.load(None, base_overrides(tiny_model_dir, data, tmp_path / "run", rewards="[]",
                                           **{"data.eval_fraction": 0.25, "train.eval_every": 2}))
    out = train(cfg, rewards=[*TRL_REWARDS, ground_truth_seen])
    lines = [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in lines if "reward/mean" in r]
    assert len(steps) == 2
    for r in steps:
        assert -20 <= r["reward/reward_len"] <= 0 and 0 <= r["reward/format_reward_func"] <= 1
        # completion_ids arrive and are each completion's tokens: their mean length is the rollout's
        assert r["reward/completion_len"] == pytest.approx(r["rollout/len_mean"])
        assert 0 <= r["reward/multi_task_none_frac"] <= 1
    evals = [r for r in lines if "eval/completion_len" in r]
    assert evals and evals[-1]["eval/completion_len"] == pytest.approx(evals[-1]["eval/len_mean"])
    # the dataset column arrives aligned with the prompts, as TRL passes it
    assert seen and all(gt == str(eval(raw[:-1])) and text.endswith(raw) for text, gt, raw in seen)
