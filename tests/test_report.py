"""The HTML report of real run folders (two tiny training runs): what it draws is what was logged, it is one
self-contained file (loaded in headless Chromium from file:// with no other request and no console error),
tokens are coloured by advantage, several runs overlay, bad folders and damaged files give clear errors.

The browser tests need Playwright's Python package and a Chromium binary (as tests/test_feedback_browser.py);
they skip without them."""

import argparse
import json
import os
import re
import shutil
import sys

import pytest

from conftest import base_overrides
from rlft.config import Config
from rlft.errors import DataError, RunError
from rlft.report import add_parser, environment, nice_ticks, read_jsonl, smooth, thin, write_environment, write_report
from rlft.train import train

XSS = '<script>window.__xss = 1</script><img src=x onerror="window.__xss = 2">'


def _lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def _with_advantages(run):
    """Give samples.jsonl rows `tokens` and per-token `advantages` that change along the sequence, of both signs
    (the characters of the completion), so the colour scale is exercised at both ends."""
    rows = _lines(run / "samples.jsonl")
    for i, r in enumerate(rows):
        r["tokens"] = list(r["completion"]) or ["\n"]
        r["advantages"] = [round((-1) ** i * (0.2 + 0.3 * j), 3) for j in range(len(r["tokens"]))]
    (run / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


@pytest.fixture(scope="module")
def runs(tiny_model_dir, tiny_data, tmp_path_factory):
    """Two real 4-step runs (GRPO and RLOO) that evaluate at steps 0, 2, 4 and log samples at 2 and 4. The first
    has tokens/advantages and env.json; the second plain samples (as older runs wrote them: the trainer's tokens and
    advantages removed), one completion with markup in it."""
    root = tmp_path_factory.mktemp("report")
    folders = []
    for name, est in (("grpo", "grpo"), ("rloo", "rloo")):
        cfg = Config.load(None, base_overrides(tiny_model_dir, tiny_data, root / name, **{
            "train.steps": 4, "data.eval": str(tiny_data), "train.eval_every": 2, "log.samples_every": 2,
            "log.num_samples": 2, "algo.estimator": est}))
        folders.append(train(cfg))
    _with_advantages(folders[0])
    write_environment(folders[0])
    rows = _lines(folders[1] / "samples.jsonl")
    assert all(len(r.pop("tokens")) == len(r.pop("advantages")) for r in rows)  # what the trainer wrote
    rows[-1]["completion"] = XSS
    (folders[1] / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folders


def _charts(page_html):
    """{figure anchor: the hover JSON of its chart} parsed from the page."""
    found = re.findall(r'<figure class="card" id="fig-([\w-]+)">.*?<script type="application/json" '
                       r'class="chart-data">(.*?)</script>', page_html, re.S)
    return {a: json.loads(d) for a, d in found}


def test_figures_draw_what_was_logged(runs, tmp_path):
    page = write_report([runs[0]], tmp_path / "r.html").read_text()
    charts = _charts(page)
    assert {"reward", "eval", "kl", "entropy", "length", "truncated", "zero_adv", "clip", "grad_norm", "lr",
            "phases"} <= set(charts)
    metrics = [m for m in _lines(runs[0] / "metrics.jsonl") if "reward/mean" in m]
    by_name = {s["n"]: s["p"] for s in charts["reward"]["s"]}
    assert set(by_name) == {"total", "exact_match", "bleu", "ascii_frac"}  # total and per component
    assert by_name["total"] == [[m["step"], m["reward/mean"]] for m in metrics]  # raw values under the pointer
    assert charts["grad_norm"]["s"][0]["p"] == [[m["step"], m["grad_norm"]] for m in metrics]
    phases = {s["n"] for s in charts["phases"]["s"]}
    assert {"step", "sample", "update", "reward"} <= phases
    evals = _lines(runs[0] / "eval.jsonl")
    assert [p[0] for p in next(s["p"] for s in charts["eval"]["s"] if s["n"] == "total")] == [0, 2, 4]
    assert "before (step 0)" in page and "after (step 4)" in page and f"{evals[-1]['eval/reward/mean']:.4g}" in page
    assert "algo:" in page and "estimator: grpo" in page  # the config
    assert f"<td>torch</td><td><span class=\"text\">{environment()['torch']}</span>" in page  # env.json
    assert not re.search(r"https?://|<link|\ssrc=|@import|url\(", page)  # nothing to fetch


def test_smoothing_and_thinning():
    pts = [(s, float(s % 2)) for s in range(1, 101)]  # 0, 1, 0, 1, ...: the average settles near 0.5
    avg, span = smooth(pts)
    assert span == 5 and abs(avg[-1][1] - 0.5) < 0.2 and avg[-1][0] == 100
    spiky = [(s, 100.0 if s == 777 else 1.0) for s in range(5000)]
    drawn = thin(spiky)
    assert len(drawn) <= 620 and (777, 100.0) in drawn and drawn == sorted(drawn)
    gap = smooth([(1, 1.0), (2, None), (3, 3.0)])[0]
    assert gap[1] == (2, None)  # a null stays a gap
    assert nice_ticks(0.0, 1.0) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert nice_ticks(-0.013, 0.021) == [-0.01, 0.0, 0.01, 0.02]


def test_environment_matches_the_libraries():
    import torch
    import transformers

    env = environment()
    assert env["torch"] == torch.__version__ and env["transformers"] == transformers.__version__
    assert env["python"] == ".".join(map(str, sys.version_info[:3]))
    assert env["device"] == ("cpu" if not torch.cuda.is_available() else f"cuda: {torch.cuda.get_device_name(0)}")


def test_bad_folders_and_damaged_files(runs, tmp_path):
    with pytest.raises(RunError, match=r"nowhere does not exist: give a run folder"):
        write_report([tmp_path / "nowhere"], tmp_path / "r.html")
    with pytest.raises(RunError, match=r"has no metrics.jsonl"):
        write_report([tmp_path], tmp_path / "r.html")
    run = tmp_path / "copy"
    shutil.copytree(runs[1], run)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join(lines) + '\n{"step": 5, "reward/me')  # killed mid-line
    assert len(read_jsonl(run / "metrics.jsonl")) == len(lines)
    lines[2] = lines[2][:30]
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=rf"{re.escape(str(run / 'metrics.jsonl'))}:3: not JSON"):
        write_report([run], tmp_path / "r.html")


def test_cli_default_outputs(runs, tmp_path, monkeypatch, capsys):
    p = argparse.ArgumentParser()
    add_parser(p.add_subparsers(dest="cmd"))
    args = p.parse_args(["report", str(runs[1])])
    assert args.fn(args) == 0
    assert (runs[1] / "report.html").is_file() and str(runs[1] / "report.html") in capsys.readouterr().out
    monkeypatch.chdir(tmp_path)
    args = p.parse_args(["report", str(runs[0]), str(runs[1])])
    assert args.fn(args) == 0 and (tmp_path / "report.html").is_file()


# ---------------------------------------------------------------------------------------------- in the browser

def _browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    exe = os.environ.get("RLFT_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not exe:
        pytest.skip("no chromium binary (apt-get install chromium, or set RLFT_CHROMIUM)")
    return sync_api, exe


ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser():
    sync_api, exe = _browser()
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=ARGS, timeout=120_000)
        yield b
        b.close()


def _open(browser, path):
    """(page, errors, requests): the report loaded from file://, every request and console error recorded."""
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.set_default_timeout(30_000)
    errors, requests = [], []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", lambda r: requests.append(r.url))
    page.goto(path.as_uri())
    page.wait_for_load_state("load")
    return page, errors, requests


def test_one_run_in_chromium(runs, tmp_path, browser):
    out = write_report([runs[0]], tmp_path / "one.html")
    page, errors, requests = _open(browser, out)
    assert requests == [out.as_uri()]  # no CDN, font, image: nothing but the file itself
    assert page.locator("figure.card svg.chart").count() >= 11
    assert page.locator("#fig-reward path.line").count() == 4 and page.locator("#fig-reward path.raw").count() == 4
    # tokens: every token of the samples at the first and last logged steps, coloured by its advantage
    rows = [r for r in _lines(runs[0] / "samples.jsonl") if r["step"] in (2, 4)]
    toks = page.locator("#samples span.tok")
    assert toks.count() == sum(len(r["tokens"]) for r in rows)
    first = rows[0]
    blue = toks.nth(len(first["tokens"]) - 1).evaluate("e => getComputedStyle(e).backgroundColor")
    red = toks.nth(len(first["tokens"]) + len(rows[1]["tokens"]) - 1).evaluate(
        "e => getComputedStyle(e).backgroundColor")
    r, g, b = map(int, re.findall(r"\d+", blue)[:3])
    assert b > r + 60  # the largest positive advantage: deep blue
    r, g, b = map(int, re.findall(r"\d+", red)[:3])
    assert r > b + 60  # the most negative: red
    assert page.locator("#samples .scale .bar").count() == 1  # the colour legend
    assert toks.first.get_attribute("title") == f"advantage {first['advantages'][0]}"
    # hovering a chart shows the values at the step under the pointer
    chart = page.locator("#fig-grad_norm svg.chart")
    chart.scroll_into_view_if_needed()
    box = chart.bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.99 - 14, box["y"] + box["height"] / 2)
    tip = page.locator("#fig-grad_norm .tip")
    assert tip.is_visible() and tip.inner_text().startswith("step 4")
    assert errors == []


def test_two_runs_overlay_in_chromium(runs, tmp_path, browser):
    out = write_report(runs, tmp_path / "two.html")
    page, errors, requests = _open(browser, out)
    assert requests == [out.as_uri()] and errors == []
    assert page.locator("#fig-grad_norm path.line").count() == 2  # one line per run
    assert page.locator("#fig-grad_norm .legend .key").all_inner_texts() == ["grpo", "rloo"]
    strokes = {page.locator("#fig-grad_norm path.line").nth(i).get_attribute("stroke") for i in range(2)}
    assert len(strokes) == 2  # told apart by colour
    drawn = page.locator("#fig-grad_norm path.line").evaluate_all("es => es.map(e => getComputedStyle(e).stroke)")
    keys = page.locator("#fig-grad_norm .legend line").evaluate_all("es => es.map(e => getComputedStyle(e).stroke)")
    assert sorted(keys) == sorted(drawn)  # each legend entry shows its line's colour (no style overrides it)
    assert page.locator("#fig-reward path.line").count() == 8  # 4 series x 2 runs
    diff = page.locator("#config table").inner_text()
    assert "algo.estimator" in diff and "grpo" in diff and "rloo" in diff and "train.out" not in diff
    # the second run has no per-token advantages: its completions are plain text, markup shown, not run
    assert page.locator("#samples span.tok").count() == sum(
        len(r["tokens"]) for r in _lines(runs[0] / "samples.jsonl") if r["step"] in (2, 4))
    assert page.get_by_text(XSS).count() == 1 and page.evaluate("window.__xss") is None
