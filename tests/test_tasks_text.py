"""Task presets: merged under the user's config; their rewards and metrics worked out by hand; every example dataset
loads with its preset; each task trains end to end for two steps on a tiny model (seq2seq and causal)."""

import json
import math

import pytest
import torch

from rlft.config import Config, ConfigError
from rlft.data import check_rows, read_rows
from rlft.rewards import check_columns, resolve
from rlft.tasks import Outputs, get, registry
from rlft.tasks.text import (
    chat_reward_model,
    conversation_text,
    distinct_n,
    form,
    length_ratio,
    summarization_metrics,
    translation_metrics,
)

TEXT = ("translation", "summarization", "dialogue", "creative_writing")


# ------------------------------------------------------------------------------------------ presets

def test_preset_sits_under_the_users_keys():
    cfg = Config.load(None, ["task=translation", "data.template='{prompt}'", "rollout.max_new_tokens=7"])
    assert cfg.data.template == "{prompt}" and cfg.rollout.max_new_tokens == 7     # the user's keys win
    assert cfg.rollout.stop == ["\n"] and cfg.data.max_prompt_tokens == 256  # the rest: the preset, or defaults
    assert [r.fn for r in cfg.rewards.components] == ["bleu", "chrf"]
    cfg = Config.load(None, ["task=translation", "rewards=[{fn: ter}]", "rollout.stop=[]"])
    assert [r.fn for r in cfg.rewards.components] == ["ter"] and cfg.rollout.stop == []  # lists replace whole


def test_unknown_task_suggests_and_a_wrong_type_names_the_key():
    with pytest.raises(ConfigError, match="unknown task 'sumarization'; did you mean summarization"):
        Config.load(None, ["task=sumarization"])
    with pytest.raises(ConfigError, match="config key task = 3 has type int"):
        Config.load(None, ["task=3"])


@pytest.mark.parametrize("name", sorted(registry()))
def test_every_preset_loads_round_trips_and_its_rewards_resolve(name, tmp_path):
    cfg = Config.load(None, [f"task={name}"])
    assert cfg.task == name and cfg.rewards.components and get(name).metrics
    for spec in cfg.rewards.components:
        assert callable(resolve(spec.fn))
    cfg.save(tmp_path / "c.yaml")
    assert Config.load(tmp_path / "c.yaml") == cfg


# ------------------------------------------------------------------------------------------ rewards

def test_length_ratio_by_hand():
    ref = " ".join(["w"] * 10)
    # ratios 1.0, 2.0 (0.5 over 1.5), 0.3 (0.2 under 0.5), 5.0 (capped at -1); several references: the shortest
    comps = [" ".join(["w"] * n) for n in (10, 20, 3, 50)]
    assert length_ratio(None, comps, [ref] * 4) == pytest.approx([0.0, -0.5, -0.2, -1.0])
    assert length_ratio(None, ["a b"], [["a b c d", "a b"]]) == [0.0]
    assert length_ratio(None, ["a"], [None]) == [None]


def test_form_by_hand():
    poem4 = "a b c\nd e f\n\ng h i\nj k l"  # 4 non-empty lines, 12 words
    assert form(None, [poem4], lines=[4], max_words=[10]) == [0.5]
    assert form(None, [poem4], lines=[4], min_words=[5], max_words=[20]) == [1.0]
    assert form(None, [poem4, "x"], lines=[None, 1]) == [None, 1.0]


def test_chat_reward_model_reads_conversations_as_text(tmp_path):
    from rlft.tiny import byte_tokenizer, save_tiny, tiny_classifier

    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "?"}]
    assert conversation_text(msgs) == "user: hi\nassistant: hello\nuser: ?\nassistant: "
    assert conversation_text("plain") == "plain"
    tok = byte_tokenizer()
    path = save_tiny(tmp_path / "rm", tiny_classifier(tok), tok)
    from rlft.rewards.model import reward_model

    got = chat_reward_model([msgs, "plain"], ["ok", "ok"], path=path, device="cpu")
    want = reward_model([conversation_text(msgs), "plain"], ["ok", "ok"], path=path, device="cpu")
    assert got == want


# ------------------------------------------------------------------------------------------ metrics

def test_distinct_n_by_hand():
    # unigrams: a b a c -> 3 distinct / 4; bigrams: (a b) (b a) | (a c) -> 3 / 3... with "a b a" and "a c"
    assert distinct_n(["a b a", "a c"], 1) == pytest.approx(3 / 5)
    assert distinct_n(["a b a", "a b"], 2) == pytest.approx(2 / 3)
    assert distinct_n(["", "a"], 2) == 0.0


def test_text_metrics_are_the_corpus_functions():
    from rlft.rewards import corpus_bleu, corpus_chrf, corpus_rouge, corpus_ter

    hyps = ["the cat sat on the mat", "a dog runs", "hello there"]
    refs = ["the cat sat on a mat", ["the dog runs", "a dog is running"], "hello there friend"]
    o = Outputs(rows=[{}] * 3, prompts=["p"] * 3, references=refs, greedy=hyps,
                sampled=[[h, h + " x"] for h in hyps])
    m = translation_metrics(o)
    assert m["corpus_bleu"] == corpus_bleu(hyps, refs) and m["corpus_chrf"] == corpus_chrf(hyps, refs)
    assert m["corpus_ter"] == corpus_ter(hyps, refs)
    flat = [c for s in o.sampled for c in s]
    assert m["sampled/corpus_bleu"] == corpus_bleu(flat, [r for r in refs for _ in range(2)])
    s = summarization_metrics(o)
    assert s["rougeL"] == corpus_rouge(hyps, refs, kind="rougeL")
    assert s["rouge2"] == corpus_rouge(hyps, refs, kind="rouge2")
    assert s["length_ratio"] == pytest.approx((6 + 3 + 2) / (6 + 3 + 3))  # words: outputs / first references


# ------------------------------------------------------------------------------------- example data

@pytest.fixture(scope="module")
def example_data(tmp_path_factory):
    from rlft.tasks.text_examples import write_example

    root = tmp_path_factory.mktemp("examples")
    for task in TEXT:
        write_example(task, root / task, rm_steps=2)
    return root


@pytest.mark.parametrize("task", TEXT)
def test_example_data_loads_with_its_preset(example_data, task):
    from rlft.step import build_rewards

    cfg = Config.load(None, [f"task={task}"])
    for split in ("train", "eval"):
        path = example_data / task / f"{split}.jsonl"
        counts = {}
        rows = check_rows(read_rows(path), path, cfg.data, counts, get(task).needs_reference)
        assert rows and not counts
    cols = set(rows[0].columns) | {"reference"}
    check_columns(build_rewards(cfg, None), cols)


# ------------------------------------------------------------------------------------- end to end

def _run(task, model_dir, data, out, **over):
    from rlft.train import train

    raw = {"task": task, "model": {"path": str(model_dir)},
           "data": {"train": str(data / "train.jsonl"), "eval": str(data / "eval.jsonl")},
           "rollout": {"batch_prompts": 2, "num_generations": 2, "max_new_tokens": 8},
           "optim": {"lr": 1e-2}, "train": {"steps": 2, "out": str(out), "eval_max_prompts": 4},
           "log": {"console": False}}
    for k, v in over.items():
        sec, key = k.split(".")
        raw.setdefault(sec, {})[key] = v
    return train(Config.from_dict(raw))


@pytest.mark.parametrize("task,arch,extra", [
    ("translation", "t5", {}),
    ("summarization", "bart", {"sft.steps": 2, "sft.batch_size": 4, "data.max_prompt_tokens": 200}),
    ("dialogue", "llama-chat", {}),
    ("creative_writing", "llama-chat", {}),
])
def test_each_text_task_trains_two_steps(example_data, tmp_path, task, arch, extra):
    from rlft.tiny import byte_tokenizer, save_tiny, tiny_causal_lm, tiny_seq2seq_lm

    tok = byte_tokenizer(chat=arch.endswith("chat"))
    model = tiny_seq2seq_lm(tok, arch) if arch in ("t5", "bart") else tiny_causal_lm(tok, hidden=32, layers=1, heads=2)
    model_dir = save_tiny(tmp_path / "model", model, tok)
    data = example_data / task
    if task == "dialogue":  # the preset's reward model, written next to the data
        cfg = Config.load(None, [f"task={task}"])
        rewards = [{"name": r.name, "fn": r.fn, "weight": r.weight, "args": dict(r.args)}
                   for r in cfg.rewards.components]
        rewards[0]["args"]["path"] = str(data / "reward-model")
        extra = {**extra, "rewards.components": rewards}
    out = _run(task, model_dir, data, tmp_path / "run", **extra)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss/pg" in r]
    assert [r["step"] for r in steps] == [1, 2]
    names = [r.name for r in Config.load(out / "config.yaml").rewards.components]
    for r in steps:
        assert all(f"reward/{n}" in r for n in names)
        assert math.isfinite(r["reward/mean"]) and math.isfinite(r["loss/pg"])
    assert (out / "checkpoint-2").exists() and Config.load(out / "checkpoint-2" / "config.yaml").task == task


def test_code_completion_trains_two_steps(tmp_path, tiny_model_dir):
    from rlft.tasks.code import write_data

    write_data(tmp_path / "code")
    from rlft.train import train

    cfg = Config.from_dict({"task": "code_completion", "model": {"path": str(tiny_model_dir)},
                            "data": {"train": str(tmp_path / "code" / "completion.jsonl")},
                            "rollout": {"batch_prompts": 2, "num_generations": 2, "max_new_tokens": 8},
                            "train": {"steps": 2, "out": str(tmp_path / "run"), "eval_max_prompts": 2},
                            "log": {"console": False}})
    out = train(cfg)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if "loss/pg" in x]
    assert len(rows) == 2 and all(r["reward/pass_rate"] == 0.0 for r in rows)  # random tokens pass no test
    assert torch.load(out / "checkpoint-2" / "trainer_state.pt", weights_only=False)["step"] == 2
