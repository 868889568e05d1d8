"""Config: every shipped YAML loads; overrides; unknown keys and wrong types name the key."""

import functools
from pathlib import Path

import pytest

from rlft.config import APPLIES, Config, ConfigError, describe
from rlft.rewards import resolve

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


def test_there_are_configs():
    assert len(CONFIGS) >= 5


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads_and_its_rewards_resolve(path):
    cfg = Config.load(path)
    assert cfg.rewards.components or cfg.env.cls, "a shipped config names its rewards (or an environment's turns)"
    for spec in cfg.rewards.components:
        assert callable(resolve(spec.fn))
    if cfg.env.cls:
        from rlft.env import resolve as resolve_env
        assert callable(resolve_env(cfg.env.cls))


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
    undocumented = [k.key for k in rows if not k.doc]
    assert not undocumented


# ------------------------------------------------------------------------------ keys that apply only sometimes

# key=value set where it does not apply -> the setting that makes it apply (beside the first, it loads)
NOT_APPLYING = {
    "algo.scale=batch": ["algo.estimator=rloo"], "algo.baseline=ema": ["algo.estimator=grpo"],
    "algo.ema_decay=0.5": ["algo.estimator=reinforce"],  # baseline batch
    "algo.group_baseline=true": ["algo.estimator=rloo"], "algo.value_coef=1.0": ["algo.estimator=remax"],
    "algo.max_filter_rounds=5": [], "algo.kl_estimator=k1": [], "algo.kl_in=reward": ["algo.kl_coef=0"],
    "algo.eps_low=0.1": [], "algo.eps_high=0.28": ["rollout.engine=vllm"],
    "rollout.tis_cap=4": [], "rollout.vllm_gpu_memory_utilization=0.5": ["rollout.engine=hf"],
    "rollout.vllm_sleep=true": [], "rollout.decode=graph": ["rollout.engine=hf"], "train.fsdp_offload=true": [],
    "train.fsdp_sampling=sharded": ["train.parallel=ddp"],
    "model.forced_bos_token=fra_Latn": ["model.kind=causal"], "model.lora.alpha=32": [],
    "model.lora.dropout=0.1": ["model.lora.r=0"], "model.lora.target_modules=[q_proj]": [],
    "model.lora.save_merged=true": [], "sft.lr=0.01": [], "sft.batch_size=4": ["sft.steps=0"], "sft.warmup_steps=3": [],
    "data.eval_fraction=0.1": ["data.eval=e.jsonl"], "data.system=Be brief.": ["model.chat_template=off"],
    "train.eval_every=5": [], "log.num_samples=2": ["log.samples_every=0"],
    "rewards.overlap=true": ["env.cls=envs.py:Game"],
}
MAKES_IT_APPLY = {
    "algo.scale": ["algo.estimator=grpo"], "algo.baseline": ["algo.estimator=reinforce"],
    "algo.ema_decay": ["algo.estimator=reinforce", "algo.baseline=ema"],
    "algo.group_baseline": ["algo.estimator=reinforce_pp"], "algo.value_coef": ["algo.estimator=value"],
    "algo.max_filter_rounds": ["algo.filter_groups=true"], "algo.kl_estimator": ["algo.kl_coef=0.1"],
    "algo.kl_in": ["algo.kl_coef=0.1"], "algo.eps_low": ["algo.num_iterations=2"],
    "algo.eps_high": ["algo.mini_batches=2"],
    "rollout.tis_cap": ["rollout.engine=vllm"], "rollout.vllm_gpu_memory_utilization": ["rollout.engine=vllm"],
    "rollout.vllm_sleep": ["rollout.engine=vllm"], "rollout.decode": [], "train.fsdp_offload": ["train.parallel=fsdp"],
    "train.fsdp_sampling": ["train.parallel=fsdp"], "model.forced_bos_token": ["model.kind=seq2seq"],
    "model.lora.alpha": ["model.lora.r=8"], "model.lora.dropout": ["model.lora.r=8"],
    "model.lora.target_modules": ["model.lora.r=8"], "model.lora.save_merged": ["model.lora.r=8"],
    "sft.lr": ["sft.steps=10"], "sft.batch_size": ["sft.steps=10"], "sft.warmup_steps": ["sft.steps=10"],
    "data.eval_fraction": [], "data.system": ["model.chat_template=on"], "train.eval_every": ["data.eval_fraction=0.1"],
    "log.num_samples": ["log.samples_every=5"], "rewards.overlap": [],
}


def test_the_applies_table_is_tested_key_by_key():
    keys = {k for rule in APPLIES for k in rule.keys}
    assert {o.split("=")[0] for o in NOT_APPLYING} == keys == set(MAKES_IT_APPLY)
    known = {k.key for k in describe()}
    assert keys <= known


@pytest.mark.parametrize("override", NOT_APPLYING, ids=lambda o: o.split("=")[0])
def test_a_key_set_where_it_does_not_apply_is_an_error_that_says_what_would_apply_it(override):
    key = override.split("=")[0]
    rule = next(r for r in APPLIES if key in r.keys)
    with pytest.raises(ConfigError) as e:
        Config.load(None, [override, *NOT_APPLYING[override]])
    msg = str(e.value)
    assert msg.startswith(f"{key}=") and f"applies only {rule.when}" in msg and f"or {rule.fix}" in msg
    # the same setting where it applies loads and keeps the (non-default) value
    cfg = Config.load(None, [override, *MAKES_IT_APPLY[key]])
    assert _value(cfg, key) != _value(Config.load(), key)


def _value(cfg, key):
    return functools.reduce(getattr, key.split("."), cfg)


def test_the_message_reads_as_a_sentence():
    with pytest.raises(ConfigError) as e:
        Config.load(None, ["algo.estimator=rloo", "algo.scale=batch"])
    assert str(e.value) == ("algo.scale=batch applies only to algo.estimator=grpo (got algo.estimator=rloo); remove "
                            "it or set algo.estimator=grpo")


def test_a_key_set_to_its_default_where_it_does_not_apply_loads(tmp_path):
    cfg = Config.load(None, ["algo.estimator=rloo", "algo.scale=group", "algo.eps_high=0.2", "sft.lr=1e-3"])
    assert cfg.algo.scale == "group"
    y = tmp_path / "c.yaml"
    y.write_text("algo: {estimator: rloo, scale: batch}\n")
    with pytest.raises(ConfigError, match="algo.scale=batch applies only"):
        Config.load(y)  # from the YAML file as from an override


def test_a_preset_key_that_does_not_apply_is_dropped_not_an_error(tmp_path):
    """The dialogue preset sets data.system; with the chat template off it does not apply: the user did not
    write it, so it is no error, and the loaded config holds the default (what runs)."""
    cfg = Config.load(None, ["task=dialogue", "model.chat_template=off"])
    assert cfg.data.system == ""
    assert Config.load(None, ["task=dialogue"]).data.system  # where it applies, the preset's value stays
    with pytest.raises(ConfigError, match="data.system=Hi. applies only with a chat template"):
        Config.load(None, ["task=dialogue", "model.chat_template=off", "data.system=Hi."])
    # the resolved config saved beside each checkpoint loads again, equal (resume, rlft eval)
    cfg.save(tmp_path / "config.yaml")
    assert Config.load(tmp_path / "config.yaml") == cfg


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_saved_and_loaded_again_is_equal(path, tmp_path):
    cfg = Config.load(path)
    cfg.save(tmp_path / "config.yaml")
    assert Config.load(tmp_path / "config.yaml") == cfg


def test_report_to_names_trackers():
    assert Config.load().log.report_to == []
    assert Config.load(None, ["log.report_to=[tensorboard, mlflow]"]).log.report_to == ["tensorboard", "mlflow"]
    with pytest.raises(ConfigError) as e:
        Config.load(None, ["log.report_to=[tensorboard, wandbb]"])
    assert str(e.value) == ("log.report_to names 'wandbb', which is not a tracker (did you mean wandb?); valid: "
                            "tensorboard, wandb, mlflow")
