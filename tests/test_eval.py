"""`rlft eval`: two checkpoints give one table (baseline, then the change), written as JSON and Markdown; the
figures equal the reward library's corpus functions on the same outputs; code tasks give pass@1 / pass@k."""

import json

import pytest

from rlft.cli import main
from rlft.config import Config
from rlft.rewards import corpus_bleu, corpus_chrf, corpus_rouge, corpus_ter


def _lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two checkpoints per task: a tiny T5 on translation, a tiny Llama on summarization."""
    from rlft.tasks.text_examples import write_example
    from rlft.tiny import byte_tokenizer, save_tiny, tiny_causal_lm, tiny_seq2seq_lm
    from rlft.train import train

    root = tmp_path_factory.mktemp("eval")
    tok = byte_tokenizer()
    out = {}
    for task, model in (("translation", tiny_seq2seq_lm(tok, "t5")),
                        ("summarization", tiny_causal_lm(tok, hidden=32, layers=1, heads=2))):
        data = root / task
        write_example(task, data)
        model_dir = save_tiny(root / f"{task}-model", model, tok)
        cfg = Config.from_dict({
            "task": task, "model": {"path": model_dir},
            "data": {"train": str(data / "train.jsonl"), "eval": str(data / "eval.jsonl"), "max_prompt_tokens": 96},
            "rollout": {"batch_prompts": 2, "num_generations": 2, "max_new_tokens": 6}, "optim": {"lr": 3e-2},
            "train": {"steps": 2, "save_every": 1, "keep_checkpoints": 0, "out": str(root / f"{task}-run"),
                      "eval_max_prompts": 2},
            "log": {"console": False}})
        out[task] = (train(cfg), data / "eval.jsonl", model_dir)
    return out


def test_two_checkpoints_one_table_and_corpus_metrics_equal_the_library(runs, tmp_path, capsys):
    run, data, _ = runs["translation"]
    a, b = run / "checkpoint-1", run / "checkpoint-2"
    rc = main(["eval", str(a), str(b), "--data", str(data), "--samples", "2", "--limit", "12", "--out",
               str(tmp_path / "ev")])
    printed = capsys.readouterr().out
    assert rc == 0
    assert "translation-run/checkpoint-1" in printed and "translation-run/checkpoint-2" in printed
    s = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert s["task"] == "translation" and [c["path"] for c in s["checkpoints"]] == [str(a), str(b)]
    for i, ckpt in enumerate(s["checkpoints"]):
        outs = _lines(tmp_path / "ev" / f"outputs-{i}.jsonl")
        assert len(outs) == 12 and all(len(o["samples"]) == 2 for o in outs)
        hyps, refs = [o["greedy"] for o in outs], [o["reference"] for o in outs]
        m = ckpt["metrics"]
        assert m["corpus_bleu"] == corpus_bleu(hyps, refs)
        assert m["corpus_chrf"] == corpus_chrf(hyps, refs)
        assert m["corpus_ter"] == corpus_ter(hyps, refs)
        flat, frefs = [c for o in outs for c in o["samples"]], [o["reference"] for o in outs for _ in range(2)]
        assert m["sampled/corpus_chrf"] == corpus_chrf(flat, frefs)
    m0, m1 = (c["metrics"] for c in s["checkpoints"])
    md = (tmp_path / "ev" / "eval.md").read_text()
    assert "| metric | translation-run/checkpoint-1 | translation-run/checkpoint-2 |" in md
    a_, b_ = m0["corpus_chrf"], m1["corpus_chrf"]
    row = f"| corpus_chrf | {a_:.4f} | {b_:.4f} ({b_ - a_:+.4f}) |"
    assert row in md
    assert f"{m1['corpus_chrf']:.4f} ({m1['corpus_chrf'] - m0['corpus_chrf']:+.4f})" in printed


def test_summarization_metrics_and_the_default_out_folder(runs, capsys):
    run, data, model_dir = runs["summarization"]
    rc = main(["eval", model_dir, str(run / "checkpoint-2"), "--data", str(data), "--limit", "8"])
    assert rc == 0
    s = json.loads((run / "eval" / "eval.json").read_text())   # default: eval/ beside the last checkpoint
    # the base model (no config of its own) is read with the run's config: its max_prompt_tokens=96 truncates
    assert [c["counts"].get("truncated_prompts") for c in s["checkpoints"]] == [8, 8]
    outs = _lines(run / "eval" / "outputs-1.jsonl")
    hyps, refs = [o["greedy"] for o in outs], [o["reference"] for o in outs]
    m = s["checkpoints"][1]["metrics"]
    for kind in ("rouge1", "rouge2", "rougeL", "rougeLsum"):
        assert m[kind] == corpus_rouge(hyps, refs, kind=kind)
    assert m["length_ratio"] == sum(len(h.split()) for h in hyps) / sum(len(r.split()) for r in refs)
    assert outs[0]["prompt"].startswith("Summarize:\n")          # the run's template, read from its config


def test_a_model_folder_without_config_needs_a_task(runs, tmp_path, capsys):
    _, data, model_dir = runs["translation"]
    rc = main(["eval", model_dir, "--data", str(data), "--out", str(tmp_path / "e")])
    err = " ".join(capsys.readouterr().err.split())
    assert rc == 2 and "has no config.yaml" in err and "give --task" in err
    rc = main(["eval", model_dir, "--data", str(data), "--task", "translation", "--limit", "3", "--out",
               str(tmp_path / "e")])
    assert rc == 0
    outs = _lines(tmp_path / "e" / "outputs-0.jsonl")
    assert outs[0]["prompt"].startswith("Translate into English:\n")  # the preset's template
    rc = main(["eval", model_dir, "--data", str(tmp_path / "nope.jsonl"), "--task", "translation"])
    assert rc == 2 and "nope.jsonl does not exist" in capsys.readouterr().err


def test_code_metrics_pass_at_1_and_pass_at_k():
    from rlft.tasks import Outputs, get
    from rlft.tasks.code import completion_rows, pass_at_k

    rows = completion_rows()[:3]
    good = [r["reference"] for r in rows]
    bad = "    return None  # wrong\n"
    o = Outputs(rows=rows, prompts=[r["prompt"] for r in rows], references=good, greedy=[good[0], good[1], bad],
                sampled=[[good[0], bad], [good[1], good[1]], [bad, bad]])
    m = get("code_completion").metrics(o)
    assert m["pass@1 (greedy)"] == pytest.approx(2 / 3)
    want1 = (pass_at_k(2, 1, 1) + pass_at_k(2, 2, 1) + pass_at_k(2, 0, 1)) / 3
    want2 = (pass_at_k(2, 1, 2) + pass_at_k(2, 2, 2) + pass_at_k(2, 0, 2)) / 3
    assert m["pass@1 (sampled)"] == pytest.approx(want1) == pytest.approx(0.5)
    assert m["pass@2 (sampled)"] == pytest.approx(want2) == pytest.approx(2 / 3)


def test_lora_checkpoints_load_on_their_base_model(tiny_model_dir, tmp_path, capsys):
    pytest.importorskip("peft")
    from rlft.tasks.text_examples import write_example
    from rlft.train import train

    write_example("translation", tmp_path / "data")
    cfg = Config.from_dict({
        "task": "translation", "model": {"path": tiny_model_dir, "lora": {"r": 4}},
        "data": {"train": str(tmp_path / "data" / "train.jsonl")},
        "rollout": {"batch_prompts": 2, "num_generations": 2, "max_new_tokens": 4}, "optim": {"lr": 1e-1},
        "train": {"steps": 1, "out": str(tmp_path / "run")}, "log": {"console": False}})
    run = train(cfg)
    assert (run / "checkpoint-1" / "adapter_config.json").exists()
    rc = main(["eval", tiny_model_dir, str(run / "checkpoint-1"), "--data", str(tmp_path / "data" / "eval.jsonl"),
               "--limit", "4", "--out", str(tmp_path / "e")])
    assert rc == 0, capsys.readouterr().err
    s = json.loads((tmp_path / "e" / "eval.json").read_text())
    assert all("corpus_chrf" in c["metrics"] for c in s["checkpoints"])
