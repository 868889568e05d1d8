"""Config: every shipped YAML loads; overrides; unknown keys and wrong types name the key."""

from pathlib import Path

import pytest

from rlft.config import Config, ConfigError, describe
from rlft.rewards import resolve

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


def test_there_are_configs():
    assert len(CONFIGS) >= 5


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads_and_its_rewards_resolve(path):
    cfg = Config.load(path)
    assert cfg.rewards.components, "a shipped config names its rewards"
    for spec in cfg.rewards.components:
        assert callable(resolve(spec.fn))


def test_overrides_apply_with_types():
    cfg = Config.load(None, ["algo.estimator=rloo", "optim.lr=1e-5", 'rollout.stop=["\\n"]', "algo.kl_coef=0",
                             "rewards=[bleu, {fn: exact_match, weight: 0.5}]"])
    assert cfg.algo.estimator == "rloo" and cfg.optim.lr == 1e-5 and isinstance(cfg.algo.kl_coef, float)
    assert cfg.rollout.stop == ["\n"]
    assert [(r.fn, r.weight) for r in cfg.rewards.components] == [("bleu", 1.0), ("exact_match", 0.5)]


def test_config_round_trips_through_yaml(tmp_path):
    cfg = Config.load(None, ["algo.estimator=remax", "rewards=[bleu]", "rollout.num_generations=2"])
    cfg.save(tmp_path / "c.yaml")
    assert Config.load(tmp_path / "c.yaml") == cfg


@pytest.mark.parametrize("overrides,needle", [
    (["algo.estimatr=rloo"], "unknown config key 'algo.estimatr'; did you mean algo.estimator?"),
    (["optim.lr=fast"], "optim.lr = 'fast' has type str; expected float"),
    (["rollout.max_new_tokens=1.5"], "rollout.max_new_tokens = 1.5 has type float; expected int"),
    (["algo.estimator=grop"], "did you mean grpo"),
    (["rollout.num_generations=1"], "rollout.num_generations must be >= 2"),
    (["algo.estimator=rloo", "rollout.num_generations=1"], "algo.estimator=rloo"),
    (["rollout.batch_prompts=3", "rollout.num_generations=2", "algo.mini_batches=2"], "algo.mini_batches=2"),
    (["rewards=[{fn: bleu, wieght: 2}]"], "rewards.components[0].wieght'; did you mean rewards.components[0].weight"),
    (["model=3"], "config key model must be a mapping"),
    (["noequals"], "must look like key=value"),
])
def test_bad_config_errors_name_the_key(overrides, needle):
    with pytest.raises(ConfigError) as e:
        Config.load(None, overrides)
    assert needle in str(e.value)


def test_missing_config_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        Config.load(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        Config.load(bad)


def test_every_field_is_documented():
    rows = describe()
    assert len(rows) > 50
    undocumented = [k for k, _, doc in rows if not doc]
    assert not undocumented
