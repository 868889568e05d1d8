"""rewards.overlap: rows are scored as they finish while the rest still decode. The sampler reports each finished
row exactly as the returned rollout holds it; a run with overlap equals one without (rewards, metrics,
weights); parts really are scored during sampling; a reward's error still stops the run."""

import json
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import sample
from rlft.collect import Overlap, sample_examples
from rlft.config import Config, ConfigError
from rlft.data import Row
from rlft.policy import encode_prompt, left_pad, prepare_tokenizer
from rlft.rewards import RewardError
from rlft.step import Example
from rlft.train import train

STOPS = list("abcdefghijklmnopqrstuvwxyz")  # a random byte model stops at one of these after a few tokens


def _letters(prompts, completions, **_):
    return [sum(c.isalpha() for c in s) / max(1, len(s)) for s in completions]


def _cfg(model_dir, data, out, **extra) -> Config:
    raw = {"model": {"path": str(model_dir)}, "data": {"train": str(data)},
           "rollout": {"batch_prompts": 3, "num_generations": 4, "max_new_tokens": 40, "stop": STOPS},
           "optim": {"lr": 1e-2}, "train": {"steps": 2, "out": str(out), "seed": 3}, "log": {"console": False}}
    for key, value in extra.items():
        section, name = key.split(".")
        raw.setdefault(section, {})[name] = value
    return Config.from_dict(raw)


def _policy(model_dir):
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    prepare_tokenizer(tok)
    return model, tok


def test_sampler_reports_each_finished_row_as_it_returns_it(tiny_model_dir):
    model, tok = _policy(tiny_model_dir)
    ids, mask = left_pad([encode_prompt(tok, f"{i}+{i}=", "off") for i in range(6) for _ in range(4)],
                         tok.pad_token_id)
    reports = []
    ro = sample(model, tok, ids, mask, max_new_tokens=40, temperature=1.0, stop=STOPS,
                generator=torch.Generator().manual_seed(0), on_done=lambda idx, part: reports.append((idx, part)))
    rows = [i for idx, _ in reports for i in idx]
    assert len(reports) >= 2 and len(rows) == len(set(rows))  # several syncs, each row reported once
    lengths = ro.lengths.tolist()
    assert all(ro.finish[i] == "stop" for i in rows)
    assert any(n > 16 for n in lengths) and min(lengths[i] for i in rows) <= 8  # rows ended at different syncs
    for idx, part in reports:
        for j, i in enumerate(idx):
            n = lengths[i]
            assert part.completions[j] == ro.completions[i] and part.finish[j] == ro.finish[i]
            assert int(part.lengths[j]) == n
            assert part.completion_ids[j, :n].tolist() == ro.completion_ids[i, :n].tolist()


def _run(tiny_model_dir, tiny_data, out, overlap, calls):
    def reward(prompts, completions, **_):
        calls.append(len(completions))
        return _letters(prompts, completions)

    reward.__name__ = "letters"
    run = train(_cfg(tiny_model_dir, tiny_data, out, **{"rewards.overlap": overlap}), rewards=[reward],
                overwrite=True)
    metrics = [json.loads(x) for x in (Path(run) / "metrics.jsonl").read_text().splitlines()]
    weights = AutoModelForCausalLM.from_pretrained(Path(run) / "checkpoint-2").state_dict()
    return [{k: v for k, v in m.items() if k.startswith(("reward/", "rollout/", "loss/", "grad_norm"))}
            for m in metrics if "reward/mean" in m], weights


def test_a_run_with_overlap_equals_one_without(tiny_model_dir, tiny_data, tmp_path):
    plain_calls, parts_calls = [], []
    plain, w_plain = _run(tiny_model_dir, tiny_data, tmp_path / "plain", False, plain_calls)
    parts, w_parts = _run(tiny_model_dir, tiny_data, tmp_path / "overlap", True, parts_calls)
    assert plain == parts
    assert all(torch.equal(w_plain[k], w_parts[k]) for k in w_plain)
    assert plain_calls == [12, 12]  # one call per step without overlap; with it, the batch came in parts
    assert len(parts_calls) > 2 and sum(parts_calls) == 24


def test_parts_are_scored_while_the_rest_decode(tiny_model_dir, tiny_data, monkeypatch):
    from rlft.backends.lean import Decoder

    step, stepped = Decoder.step, []  # each decoding step takes 10 ms more, and records when it ran
    monkeypatch.setattr(Decoder, "step",
                        lambda self, tokens: (time.sleep(0.01), stepped.append(time.perf_counter()),
                                              step(self, tokens))[2])
    model, tok = _policy(tiny_model_dir)
    cfg = _cfg(tiny_model_dir, tiny_data, "unused")
    rows = [Example(f"{i}+{i}=", f"{i}+{i}=", encode_prompt(tok, f"{i}+{i}=", "off"), Row(i + 1, {}))
            for i in range(3) for _ in range(4)]
    called = []

    def reward(prompts, completions, **_):
        called.append(time.perf_counter())
        return _letters(prompts, completions)

    from conftest import backend_of
    from rlft.rewards import Reward

    with Overlap(rows, [Reward("letters", reward)], cfg, 1, tok.pad_token_id) as overlap:
        ro = sample_examples(backend_of(model, tok), rows, cfg, torch.Generator().manual_seed(0),
                             on_done=overlap.done)
        res = overlap.finish(ro)
    assert len(called) >= 2 and called[0] < stepped[-1]  # the first part was scored while decoding went on
    assert [round(x[-1], 9) for x in res.token_rewards] == [round(x, 9) for x in _letters(None, ro.completions)]


def test_a_reward_error_still_stops_the_run(tiny_model_dir, tiny_data, tmp_path):
    def broken(prompts, completions, **_):
        raise ValueError("the judge is down")

    broken.__name__ = "judge"
    with pytest.raises(RewardError, match="reward 'judge' raised at step 1: ValueError: the judge is down"):
        train(_cfg(tiny_model_dir, tiny_data, tmp_path / "run", **{"rewards.overlap": True}), rewards=[broken],
              overwrite=True)


def test_overlap_needs_rlfts_sampler(tiny_model_dir, tiny_data, tmp_path):
    with pytest.raises(ConfigError, match="rewards.overlap needs rlft's own sampler"):
        _cfg(tiny_model_dir, tiny_data, tmp_path, **{"rewards.overlap": True, "rollout.engine": "hf"})
