"""The shipped code-task configs (configs/code_completion.yaml, bug_fixing.yaml, style_conversion.yaml): each
loads, names its task and the shipped data file, and trains one step on a tiny model with the preset's rewards
(the tests run in the real sandbox); the presets quoted in docs/tasks/code.md are the code's."""

import json
import re
from pathlib import Path

import pytest

import rlft
from rlft.config import Config

ROOT = Path(rlft.__file__).resolve().parent.parent
CONFIGS = {"code_completion": "completion.jsonl", "bug_fixing": "bugfix.jsonl", "style_conversion": "style.jsonl"}


@pytest.mark.parametrize("task", list(CONFIGS))
def test_code_config_loads(task):
    cfg = Config.load(ROOT / "configs" / f"{task}.yaml")
    assert cfg.task == task
    assert cfg.data.train == f"data/code/{CONFIGS[task]}" and (ROOT / cfg.data.train).exists()
    assert {r.fn for r in cfg.rewards.components} <= {"pass_rate", "all_pass", "code_style"}
    assert cfg.rewards.components, "the preset's rewards are in the loaded config"
    # the shipped rows fit the prompt budget of the config (about 4 characters a token for code)
    longest = max(len(json.loads(line)["prompt"]) for line in (ROOT / cfg.data.train).read_text().splitlines())
    assert longest / 4 < cfg.data.max_prompt_tokens


@pytest.mark.parametrize("task", list(CONFIGS))
def test_code_config_trains_one_step(task, tmp_path, tiny_model_dir):
    from rlft.train import train

    over = [f"model.path={tiny_model_dir}", "model.dtype=float32", f"data.train={ROOT / 'data/code' / CONFIGS[task]}",
            "rollout.batch_prompts=2", "rollout.num_generations=2", "rollout.max_new_tokens=8",
            "optim.micro_batch_size=4", "train.steps=1", f"train.out={tmp_path / 'run'}", "log.console=false"]
    out = train(Config.load(ROOT / "configs" / f"{task}.yaml", over))
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if "loss/pg" in x]
    assert len(rows) == 1
    saved = Config.load(out / "checkpoint-1" / "config.yaml")
    assert saved.task == task
    name = saved.rewards.components[0].name or saved.rewards.components[0].fn
    assert rows[0][f"reward/{name}"] == 0.0  # 8 random tokens pass no test


def test_code_page_quotes_the_presets():
    import yaml

    from rlft.tasks import preset

    page = (ROOT / "docs" / "tasks" / "code.md").read_text()
    quoted = yaml.safe_load(re.search(r"## The presets\n\n(?:<!--.*?-->\n)?```yaml\n(.*?)\n```\n", page, re.S).group(1))
    assert set(quoted) == set(CONFIGS)
    for task, p in quoted.items():
        want = preset(task)
        assert p == {**want, "rewards": want["rewards"]["components"]}, task
