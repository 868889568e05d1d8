"""What a new user meets when a run starts, stops or is scored: reward names that would shadow a statistic, a
reward that applies to nothing (null, not 0), library rewards added to the config's, a batch larger than the
dataset, and run folders left by runs that failed or stopped before their first checkpoint."""

import json

import pytest

from conftest import ASCII, base_overrides
from rlft.config import Config, ConfigError
from rlft.errors import RunError
from rlft.step import build_rewards
from rlft.train import train


def _lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


@pytest.mark.parametrize("name", ["mean", "std", "invalid_frac", "len_mean", "a/b", "x_none_frac"])
def test_a_reward_may_not_take_a_statistics_name(name):
    cfg = Config.load(None, [f"rewards=[{{fn: exact_match, name: '{name}'}}]"])
    with pytest.raises(ConfigError, match=f"a reward is named '{name}'"):
        build_rewards(cfg)


def test_a_reward_named_reward_and_the_total_are_both_in_the_evaluation(tiny_model_dir, tiny_data, tmp_path):
    """The README's reward is called `reward`; with a constant 1.0 beside it, the evaluation's total is the sum of
    the two components (before, the component overwrote the total under one key)."""
    def reward(prompts, completions, **_):
        return [sum(c.isalpha() for c in x) / max(1, len(x)) for x in completions]

    def const(prompts, completions, **_):
        return [1.0] * len(completions)

    out = tmp_path / "run"
    over = base_overrides(tiny_model_dir, tiny_data, out, **{"train.steps": 1, "data.eval_fraction": 0.2,
                                                              "rewards": "[]"})
    train(Config.load(None, over), rewards=[reward, const])
    for ev in _lines(out / "eval.jsonl"):
        assert ev["eval/const"] == 1.0
        assert ev["eval/reward/mean"] == pytest.approx(ev["eval/reward"] + 1.0, abs=1e-9)
    assert "reward/reward" in _lines(out / "metrics.jsonl")[1]


def test_a_reward_that_applies_to_no_sample_is_null_not_zero(tiny_model_dir, tiny_data, tmp_path):
    def never(prompts, completions, **_):
        return [None] * len(completions)

    out = tmp_path / "run"
    over = base_overrides(tiny_model_dir, tiny_data, out, **{"train.steps": 1, "data.eval_fraction": 0.2,
                                                              "rewards": f"[{{fn: '{ASCII}:ascii_frac'}}]"})
    train(Config.load(None, over), rewards=[never])
    step = [m for m in _lines(out / "metrics.jsonl") if "loss/pg" in m][0]
    assert step["reward/never"] is None and step["reward/never_none_frac"] == 1.0
    assert step["reward/ascii_frac"] is not None
    assert all(ev["eval/never"] is None for ev in _lines(out / "eval.jsonl"))


def test_a_batch_larger_than_the_dataset_is_an_error(tiny_model_dir, tmp_path):
    data = tmp_path / "three.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "reference": "x"}) + "\n" for p in ["a", "b", "c"]))
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match=r"rollout.batch_prompts=4 is more than the 3 training prompts"):
        train(Config.load(None, base_overrides(tiny_model_dir, data, out, **{"rollout.batch_prompts": 4})))
    assert not out.exists()  # a run that failed while setting up leaves no folder behind


def test_a_run_stopped_before_its_first_checkpoint_says_how_to_start_again(tiny_model_dir, tiny_data, tmp_path):
    out = tmp_path / "run"

    def fails(prompts, completions, **_):
        raise ValueError("down")

    cfg = Config.load(None, base_overrides(tiny_model_dir, tiny_data, out, **{"rewards": "[]"}))
    with pytest.raises(Exception, match="down"):
        train(cfg, rewards=[fails])
    assert out.exists()  # it got as far as sampling: what it wrote stays
    with pytest.raises(RunError, match="stopped before its first checkpoint.*--overwrite"):
        train(cfg, rewards=[fails])
    with pytest.raises(RunError, match="no complete checkpoint.*--overwrite"):
        train(cfg, rewards=[fails], resume=True)
    ok = Config.load(None, base_overrides(tiny_model_dir, tiny_data, out, **{"train.steps": 1}))
    assert train(ok, overwrite=True) == out and (out / "checkpoint-1").is_dir()
