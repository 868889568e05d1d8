"""Bad input through the real CLI: one clear paragraph (exit code 2, no traceback) that names the problem,
and nothing already written is lost."""

import json
import math

import pytest

from conftest import base_overrides
from rlft.cli import main


def run_cli(capsys, argv):
    rc = main(argv)
    err = capsys.readouterr().err
    return rc, " ".join(err.split())


def test_unknown_key_and_wrong_type(capsys, tiny_model_dir, tiny_data, tmp_path):
    rc, err = run_cli(capsys, ["train", *base_overrides(tiny_model_dir, tiny_data, tmp_path / "o"), "algo.kl_coeff=1"])
    assert rc == 2 and "algo.kl_coeff" in err and "did you mean algo.kl_coef" in err and "Traceback" not in err
    rc, err = run_cli(capsys, ["train", *base_overrides(tiny_model_dir, tiny_data, tmp_path / "o"), "optim.lr=[1]"])
    assert rc == 2 and "optim.lr = [1]" in err and "expected float" in err


def test_model_path_missing(capsys, tiny_data, tmp_path):
    rc, err = run_cli(capsys, ["train", *base_overrides(tmp_path / "no-such-model", tiny_data, tmp_path / "o")])
    assert rc == 2 and "no-such-model" in err and "does not exist" in err


def test_dataset_missing_and_bad_row(capsys, tiny_model_dir, tmp_path):
    rc, err = run_cli(capsys, ["train", *base_overrides(tiny_model_dir, tmp_path / "nope.jsonl", tmp_path / "o")])
    assert rc == 2 and "nope.jsonl does not exist" in err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "reference": "b"}\n{"prompt": "c", "reference": \n'
                   '{"prompt": "d", "reference": "e"}\n')
    rc, err = run_cli(capsys, ["train", *base_overrides(tiny_model_dir, bad, tmp_path / "o")])
    assert rc == 2 and "bad.jsonl, line 2" in err and "not valid JSON" in err
    over = base_overrides(tiny_model_dir, bad, tmp_path / "o2", **{"data.bad_rows": "skip", "train.steps": 1})
    rc, err = run_cli(capsys, ["train", *over])
    assert rc == 0


def test_prompt_longer_than_context(capsys, tiny_model_dir, tmp_path):
    data = tmp_path / "long.jsonl"
    rows = [{"prompt": "x" * 50, "reference": "y"}, {"prompt": "ok", "reference": "y"}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    over = base_overrides(tiny_model_dir, data, tmp_path / "o", **{"data.max_prompt_tokens": 10,
                                                                     "data.long_prompts": "error"})
    rc, err = run_cli(capsys, ["train", *over])
    assert rc == 2 and "line 1" in err and "50 tokens" in err and "data.max_prompt_tokens=10" in err


def test_groups_and_batch_shape(capsys, tiny_model_dir, tiny_data, tmp_path):
    rc, err = run_cli(capsys, ["train", *base_overrides(tiny_model_dir, tiny_data, tmp_path / "o",
                                                        **{"rollout.num_generations": 1})])
    assert rc == 2 and "num_generations must be >= 2" in err
    rc, err = run_cli(capsys, ["train", *base_overrides(tiny_model_dir, tiny_data, tmp_path / "o",
                                                        **{"rollout.batch_prompts": 3, "algo.mini_batches": 2})])
    assert rc == 2 and "cannot be split into algo.mini_batches=2" in err


RAISING = '''
def boom(prompts, completions, step, **_):
    if step == 2:
        raise ValueError("the scorer crashed")
    return [0.5] * len(completions)

def nan(prompts, completions, **_):
    return [float("nan") if i == 3 else 1.0 for i in range(len(completions))]
'''


def test_reward_that_raises_stops_with_name_and_step_and_keeps_metrics(capsys, tiny_model_dir, tiny_data, tmp_path):
    f = tmp_path / "bad_rewards.py"
    f.write_text(RAISING)
    out = tmp_path / "o"
    rc, err = run_cli(capsys, ["train", *base_overrides(tiny_model_dir, tiny_data, out,
                                                        **{"rewards": f"[{{fn: '{f}:boom'}}]"})])
    assert rc == 2 and "reward 'boom' raised at step 2" in err and "the scorer crashed" in err
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1]  # step 1 was logged and kept


def test_reward_nan_names_sample_or_is_dropped_and_counted(capsys, tiny_model_dir, tiny_data, tmp_path):
    f = tmp_path / "bad_rewards.py"
    f.write_text(RAISING)
    rc, err = run_cli(capsys, ["train", *base_overrides(tiny_model_dir, tiny_data, tmp_path / "o",
                                                        **{"rewards": f"[{{fn: '{f}:nan'}}]"})])
    assert rc == 2 and "reward 'nan'" in err and "step 1" in err and "sample 3" in err
    out = tmp_path / "o2"
    rc, err = run_cli(capsys, ["train", *base_overrides(tiny_model_dir, tiny_data, out, **{
        "rewards": f"[{{fn: '{f}:nan'}}]", "rewards.on_error": "drop"})])
    assert rc == 0
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(r["reward/invalid_frac"] == pytest.approx(1 / 8) for r in rows)
    assert all(math.isclose(r["reward/mean"], 1.0) for r in rows)


def test_output_folder_with_a_run_is_refused(capsys, tiny_model_dir, tiny_data, tmp_path):
    out = tmp_path / "o"
    argv = ["train", *base_overrides(tiny_model_dir, tiny_data, out, **{"train.steps": 1})]
    assert run_cli(capsys, argv)[0] == 0
    before = (out / "metrics.jsonl").read_text()
    rc, err = run_cli(capsys, argv)
    assert rc == 2 and "already holds a run" in err and "--resume" in err and "--overwrite" in err
    assert (out / "metrics.jsonl").read_text() == before  # nothing lost
    assert run_cli(capsys, argv + ["--overwrite"])[0] == 0


def test_reward_needing_a_missing_column_fails_at_start(capsys, tiny_model_dir, tiny_data, tmp_path):
    f = tmp_path / "col.py"
    f.write_text("def needs_tests(prompts, completions, tests, **_):\n    return [0.0] * len(completions)\n")
    rc, err = run_cli(capsys, ["train", *base_overrides(tiny_model_dir, tiny_data, tmp_path / "o",
                                                        **{"rewards": f"[{{fn: '{f}:needs_tests'}}]"})])
    assert rc == 2 and "needs_tests" in err and "tests" in err
    assert not (tmp_path / "o" / "metrics.jsonl").exists()


def test_prompt_and_completion_past_learned_positions(capsys, tiny_data, tmp_path):
    from rlft.tiny import byte_tokenizer, save_tiny, tiny_causal_lm

    tok = byte_tokenizer()
    path = save_tiny(tmp_path / "gpt2", tiny_causal_lm(tok, arch="gpt2", hidden=32, layers=1, heads=2,
                                                       max_positions=64), tok)
    rc, err = run_cli(capsys, ["train", *base_overrides(path, tiny_data, tmp_path / "o", **{
        "data.max_prompt_tokens": 60, "rollout.max_new_tokens": 8})])
    assert rc == 2 and "64 learned positions" in err and "data.max_prompt_tokens=60" in err


def test_a_csv_without_the_prompt_column(capsys, tiny_model_dir, tmp_path):
    data = tmp_path / "qa.csv"
    data.write_text("question,answer\n2+2=,4\n3+3=,6\n")
    for extra in ({}, {"data.bad_rows": "skip"}):
        rc, err = run_cli(capsys, ["train", *base_overrides(tiny_model_dir, data, tmp_path / "o", **extra)])
        assert rc == 2 and "no column 'prompt'" in err and "its columns are question, answer" in err, err
        assert "data.columns={prompt: question}" in err and "no usable rows" not in err
    # rlft sft needs references: a file without the reference column says which key to set
    rc, err = run_cli(capsys, ["sft", *base_overrides(tiny_model_dir, data, tmp_path / "o",
                                                      **{"data.columns": "{prompt: question}", "sft.steps": 1})])
    assert rc == 2 and "no column 'reference'" in err and "data.reference_column=answer" in err, err


def test_unknown_reward_name_and_a_reward_that_cannot_take_keywords(capsys, tiny_model_dir, tiny_data, tmp_path):
    rc, err = run_cli(capsys, ["train", *base_overrides(tiny_model_dir, tiny_data, tmp_path / "o",
                                                        **{"rewards": "[{fn: blue}]"})])
    assert rc == 2 and "unknown reward 'blue'; did you mean 'bleu'?" in err and "exact_match" in err
    f = tmp_path / "strict.py"
    f.write_text("def strict(prompts, completions):\n    return [0.0] * len(completions)\n")
    rc, err = run_cli(capsys, ["train", *base_overrides(tiny_model_dir, tiny_data, tmp_path / "o",
                                                        **{"rewards": f"[{{fn: '{f}:strict'}}]"})])
    assert rc == 2 and "reward 'strict' takes no **kwargs, so it cannot receive prompt, reference (" in err
    assert "its signature is strict(prompts, completions)" in err
    assert not (tmp_path / "o" / "metrics.jsonl").exists()
