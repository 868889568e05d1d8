"""The worked examples of docs/tasks/: every figure a page quotes is what the script wrote.

* Each page's output block (the ``rlft eval`` table and the greedy outputs) is ``docs_block`` of the record
  ``python -m rlft.tasks.text_examples example TASK runs/... --write-docs`` committed beside it
  (docs/tasks/<task>.json), its YAML block is the example's config, and docs/tasks/README.md quotes the
  translation record's BLEU row.
* A full worked example takes 25-35 s of CPU (one thread; 85-120 s wall on the shared 2-core machine), too long
  here, so reproducibility is tested on the shortened schedule (``--short``: a few seconds of CPU): run now, it
  must give the figures committed in docs/tasks/translation.short.json to 4 decimals -- the same test catches a
  code change that moves the numbers and a stale page (then rerun the commands with ``--write-docs``).
"""

import json
import re
from pathlib import Path

import pytest
import yaml

from rlft.tasks.text_examples import BEGIN, DOCS, END, EXAMPLES, docs_block, example_config, example_main, write_docs

WARM_TOL = 0.02  # the short warm start's greedy figures on other CPU kernels (measured spread: up to 0.006)
OUT = {"translation": "runs/ex-translation", "summarization": "runs/ex-summarization",
       "dialogue": "runs/ex-dialogue", "creative_writing": "runs/ex-creative"}


def _record(task: str) -> dict:
    return json.loads((DOCS / f"{task}.json").read_text(encoding="utf-8"))


def _block(page: str, task: str) -> str:
    begin = BEGIN.format(task=task)
    assert page.count(begin) == 1 and page.count(END) == 1, f"{task}.md needs one example-output block"
    return page[page.index(begin):page.index(END) + len(END)]


def test_every_example_has_a_page():
    assert set(OUT) == set(EXAMPLES)


@pytest.mark.parametrize("task", list(OUT))
def test_example_config_fits_its_model(task, tmp_path):
    """The trainer's start-up check on learned positions passes (the summarization example failed it: its BART
    has 512 positions and the preset asks for 1024-token prompts)."""
    import random

    from rlft.backends import check_positions
    from rlft.config import Config
    from rlft.tasks.text_examples import ROWS, all_text, example_model
    from rlft.tiny import byte_tokenizer

    e = EXAMPLES[task]
    tok = byte_tokenizer(all_text(ROWS[task](64, random.Random(0))), vocab_size=e["vocab"],
                         chat=task in ("dialogue", "creative_writing"))
    cfg = Config.from_dict(example_config(task, tmp_path / "run", tmp_path / "base-model", tmp_path / "data"))
    check_positions(example_model(e, tok), cfg)


@pytest.mark.parametrize("task", list(OUT))
def test_page_quotes_the_scripts_record(task):
    page = (DOCS / f"{task}.md").read_text(encoding="utf-8")
    record = _record(task)
    assert record["task"] == task and record["seed"] == 0 and record["schedule"] == "full"
    assert _block(page, task) == docs_block(record)
    # the record comes from the command the page shows
    assert f"python -m rlft.tasks.text_examples example {task} {OUT[task]}\n" in page
    assert f"prompts from {OUT[task]}/data/eval.jsonl" in record["title"]
    figures = {row[0]: row[1:] for row in record["rows"]}
    assert len(record["metrics"]) == 2 and set(record["metrics"][0]) == set(figures)
    for name, value in record["metrics"][0].items():
        assert figures[name][0] == f"{value:.4f}"


@pytest.mark.parametrize("task", list(OUT))
def test_page_config_is_the_examples(task):
    """The YAML the page shows is the config the example trains with (the keys it shows, with their values)."""
    page = (DOCS / f"{task}.md").read_text(encoding="utf-8")
    shown = yaml.safe_load(re.search(r"```yaml\n(task: .*?)\n```", page, re.S).group(1))
    out = Path(OUT[task])
    real = example_config(task, out / "run", out / "base-model", out / "data")

    def subset(a, b, where):
        if isinstance(a, dict):
            assert isinstance(b, dict), where
            for k, v in a.items():
                assert k in b, f"{task}.md shows {where}{k}, which the example does not set"
                subset(v, b[k], f"{where}{k}.")
        else:
            assert a == b, f"{task}.md shows {where[:-1]}={a!r}, the example has {b!r}"

    subset(shown, real, "")


def test_tasks_readme_quotes_the_translation_record():
    readme = (DOCS / "README.md").read_text(encoding="utf-8")
    record = _record("translation")
    row = next(r for r in record["rows"] if r[0] == "corpus_bleu")
    assert "| " + " | ".join(record["header"]) + " |" in readme
    assert "| " + " | ".join(row) + " |" in readme


def test_reproducibility_paragraph_quotes_the_kernel_runs():
    """translation.md quotes the runs under other CPU kernels from their records (docs/tasks/kernels.json)."""
    page = (DOCS / "translation.md").read_text(encoding="utf-8")
    para = page[page.index("Measured on this machine by forcing torch onto other kernels"):]
    para = para.split("\n\n")[0]
    runs = json.loads((DOCS / "kernels.json").read_text())
    assert len(runs) == 3
    for name, r in runs.items():
        task, env = name.split(", ")
        assert r["task"] == task and env in para and r["machine"] != _record(task)["machine"]
        key = "corpus_bleu" if task == "translation" else "rouge1"
        cols = r["metrics"] if task == "translation" else r["metrics"][1:]
        for m in cols:
            assert f"{m[key]:.4f}" in para, (name, key)
    assert "0.02 elsewhere (measured" in para and WARM_TOL == 0.02


def test_write_docs_replaces_only_the_block(tmp_path):
    record = _record("summarization")
    page = tmp_path / "summarization.md"
    page.write_text(f"# Title\n\nbefore\n\n{BEGIN.format(task='summarization')}\nold figures\n{END}\n\nafter\n")
    written = write_docs({**record, "wall_s": 1.0}, docs=tmp_path)
    assert written == [page, tmp_path / "summarization.json"]
    text = page.read_text()
    assert text.startswith("# Title\n\nbefore\n\n") and text.endswith("\n\nafter\n") and "old figures" not in text
    assert _block(text, "summarization") == docs_block({**record, "wall_s": 1.0})
    assert json.loads((tmp_path / "summarization.json").read_text())["wall_s"] == 1.0
    page.write_text("# no block\n")
    with pytest.raises(ValueError, match="has no example-output block: add the lines"):
        write_docs(record, docs=tmp_path)


def test_shortened_example_reproduces_the_committed_figures(tmp_path):
    """Bit-for-bit on the environment the figures were written on (torch version, CPU kernels; one thread);
    elsewhere float reductions differ and RL amplifies them (docs/tasks/translation.md, Reproducibility):
    the warm start's greedy figures must then agree within WARM_TOL."""
    import torch

    threads = torch.get_num_threads()
    try:
        got = example_main("translation", tmp_path / "ex", short=True)
    finally:
        torch.set_num_threads(threads)
    want = json.loads((DOCS / "translation.short.json").read_text())
    assert want["schedule"] == "short" and got["schedule"] == "short"
    if (got["torch"], got["machine"]) == (want["torch"], want["machine"]):
        for g, w in zip(got["metrics"], want["metrics"], strict=True):
            assert g == pytest.approx(w, abs=5e-5)
        assert got["shown"] == want["shown"]
    else:
        greedy = [k for k in want["metrics"][0] if not k.startswith("sampled/")]
        for k in greedy:
            assert got["metrics"][0][k] == pytest.approx(want["metrics"][0][k], abs=WARM_TOL), k
